"""Soft prompts and deep prompts to and from PEFT adapters (PROMPT_TUNING and PREFIX_TUNING for
CAUSAL_LM).

A soft prompt [P, D] is exactly what PEFT's `PromptEmbedding` holds: PEFT prepends its rows to
the token embeddings of every sequence, as `splice` does with a soft piece placed first.

A deep prompt [L, 2, H, P, d] is exactly what PEFT's `PrefixEncoder` holds, flattened to
[P, L*2*H*d] (PEFT 0.21 `PeftModel.get_prompt`: `view(B, P, L*2, H, d)`, then
`permute(2, 0, 3, 1, 4)` into per-layer (key, value) pairs of a `DynamicCache`). For
grouped-query models PEFT sizes it by key/value heads (`_prepare_prompt_learning_config` sets
`num_attention_heads = num_key_value_heads`, `token_dim = head_dim * num_key_value_heads`), as
frozenlm's is; it puts those keys and values in the cache as they are (no rotary embedding
applied to them, as `PrefixCache`), and the rows' positions start at P after them
(`_adjust_prompt_learning_kwargs` offsets explicit position ids by P; otherwise the cache's
length does), as `PrefixCache.after` counts them. So the same tensor gives PEFT and frozenlm
the same logits; a backbone whose config would make PEFT lay the prefix out otherwise is
refused (`peft_prefix_layout`).

An adapter folder is `adapter_config.json` (the keys PEFT's `save_pretrained` writes) and
`adapter_model.safetensors` with one tensor, "prompt_embeddings". Neither direction needs PEFT
installed, and pickle-based `adapter_model.bin` files are never read.
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
from frozenlm.plugins.prefix import DeepPrompt, PrefixConfig, kv_shape
from frozenlm.plugins.protocol import SoftPosition
from frozenlm.plugins.registry import load_plugin, plugin_meta
from frozenlm.plugins.soft_prompt import SoftPromptConfig, SoftPromptSet
from frozenlm.tasks import load_task

log = logging.getLogger(__name__)

PEFT_PROMPT_POSITION = SoftPosition.START
"""Where PEFT's prompt tuning puts its virtual tokens: before everything. A soft prompt
converted from or to a PEFT adapter sits there."""

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"
PROMPT_KEY = "prompt_embeddings"
"""The name PEFT saves a prompt encoder's weights under (`_get_adapter_state_dict`), for prompt
tuning and prefix tuning alike."""
PROMPT_TUNING = "PROMPT_TUNING"
PREFIX_TUNING = "PREFIX_TUNING"


def peft_adapter_config(num_virtual_tokens: int, backbone: Backbone) -> dict[str, Any]:
    """The adapter_config.json of a prompt of `num_virtual_tokens` for `backbone`.

    Same keys as PEFT 0.21's `PromptTuningConfig(task_type="CAUSAL_LM", ...)`; the init is
    RANDOM (TEXT would make PEFT reload a tokenizer from the base path, which fails for models
    loaded from GGUF), and "peft_version" is null so PEFT fills in its own when loading.
    """
    text_config = _text_config(backbone)
    return {
        "auto_mapping": None,
        "base_model_name_or_path": _base_path(backbone),
        "inference_mode": True,
        "modules_to_save": None,
        "num_attention_heads": getattr(text_config, "num_attention_heads", None),
        "num_layers": getattr(text_config, "num_hidden_layers", None),
        "num_transformer_submodules": 1,
        "num_virtual_tokens": num_virtual_tokens,
        "peft_type": PROMPT_TUNING,
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
    if config.get("peft_type") != PROMPT_TUNING:
        raise CheckpointError(
            f"{where} is a {config.get('peft_type')} adapter; only PROMPT_TUNING adapters are "
            "soft prompts"
        )
    _check_causal_lm(config, where)
    if config.get("token_dim") != backbone.hidden_size:
        raise CheckpointError(
            f"{where} has token_dim {config.get('token_dim')}, but backbone {backbone.name} has "
            f"hidden size {backbone.hidden_size}"
        )
    expected = [config.get("num_virtual_tokens"), backbone.hidden_size]
    return _read_prompt(folder, expected)  # [P, D]


def peft_prefix_layout(backbone: Backbone) -> tuple[int, int, int]:
    """(layers, key/value heads, head width) of `backbone`'s deep prompt, which PEFT's
    PrefixTuning lays out the same way; ConfigError if PEFT would not.

    PEFT reads the layout from the model config (0.21 `_prepare_prompt_learning_config`):
    `num_hidden_layers`; with `num_key_value_heads` in the config, that many heads of width
    `head_dim` (or hidden size / query heads); without it, the query heads. Models whose
    attention differs between layers (`global_head_dim`, `per_layer_config`, shared key/value
    layers) get a prefix sized for the largest layer and cut down per layer, which one deep
    prompt tensor is not.
    """
    text = _text_config(backbone)
    values = text.to_dict()
    for odd in ("global_head_dim", "per_layer_config"):
        if values.get(odd) is not None:
            raise ConfigError(
                f"backbone '{backbone.name}' has '{odd}' in its config: PEFT sizes such a "
                "model's prefix for its largest layer and cuts it down per layer, so a PEFT "
                "adapter cannot hold its deep prompt as one [L, 2, H, P, d] tensor"
            )
    if values.get("num_kv_shared_layers"):
        raise ConfigError(
            f"backbone '{backbone.name}' shares keys and values between layers, which PEFT's "
            "prefix skips; a PEFT adapter cannot hold its deep prompt"
        )
    layers = getattr(text, "num_hidden_layers", None)
    hidden = _first(values, "hidden_size", "n_embd", "d_model")
    heads = _first(values, "num_attention_heads", "n_head", "num_heads")
    width = None if hidden is None or not heads else hidden // heads
    if "num_key_value_heads" in values:
        width = values.get("head_dim") or width
        heads = values["num_key_value_heads"]
    ours = kv_shape(backbone)
    if (layers, heads, width) != ours:
        raise ConfigError(
            f"PEFT's PrefixTuning would give backbone '{backbone.name}' a prefix of {layers} "
            f"layers x {heads} key/value heads of width {width} (read from its config), but its "
            f"attention cache is {ours[0]} x {ours[1]} of width {ours[2]}, so a PEFT adapter "
            "cannot hold its deep prompt"
        )
    return ours


def prefix_to_peft(prefix: torch.Tensor) -> torch.Tensor:
    """A deep prompt [L, 2, H, P, d] as PEFT's flat prefix [P, L*2*H*d] (contiguous)."""
    length = prefix.shape[3]
    return prefix.permute(3, 0, 1, 2, 4).reshape(length, -1).contiguous()  # [P, L*2*H*d]


