"""Soft prompts to and from PEFT prompt-tuning adapters (PROMPT_TUNING for CAUSAL_LM).

A soft prompt [P, D] is exactly what PEFT's `PromptEmbedding` holds: PEFT prepends its rows to
the token embeddings of every sequence, as `splice` does with a soft piece placed first. The
adapter folder is `adapter_config.json` (the keys `PromptTuningConfig.save_pretrained` writes)
and `adapter_model.safetensors` with one tensor, "prompt_embeddings" [P, D]. Neither direction
needs PEFT installed, and pickle-based `adapter_model.bin` files are never read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from frozenlm.atomic import write_folder
from frozenlm.backbone import Backbone
from frozenlm.codec import to_json
from frozenlm.errors import CheckpointError, ConfigError
from frozenlm.plugins.checkpoint import read_json_object, save_checkpoint
from frozenlm.plugins.registry import load_plugin, plugin_meta
from frozenlm.plugins.soft_prompt import SoftPromptConfig, SoftPromptSet
from frozenlm.tasks import load_task

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"
PROMPT_KEY = "prompt_embeddings"
"""The name PEFT saves a prompt encoder's weights under (`_get_adapter_state_dict`)."""


def peft_adapter_config(num_virtual_tokens: int, backbone: Backbone) -> dict[str, Any]:
    """The adapter_config.json of a prompt of `num_virtual_tokens` for `backbone`.

    Same keys as PEFT 0.21's `PromptTuningConfig(task_type="CAUSAL_LM", ...)`; the init is
    RANDOM (TEXT would make PEFT reload a tokenizer from the base path, which fails for models
    loaded from GGUF), and "peft_version" is null so PEFT fills in its own when loading.
    """
    config = backbone.model.config
    text_config = getattr(config, "text_config", None) or config
    # The folder the weights came from (a packaged backbone's converted cache); the tiny test
    # model lives in memory only.
    folder = backbone.weights_folder
    base = None if folder is None else str(folder.resolve())
    return {
        "auto_mapping": None,
        "base_model_name_or_path": base,
        "inference_mode": True,
        "modules_to_save": None,
        "num_attention_heads": getattr(text_config, "num_attention_heads", None),
        "num_layers": getattr(text_config, "num_hidden_layers", None),
        "num_transformer_submodules": 1,
        "num_virtual_tokens": num_virtual_tokens,
        "peft_type": "PROMPT_TUNING",
        "peft_version": None,
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "revision": None,
        "task_type": "CAUSAL_LM",
        "token_dim": backbone.hidden_size,
        "tokenizer_kwargs": None,
        "tokenizer_name_or_path": None,
    }


def export_peft(tensor: torch.Tensor, backbone: Backbone, out: str | Path) -> None:
    """Write soft prompt `tensor` [P, D] as a PEFT prompt-tuning adapter folder, atomically.

    `PeftModel.from_pretrained(base_model, out)` loads it; an adapter already in `out` is
    replaced, any other non-empty folder is refused.
    """
    out = Path(out)
    if tensor.dim() != 2 or tensor.shape[1] != backbone.hidden_size:
        raise CheckpointError(
            f"cannot export to '{out}': a soft prompt for {backbone.name} is [P, "
            f"{backbone.hidden_size}], got {list(tensor.shape)}"
        )
    prompt = tensor.detach().cpu().float().clone(memory_format=torch.contiguous_format)  # [P, D]
    if not bool(torch.isfinite(prompt).all()):
        raise CheckpointError(f"cannot export to '{out}': the soft prompt holds NaN or inf values")
    config = peft_adapter_config(int(prompt.shape[0]), backbone)
    files = {
        ADAPTER_WEIGHTS: save_safetensors({PROMPT_KEY: prompt}, metadata={"format": "pt"}),
        ADAPTER_CONFIG: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
    }
    write_folder(out, files, marker=ADAPTER_CONFIG)
    log.info("exported a %d-token soft prompt as a PEFT adapter to %s", prompt.shape[0], out)


