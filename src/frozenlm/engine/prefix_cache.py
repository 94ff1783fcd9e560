"""Keys and values of a prefix shared by every row (a task's soft prompt), computed once.

In a causal LM the keys and values of the first P positions depend only on those positions, so
a soft prompt's are the same for every input. `PrefixCache.compute` runs the prefix once;
`expand(B)` gives a KV cache for a batch of B rows that continue after it. Rows are then spliced
without the prefix: the layout is [prefix | left padding | row], with the padding masked and
positions counted from P, which attends exactly as [padding | prefix | row] does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from frozenlm.backbone import Backbone
from frozenlm.engine.splice import Piece, Spliced, splice


@dataclass(frozen=True)
class PrefixCache:
    """Per-layer keys and values [1, H, P, d] of a shared prefix of P positions."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    length: int

    @classmethod
    def compute(
        cls, backbone: Backbone, pieces: Sequence[Piece], *, grad: bool = False
    ) -> PrefixCache:
        """Run the prefix once. With `grad`, its keys and values stay in the autograd graph, so a
        loss on rows continuing after it reaches the soft tokens in it (training)."""
        batch = splice(backbone, [pieces])
        cache = backbone.new_cache()
        with torch.set_grad_enabled(grad):
            backbone.forward(batch.embeds, batch.attention_mask, batch.position_ids, cache)
        layers: list[Any] = list(cache.layers)  # attention layers with .keys/.values [1, H, P, d]
        keys = tuple(layer.keys for layer in layers)
        values = tuple(layer.values for layer in layers)
        return cls(keys, values, int(batch.lengths[0]))  # type: ignore[arg-type]

    def expand(self, backbone: Backbone, rows: int) -> DynamicCache:
        """A fresh KV cache holding the prefix for `rows` rows (views, no copy until extended)."""
        cache = backbone.new_cache()
        for layer, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            cache.update(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1), layer)
        return cache

    def after(self, batch: Spliced) -> Spliced:
        """`batch` (spliced without the prefix) as it continues after the prefix: mask covering
        the prefix, positions and lengths shifted by P."""
        rows = batch.attention_mask.shape[0]
        ones = torch.ones(rows, self.length, dtype=batch.attention_mask.dtype)
        return Spliced(
            batch.embeds,
            torch.cat([ones, batch.attention_mask], dim=1),  # [B, P + T]
            batch.position_ids + self.length,
            batch.lengths + self.length,
            batch.labels,
        )


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own."""
    if len(rows) < 2:
        return 0
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    for i in range(max(limit, 0)):
        if any(r[i] != first[i] for r in rows):
            return i
    return max(limit, 0)