def prefix_from_peft(flat: torch.Tensor, layers: int, heads: int, width: int) -> torch.Tensor:
    """PEFT's flat prefix [P, L*2*H*d] as a deep prompt [L, 2, H, P, d] (contiguous)."""
    length = flat.shape[0]
    grid = flat.reshape(length, layers, 2, heads, width)  # [P, L, 2, H, d]
    return grid.permute(1, 2, 3, 0, 4).contiguous()  # [L, 2, H, P, d]


def peft_prefix_config(num_virtual_tokens: int, backbone: Backbone) -> dict[str, Any]:
    """The adapter_config.json of a deep prompt of `num_virtual_tokens` positions for
    `backbone`: the keys PEFT 0.21's `PrefixTuningConfig(task_type="CAUSAL_LM", ...)` saves,
    with the key/value-head layout it derives (`token_dim` = heads x head width), no projection
    (the prefix itself is stored), "peft_version" null so PEFT fills in its own."""
    layers, heads, width = peft_prefix_layout(backbone)
    return {
        "auto_mapping": None,
        "base_model_name_or_path": _base_path(backbone),
        "encoder_hidden_size": heads * width,
        "inference_mode": True,
        "init_weights": None,
        "modules_to_save": None,
        "num_attention_heads": heads,
        "num_layers": layers,
        "num_transformer_submodules": 1,
        "num_virtual_tokens": num_virtual_tokens,
        "peft_type": PREFIX_TUNING,
        "peft_version": None,
        "prefix_projection": False,
        "revision": None,
        "task_type": "CAUSAL_LM",
        "token_dim": heads * width,
    }


