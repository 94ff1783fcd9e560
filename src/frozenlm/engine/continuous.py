"""Continuous batching: generation in which rows join and leave between decoding steps.

A server cannot wait for a batch to finish before it starts the next request, nor hold a
finished row in the batch until the longest one ends. `DecodeBatch` keeps every active row's
keys and values in one KV cache, rows left-padded to the longest with a mask [B, L] of real
columns (as `PrefixCache.stack` lays rows out). `step` picks each row's next token and feeds
them in one forward; `add` prefills new rows together (what they all start with computed once,
see `lay_out`) and merges their cache in, left-padding whichever side is shorter; rows that end
are dropped and columns no row uses any more are cut. Positions are explicit per row, so where a
row's padding sits does not change what it computes: a row decodes as `generate_detailed`
decodes it alone (test), whatever rows of other tasks and plug-ins share its forwards.

Greedy rows are deterministic; a sampled row draws from a generator of its own, seeded by its
config, so its tokens do not depend on the rows it was batched with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from frozenlm.backbone import Backbone
from frozenlm.engine.batching import Row, lay_out
from frozenlm.engine.generation import GenerationConfig, cut_at_stop, end_tokens
from frozenlm.engine.splice import splice


@dataclass(frozen=True)
class Step:
    """What one decoding step gave one row."""

    slot: int
    """The row's id (from `add`)."""
    token: int | None
    """The token generated, or None when the row ended on an end token."""
    logprob: float
    """Its log-probability under the (untempered) model; 0 when `token` is None."""
    top: list[tuple[int, float]]
    """The `top_logprobs` most likely (token id, log-probability) pairs of this step."""
    text: str
    """The row's whole text so far, cut at the first stop string (not stripped)."""
    finished: str | None
    """None while the row goes on; "stop" (an end token or a stop string) or "length"."""


@dataclass
class _Slot:
    slot: int
    config: GenerationConfig
    sampler: torch.Generator | None
    position: int  # the next token's position id
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # the tokens decoded, cut at the first stop string


