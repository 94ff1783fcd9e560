"""A recursive LM's first pass: the frozen backbone reads each input, and its hidden states are
kept for the connector (Levine et al., AI21 2022).

Pass 1 is frozen and depends only on the input, so its states are computed once per example and
reused by every training epoch and dev evaluation: `StateCache` keeps them in memory (least
recently used out first, bounded in bytes) and on disk, one safetensors file per input named by
a hash of the backbone's fingerprint, the layer read, the pass-1 soft prompt and the input's
token ids (bounded in bytes too: the least recently used files are deleted first).

Where the disk cache lives and how large it may grow are settings of the machine, not of a
plug-in: `$FROZENLM_PASS1_CACHE` (default `<frozenlm cache>/pass-one`; "off": memory only) and
`$FROZENLM_PASS1_CACHE_BYTES` (default 2 GiB).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from frozenlm.assets import cache_dir
from frozenlm.atomic import atomic_write_bytes
from frozenlm.backbone import Backbone
from frozenlm.engine.batching import BatchBudget, Row, hidden_rows
from frozenlm.errors import ConfigError
from frozenlm.plugins.protocol import Conditioning, SoftPosition
from frozenlm.prompts.render import PromptConfig, Prompter
from frozenlm.tasks import Example, TaskSpec

log = logging.getLogger(__name__)

DEFAULT_DISK_BYTES = 2 << 30
"""The disk cache's default bound (2 GiB: ~15,000 inputs of 64 positions of a 1,536-wide model
in fp32)."""
DEFAULT_MEMORY_BYTES = 1 << 30
"""The in-memory cache's bound."""