def export_peft_prefix(tensor: torch.Tensor, backbone: Backbone, out: str | Path) -> None:
    """Write deep prompt `tensor` [L, 2, H, P, d] as a PEFT prefix-tuning adapter folder,
    atomically; `PeftModel.from_pretrained(base_model, out)` loads it. A backbone PEFT would lay
    out otherwise is refused (`peft_prefix_layout`); an adapter already in `out` is replaced,
    any other non-empty folder is refused."""
    out = Path(out)
    try:
        layers, heads, width = peft_prefix_layout(backbone)
    except ConfigError as err:
        raise ConfigError(f"cannot export to '{out}': {err}") from err
    shape = list(tensor.shape)
    if len(shape) != 5 or shape[:3] != [layers, 2, heads] or shape[4] != width or shape[3] < 1:
        raise CheckpointError(
            f"cannot export to '{out}': a deep prompt for {backbone.name} is [{layers}, 2, "
            f"{heads}, P, {width}], got {shape}"
        )
    prefix = tensor.detach().cpu().float()
    if not bool(torch.isfinite(prefix).all()):
        raise CheckpointError(f"cannot export to '{out}': the deep prompt holds NaN or inf values")
    flat = prefix_to_peft(prefix)  # [P, L*2*H*d]
    config = peft_prefix_config(int(shape[3]), backbone)
    files = {
        ADAPTER_WEIGHTS: save_safetensors({PROMPT_KEY: flat}, metadata={"format": "pt"}),
        ADAPTER_CONFIG: (json.dumps(config, indent=2, sort_keys=True) + "\n").encode(),
    }
    write_folder(out, files, marker=ADAPTER_CONFIG)
    log.info("exported a %d-position deep prompt as a PEFT adapter to %s", shape[3], out)


def import_peft_prefix(peft_dir: str | Path, backbone: Backbone) -> torch.Tensor:
    """The deep prompt [L, 2, H, P, d] (fp32) of a PEFT prefix-tuning adapter folder made for a
    model with `backbone`'s layers, key/value heads and head width; anything else raises
    CheckpointError. A `prefix_projection` adapter is taken too: PEFT saves what its network
    wrote, not the network."""
    folder = Path(peft_dir)
    config = _read_config(folder)
    where = f"PEFT adapter '{folder}'"
    if config.get("peft_type") != PREFIX_TUNING:
        raise CheckpointError(
            f"{where} is a {config.get('peft_type')} adapter; only PREFIX_TUNING adapters are "
            "deep prompts"
        )
    _check_causal_lm(config, where)
    layers, heads, width = kv_shape(backbone)
    theirs = [config.get("num_layers"), config.get("num_attention_heads"), config.get("token_dim")]
    if theirs != [layers, heads, heads * width]:
        raise CheckpointError(
            f"{where} was made for a model of {theirs[0]} layers and {theirs[1]} key/value heads "
            f"with token_dim {theirs[2]}, but backbone {backbone.name} has {layers} layers and "
            f"{heads} key/value heads with token_dim {heads * width}"
        )
    flat = _read_prompt(folder, [config.get("num_virtual_tokens"), layers * 2 * heads * width])
    return prefix_from_peft(flat, layers, heads, width)  # [L, 2, H, P, d]


def _check_causal_lm(config: dict[str, Any], where: str) -> None:
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


def _read_prompt(folder: Path, expected: list[Any]) -> torch.Tensor:
    """The adapter's one finite floating-point tensor, which must have shape `expected`
    (fp32)."""
    tensors = _read_weights(folder)
    if PROMPT_KEY not in tensors:
        raise CheckpointError(
            f"'{folder / ADAPTER_WEIGHTS}' has no '{PROMPT_KEY}' tensor (found {sorted(tensors)})"
        )
    prompt = tensors[PROMPT_KEY]
    if list(prompt.shape) != expected:
        raise CheckpointError(
            f"'{folder / ADAPTER_WEIGHTS}': '{PROMPT_KEY}' has shape {list(prompt.shape)}, but "
            f"the config says {expected}"
        )
    if not prompt.is_floating_point() or not bool(torch.isfinite(prompt).all()):
        raise CheckpointError(
            f"'{folder / ADAPTER_WEIGHTS}': '{PROMPT_KEY}' is not a finite floating-point tensor"
        )
    return prompt.float().contiguous()