class DecodeBatch:
    """The rows being generated, one stacked KV cache for all of them."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self._eos = end_tokens(backbone)
        self._slots: list[_Slot] = []  # in cache row order
        self._cache: Any = None  # DynamicCache holding [B, H, L, d] per layer
        self._mask: torch.Tensor | None = None  # [B, L] long, 1 on real columns
        self._logits: torch.Tensor | None = None  # [B, V] at each row's last position
        self._next_id = 0

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def columns(self) -> int:
        """Columns of the stacked cache (the longest row's positions)."""
        return 0 if self._mask is None else int(self._mask.shape[1])

    @torch.no_grad()
    def add(self, rows: Sequence[Row], configs: Sequence[GenerationConfig]) -> list[int]:
        """Prefill `rows` (one forward) and let them decode from the next `step`; their ids."""
        if len(rows) != len(configs):
            raise ValueError(f"{len(rows)} rows but {len(configs)} generation configs")
        if not rows:
            return []
        for config in configs:
            if not config.use_cache:
                raise ValueError("continuous batching decodes with a KV cache (use_cache=True)")
        layout = lay_out(self.backbone, rows)
        batch = splice(self.backbone, layout.pieces)
        prefix = layout.prefix_for(range(len(rows)))
        cache = self.backbone.new_cache()
        if prefix is not None:
            batch = prefix.after(batch)
            cache = prefix.expand(self.backbone, len(rows))
        hidden = self.backbone.forward(
            batch.embeds, batch.attention_mask, batch.position_ids, cache
        )  # [N, T, D]
        logits = self.backbone.lm_logits(hidden[:, -1])  # [N, V]
        new = []
        for config, length in zip(configs, batch.lengths.tolist(), strict=True):
            sampler = None
            if config.temperature > 0:
                sampler = torch.Generator(device=self.backbone.device).manual_seed(config.seed)
            new.append(_Slot(self._next_id, config, sampler, int(length)))
            self._next_id += 1
        keys, values = _tensors(cache)
        mask = batch.attention_mask.long()
        if self._slots:
            old_keys, old_values = _tensors(self._cache)
            assert self._mask is not None and self._logits is not None
            keys, values, mask = _merge((old_keys, old_values, self._mask), (keys, values, mask))
            logits = torch.cat([self._logits, logits])
        self._slots = [*self._slots, *new]
        self._cache, self._mask, self._logits = self._new_cache(keys, values), mask, logits
        return [s.slot for s in new]

    @torch.no_grad()
    def step(self) -> list[Step]:
        """One token for every row, one forward for the rows that go on; ended rows leave."""
        if not self._slots:
            return []
        assert self._logits is not None and self._mask is not None
        logprobs = torch.log_softmax(self._logits, dim=-1)  # [B, V]
        greedy = logprobs.argmax(dim=-1)  # [B]
        out: list[Step] = []
        keep: list[int] = []
        fed: list[int] = []
        for b, slot in enumerate(self._slots):
            config = slot.config
            if slot.sampler is None:
                token = int(greedy[b])
            else:
                probs = torch.softmax(self._logits[b] / config.temperature, dim=-1)
                token = int(torch.multinomial(probs, 1, generator=slot.sampler))
            top: list[tuple[int, float]] = []
            if config.top_logprobs:
                best = logprobs[b].topk(config.top_logprobs)
                pairs = zip(best.indices.tolist(), best.values.tolist(), strict=True)
                top = [(int(i), float(v)) for i, v in pairs]
            if token in self._eos:
                out.append(Step(slot.slot, None, 0.0, top, slot.text, "stop"))
                continue
            slot.tokens.append(token)
            text = self.backbone.tokenizer.decode(slot.tokens, skip_special_tokens=True)
            slot.text, stopped = cut_at_stop(text, config.stop)
            finished = "stop" if stopped else None
            if finished is None and len(slot.tokens) >= config.max_new_tokens:
                finished = "length"
            logprob = float(logprobs[b, token])
            out.append(Step(slot.slot, token, logprob, top, slot.text, finished))
            if finished is None:
                keep.append(b)
                fed.append(token)
        self._keep(keep)
        if self._slots:
            assert self._mask is not None
            rows = len(self._slots)
            device = self.backbone.device
            embeds = self.backbone.embed(torch.tensor(fed, device=device).unsqueeze(1))  # [B,1,D]
            self._mask = torch.cat([self._mask, self._mask.new_ones(rows, 1)], dim=1)
            positions = torch.tensor([[s.position] for s in self._slots], device=device)
            hidden = self.backbone.forward(embeds, self._mask, positions, self._cache)
            self._logits = self.backbone.lm_logits(hidden[:, -1])  # [B, V]
            for slot in self._slots:
                slot.position += 1
        return out

    def cancel(self, slots: Sequence[int]) -> None:
        """Drop the rows `slots` (a client went away); unknown ids are ignored."""
        gone = set(slots)
        self._keep([b for b, s in enumerate(self._slots) if s.slot not in gone])

    def _keep(self, rows: list[int]) -> None:
        """Keep only the cache rows `rows`; cut the columns none of them uses any more."""
        if len(rows) == len(self._slots):
            return
        if not rows:
            self._slots, self._cache, self._mask, self._logits = [], None, None, None
            return
        assert self._mask is not None and self._logits is not None
        index = torch.tensor(rows, device=self._mask.device)
        mask = self._mask.index_select(0, index)
        first = int((mask.sum(dim=0) > 0).nonzero()[0])  # the first column some row uses
        keys, values = _tensors(self._cache)
        keys = [k.index_select(0, index.to(k.device))[:, :, first:] for k in keys]
        values = [v.index_select(0, index.to(v.device))[:, :, first:] for v in values]
        self._slots = [self._slots[b] for b in rows]
        self._cache = self._new_cache(keys, values)
        self._mask = mask[:, first:]
        self._logits = self._logits.index_select(0, index.to(self._logits.device))

    def _new_cache(self, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> Any:
        cache = self.backbone.new_cache()
        for layer, (k, v) in enumerate(zip(keys, values, strict=True)):
            cache.update(k, v, layer)
        return cache


def _tensors(cache: Any) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-layer keys and values [B, H, L, d] of a cache; refused if layers differ in length
    (a sliding-window layer has dropped columns the mask still counts)."""
    layers: list[Any] = list(cache.layers)
    keys = [layer.keys for layer in layers]
    values = [layer.values for layer in layers]
    if len({int(k.shape[2]) for k in keys}) > 1:
        raise ValueError(
            "continuous batching needs every layer to keep all columns; this model's cache "
            "has sliding-window layers that dropped some"
        )
    return keys, values


def _merge(
    a: tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor],
    b: tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor],
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Rows of `a` then rows of `b`, the shorter side left-padded (masked) to the longer."""
    width = max(int(a[2].shape[1]), int(b[2].shape[1]))

    def pad(t: torch.Tensor) -> torch.Tensor:  # [B, H, L, d] -> [B, H, width, d]
        extra = t.new_zeros(t.shape[0], t.shape[1], width - t.shape[2], t.shape[3])
        return torch.cat([extra, t], dim=2)

    def pad_mask(m: torch.Tensor) -> torch.Tensor:  # [B, L] -> [B, width]
        return torch.cat([m.new_zeros(m.shape[0], width - m.shape[1]), m], dim=1)

    keys = [torch.cat([pad(x), pad(y)]) for x, y in zip(a[0], b[0], strict=True)]
    values = [torch.cat([pad(x), pad(y)]) for x, y in zip(a[1], b[1], strict=True)]
    return keys, values, torch.cat([pad_mask(a[2]), pad_mask(b[2])])