def import_peft(peft_dir: str | Path, backbone: Backbone) -> torch.Tensor:
    """The soft prompt [P, D] (fp32) of a PEFT prompt-tuning adapter folder made for a model
    of `backbone`'s width; anything else raises CheckpointError."""
    folder = Path(peft_dir)
    config = _read_config(folder)
    where = f"PEFT adapter '{folder}'"
    if config.get("peft_type") != "PROMPT_TUNING":
        raise CheckpointError(
            f"{where} is a {config.get('peft_type')} adapter; only PROMPT_TUNING adapters are "
            "soft prompts"
        )
    if config.get("task_type") not in ("CAUSAL_LM", None):
        raise CheckpointError(
            f"{where} was made for task type {config.get('task_type')}; only CAUSAL_LM prompts "
            "apply to a causal LM backbone"
        )
    submodules = config.get("num_transformer_submodules") or 1
    if submodules != 1:
        raise CheckpointError(
            f"{where} has {submodules} transformer submodules (an encoder-decoder prompt); "
            "a causal LM takes 1"
        )
    if config.get("token_dim") != backbone.hidden_size:
        raise CheckpointError(
            f"{where} has token_dim {config.get('token_dim')}, but backbone {backbone.name} has "
            f"hidden size {backbone.hidden_size}"
        )
    tensors = _read_weights(folder)
    if PROMPT_KEY not in tensors:
        raise CheckpointError(
            f"'{folder / ADAPTER_WEIGHTS}' has no '{PROMPT_KEY}' tensor (found {sorted(tensors)})"
        )
    prompt = tensors[PROMPT_KEY]
    expected = [config.get("num_virtual_tokens"), backbone.hidden_size]
    if list(prompt.shape) != expected:
        raise CheckpointError(
            f"'{folder / ADAPTER_WEIGHTS}': '{PROMPT_KEY}' has shape {list(prompt.shape)}, but "
            f"the config says {expected}"
        )
    if not prompt.is_floating_point() or not bool(torch.isfinite(prompt).all()):
        raise CheckpointError(
            f"'{folder / ADAPTER_WEIGHTS}': '{PROMPT_KEY}' is not a finite floating-point tensor"
        )
    return prompt.float().contiguous()  # [P, D]


def _read_config(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise CheckpointError(f"PEFT adapter folder '{folder}' does not exist")
    return read_json_object(folder / ADAPTER_CONFIG, "not a PEFT adapter folder")


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / ADAPTER_WEIGHTS
    if not path.is_file():
        if (folder / PICKLE_WEIGHTS).is_file():
            raise CheckpointError(
                f"'{folder / PICKLE_WEIGHTS}': pickle-based adapter files are not loaded; "
                "convert to safetensors"
            )
        raise CheckpointError(f"'{path}' is missing")
    try:
        return load_safetensors(path.read_bytes())
    except SafetensorError as err:
        raise CheckpointError(f"'{path}' cannot be parsed as safetensors ({err})") from err


def export_peft_plugin(
    folder: str | Path, out: str | Path, backbone: Backbone, task: str | None = None
) -> str:
    """`frozenlm export-peft`: one task's soft prompt of a saved plug-in as a PEFT adapter.
    Returns the task exported."""
    plugin, checkpoint = load_plugin(folder, backbone)
    if not isinstance(plugin, SoftPromptSet):
        raise ConfigError(f"'{folder}' holds a {checkpoint.meta['kind']}, not a soft prompt")
    names = plugin.task_names
    if task is None and len(names) > 1:
        raise ConfigError(f"'{folder}' has prompts for {', '.join(names)}; choose one with --task")
    name = task or names[0]
    export_peft(plugin.prompt(name), backbone, out)
    return name


def import_peft_plugin(
    peft_dir: str | Path, out: str | Path, backbone: Backbone, task_ref: str
) -> None:
    """`frozenlm import-peft`: a PEFT prompt-tuning adapter as a frozenlm soft-prompt checkpoint
    for the task `task_ref` (a built-in name or task file)."""
    prompt = import_peft(peft_dir, backbone)  # [P, D]
    task = load_task(task_ref)
    config = SoftPromptConfig(length=int(prompt.shape[0]))
    plugin = SoftPromptSet({task.name: prompt}, config)
    meta = plugin_meta("soft-prompt", to_json(config), backbone, [task], [task_ref])
    meta["imported_from"] = str(Path(peft_dir).resolve())
    save_checkpoint(out, plugin.tensors(), meta)