def _text_config(backbone: Backbone) -> Any:
    config = backbone.model.config
    return getattr(config, "text_config", None) or config


def _base_path(backbone: Backbone) -> str | None:
    """The folder the weights came from (a packaged backbone's converted cache); None for the
    tiny test model, which lives in memory only."""
    folder = backbone.weights_folder
    return None if folder is None else str(folder.resolve())


def _first(values: dict[str, Any], *keys: str) -> Any:
    return next((values[k] for k in keys if values.get(k) is not None), None)


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
    """`frozenlm export-peft`: one task's soft prompt (a PROMPT_TUNING adapter) or deep prompt
    (a PREFIX_TUNING adapter) of a saved plug-in as a PEFT adapter. Returns the task exported."""
    plugin, checkpoint = load_plugin(folder, backbone)
    if not isinstance(plugin, SoftPromptSet | DeepPrompt):
        raise ConfigError(
            f"'{folder}' holds a {checkpoint.meta['kind']}, not a soft prompt or a deep prompt"
        )
    names = plugin.task_names
    if task is None and len(names) > 1:
        raise ConfigError(f"'{folder}' has prompts for {', '.join(names)}; choose one with --task")
    name = task or names[0]
    if isinstance(plugin, DeepPrompt):
        export_peft_prefix(plugin.prefix(name), backbone, out)
    elif plugin.config.position is not PEFT_PROMPT_POSITION:
        raise ConfigError(
            f"'{folder}' places its soft prompt at position '{plugin.config.position}', and a "
            f"PEFT prompt-tuning adapter always puts it before everything (position "
            f"'{PEFT_PROMPT_POSITION}'); only a soft prompt trained with --position "
            f"{PEFT_PROMPT_POSITION} can be exported"
        )
    else:
        export_peft(plugin.prompt(name), backbone, out)
    return name


def import_peft_plugin(
    peft_dir: str | Path, out: str | Path, backbone: Backbone, task_ref: str
) -> str:
    """`frozenlm import-peft`: a PEFT prompt-tuning adapter as a frozenlm soft-prompt checkpoint,
    or a prefix-tuning adapter as a deep-prompt one, for the task `task_ref` (a built-in name or
    task file). Returns the plug-in method written ("soft-prompt" or "prefix")."""
    folder = Path(peft_dir)
    kind = _read_config(folder).get("peft_type")
    if kind not in (PROMPT_TUNING, PREFIX_TUNING):
        raise CheckpointError(
            f"PEFT adapter '{folder}' is a {kind} adapter; only {PROMPT_TUNING} (a soft prompt) "
            f"and {PREFIX_TUNING} (a deep prompt) adapters can be imported"
        )
    plugin: SoftPromptSet | DeepPrompt
    if kind == PREFIX_TUNING:
        prefix = import_peft_prefix(folder, backbone)  # [L, 2, H, P, d]
        prefix_config = PrefixConfig(length=int(prefix.shape[3]))
        method, config = "prefix", to_json(prefix_config)
        task = load_task(task_ref)
        plugin = DeepPrompt({task.name: prefix}, prefix_config)
    else:
        prompt = import_peft(folder, backbone)  # [P, D]
        prompt_config = SoftPromptConfig(length=int(prompt.shape[0]), position=PEFT_PROMPT_POSITION)
        method, config = "soft-prompt", to_json(prompt_config)
        task = load_task(task_ref)
        plugin = SoftPromptSet({task.name: prompt}, prompt_config)
    meta = plugin_meta(method, config, backbone, [task], [task_ref])
    meta["imported_from"] = str(folder.resolve())
    save_checkpoint(out, plugin.tensors(), meta)
    return method