def _size(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class StateCache:
    """Pass-1 states by key: in memory (LRU, `memory_bytes`) and, with a `folder`, on disk (one
    safetensors file per key, the least recently used deleted past `disk_bytes`). A file that
    cannot be read is a miss (and is deleted), never an error."""

    def __init__(
        self,
        folder: Path | None,
        *,
        disk_bytes: int = DEFAULT_DISK_BYTES,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
    ) -> None:
        self.folder, self.disk_bytes, self.memory_bytes = folder, disk_bytes, memory_bytes
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._memory_used = 0
        self._disk_used: int | None = None  # scanned at the first write
        self.hits = self.misses = 0

    @classmethod
    def from_environment(cls) -> StateCache:
        """The cache `$FROZENLM_PASS1_CACHE` and `$FROZENLM_PASS1_CACHE_BYTES` describe."""
        where = os.environ.get("FROZENLM_PASS1_CACHE", "")
        folder = None if where == "off" else Path(where) if where else cache_dir() / "pass-one"
        raw = os.environ.get("FROZENLM_PASS1_CACHE_BYTES", str(DEFAULT_DISK_BYTES))
        try:
            disk_bytes = int(raw)
        except ValueError:
            raise ConfigError(
                f"FROZENLM_PASS1_CACHE_BYTES must be a number of bytes, got {raw!r}"
            ) from None
        return cls(folder, disk_bytes=disk_bytes)

    def _path(self, key: str) -> Path:
        assert self.folder is not None
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits += 1
            return self._memory[key]
        if self.folder is not None:
            path = self._path(key)
            try:
                tensor = load_tensors(path.read_bytes())["states"]
                os.utime(path)  # recently used: evicted last
            except FileNotFoundError:
                pass
            except (OSError, SafetensorError, KeyError) as error:
                log.warning("pass-1 cache file %s is unreadable (%s); recomputing it", path, error)
                path.unlink(missing_ok=True)
            else:
                self.hits += 1
                self._remember(key, tensor)
                return tensor
        self.misses += 1
        return None

    def put(self, key: str, tensor: torch.Tensor) -> None:
        tensor = tensor.detach().to("cpu").contiguous()  # [L, D]
        self._remember(key, tensor)
        if self.folder is not None and self.disk_bytes > 0:
            data = save_tensors({"states": tensor})
            atomic_write_bytes(self._path(key), data)
            self._disk_used = self._scan() if self._disk_used is None else self._disk_used
            self._disk_used += len(data)
            if self._disk_used > self.disk_bytes:
                self._evict_disk()

    def _remember(self, key: str, tensor: torch.Tensor) -> None:
        if key in self._memory:
            return
        self._memory[key] = tensor
        self._memory_used += _size(tensor)
        while self._memory_used > self.memory_bytes and len(self._memory) > 1:
            _, old = self._memory.popitem(last=False)
            self._memory_used -= _size(old)

    def _files(self) -> list[Path]:
        assert self.folder is not None
        return list(self.folder.glob("*/*.safetensors")) if self.folder.is_dir() else []

    def _scan(self) -> int:
        return sum(path.stat().st_size for path in self._files())

    def _evict_disk(self) -> None:
        """Delete the least recently used files until the cache holds 90 % of its bound."""
        files = sorted(self._files(), key=lambda p: p.stat().st_mtime)
        used = sum(p.stat().st_size for p in files)
        for path in files:
            if used <= 0.9 * self.disk_bytes:
                break
            used -= path.stat().st_size
            path.unlink(missing_ok=True)
        self._disk_used = used


class FirstPass:
    """The frozen backbone over each example's prompt (a pass-1 soft prompt in it, when given):
    the hidden states after `layer` layers of the input's last `max_tokens` positions, cached.

    The prompt is the task's zero-shot prompt rendered as training and evaluation render it; what
    comes before the input (template, instruction) is the same for every example and is not kept.
    With `context_field`, pass 1 reads that field's raw text instead (LM pre-training: the text
    the second pass must continue without seeing it)."""

    def __init__(
        self,
        backbone: Backbone,
        *,
        layer: int,
        max_tokens: int,
        chat_template: bool,
        prompts: Mapping[str, torch.Tensor] | nn.ParameterDict,
        position: SoftPosition,
        context_field: str | None = None,
        cache: StateCache | None = None,
        budget: BatchBudget | None = None,
    ) -> None:
        if not -backbone.num_layers <= layer <= backbone.num_layers:
            raise ConfigError(
                f"first-pass layer {layer} is outside this backbone's {backbone.num_layers} layers"
            )
        self.backbone, self.layer, self.max_tokens = backbone, layer, max_tokens
        self.chat_template, self.prompts, self.position = chat_template, prompts, position
        self.context_field, self.cache = context_field, cache
        self.budget = budget or BatchBudget()
        self._prompters: dict[str, Prompter] = {}

    def identity(self) -> str:
        """What, besides the input's ids, the states depend on (hashed into every cache key;
        computed at each use, so a prompt loaded later counts)."""
        digest = hashlib.sha256()
        parts = (self.backbone.fingerprint, self.layer, self.max_tokens, self.position.value)
        digest.update(repr(parts).encode())
        for name in sorted(self.prompts):
            digest.update(name.encode())
            digest.update(self.prompts[name].detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()

    def prompter(self, spec: TaskSpec) -> Prompter:
        """The zero-shot prompter of `spec`, as training rows are rendered."""
        if spec.name not in self._prompters:
            self._prompters[spec.name] = Prompter(
                spec,
                self.backbone.tokenizer,
                PromptConfig(shots=0, chat_template=self.chat_template),
                max_tokens=min(self.backbone.max_length, 1024),
                answer_tokens=32,
            )
        return self._prompters[spec.name]

    def rows(self, spec: TaskSpec, examples: Sequence[Example]) -> tuple[list[Row], list[int]]:
        """Each example's pass-1 row and how many of its last positions are kept."""
        if self.context_field is not None:
            tokenizer = self.backbone.tokenizer
            rows, keep = [], []
            for ex in examples:
                if self.context_field not in ex.fields:
                    raise ConfigError(
                        f"task '{spec.name}' has no field '{self.context_field}' for the first "
                        "pass to read"
                    )
                text = ex.fields[self.context_field]
                ids = tokenizer.encode(text, add_special_tokens=False)[-self.max_tokens :] or [0]
                rows.append(Row(ids))
                keep.append(len(ids))
            return rows, keep
        prompter = self.prompter(spec)
        soft = self.prompts.get(spec.name)
        conditioning = Conditioning(soft, position=self.position)
        rows, keep = [], []
        for ex in examples:
            prompt = prompter.render(ex)
            rows.append(conditioning.row(prompt.ids, prompt.input_start))
            keep.append(max(1, min(self.max_tokens, len(prompt.ids) - prompt.input_start)))
        return rows, keep

    @staticmethod
    def key(identity: str, row: Row, keep: int) -> str:
        digest = hashlib.sha256(identity.encode())
        digest.update(repr((keep, list(row.ids), row.soft_at)).encode())
        return digest.hexdigest()

    def positions(self, spec: TaskSpec, examples: Sequence[Example]) -> list[int]:
        """Backbone positions pass 1 computes for each example (its compute per answer)."""
        rows, _ = self.rows(spec, examples)
        return [len(r.ids) + (0 if r.soft is None else int(r.soft.shape[0])) for r in rows]

    def states(self, spec: TaskSpec, examples: Sequence[Example]) -> list[torch.Tensor]:
        """The kept states [L_i, D] of each example (the backbone's dtype, on its device),
        without gradients."""
        rows, keep = self.rows(spec, examples)
        identity = self.identity()
        keys = [self.key(identity, r, k) for r, k in zip(rows, keep, strict=True)]
        found = [None if self.cache is None else self.cache.get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            computed = hidden_rows(
                self.backbone,
                [rows[i] for i in missing],
                [keep[i] for i in missing],
                self.layer,
                self.budget,
                desc=f"{spec.name} first pass",
            )
            for i, states in zip(missing, computed, strict=True):
                found[i] = states
                if self.cache is not None:
                    self.cache.put(keys[i], states)
        device = self.backbone.device
        return [f.to(device) for f in found if f is not None]
