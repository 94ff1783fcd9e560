"""Keys and values of a prefix the rows of a batch continue after, computed once.

In a causal LM the keys and values of the first P positions depend only on those positions, so
a soft prompt's (and the text every prompt starts with) are the same for every input:
`PrefixCache.compute` runs such a prefix once and `expand(B)` gives a KV cache for B rows that
continue after it. A per-layer key/value prefix (a deep prompt) is the same object, made by a
plug-in instead of a forward. Rows whose prefixes differ are `stack`ed: each left-padded to the
longest, padding masked.

The layout is [prefix | left padding | row]: the row is spliced without the prefix, its padding
masked and its positions counted from the prefix's real length, which attends exactly as
[padding | prefix | row] does.
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
    """Per-layer keys and values [R, H, P, d] of a prefix of P columns.

    R = 1: one prefix every row continues after (expanded to any batch size, no copy). R = B:
    one prefix per row of a batch of B (`stack`), `mask` [B, P] marking real columns.
    """

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    length: int
    """Columns P (the longest prefix when stacked)."""
    mask: torch.Tensor | None = None
    """[R, P], 1 on real columns; None when every column is real."""

    @classmethod
    def compute(
        cls,
        backbone: Backbone,
        pieces: Sequence[Piece],
        *,
        grad: bool = False,
        after: PrefixCache | None = None,
    ) -> PrefixCache:
        """Run the prefix `pieces` once (continuing after `after`, when given). With `grad`,
        its keys and values stay in the autograd graph, so a loss on rows continuing after it
        reaches the soft tokens in it (training)."""
        batch = splice(backbone, [pieces])
        if after is None:
            cache = backbone.new_cache()
        else:
            if after.rows != 1:
                raise ValueError("a prefix continues after a single shared prefix, not a stack")
            cache = after.expand(backbone, 1)
            batch = after.after(batch)
        with torch.set_grad_enabled(grad):
            backbone.forward(batch.embeds, batch.attention_mask, batch.position_ids, cache)
        layers: list[Any] = list(cache.layers)  # attention layers with .keys/.values [1, H, P, d]
        keys = tuple(layer.keys for layer in layers)
        values = tuple(layer.values for layer in layers)
        mask = None if after is None or after.mask is None else batch.attention_mask
        return cls(keys, values, int(batch.attention_mask.shape[1]), mask)

    @classmethod
    def stack(cls, prefixes: Sequence[PrefixCache]) -> PrefixCache:
        """One prefix per row: each single-row prefix left-padded to the longest ([B, H, P, d],
        mask [B, P]). The same object given for several rows is stored once per row."""
        if not prefixes or any(p.rows != 1 for p in prefixes):
            raise ValueError("stack takes one or more single-row prefixes")
        longest = max(p.length for p in prefixes)
        device = prefixes[0].keys[0].device
        masks = []
        for p in prefixes:
            own = p.real_mask(device)  # [1, P_b]
            masks.append(torch.cat([own.new_zeros(1, longest - p.length), own], dim=1))

        def padded(per_row: Sequence[torch.Tensor]) -> torch.Tensor:
            parts = []
            for t in per_row:  # [1, H, P_b, d]
                pad = t.new_zeros(1, t.shape[1], longest - t.shape[2], t.shape[3])
                parts.append(torch.cat([pad, t], dim=2))
            return torch.cat(parts)  # [B, H, P, d]

        layers = range(len(prefixes[0].keys))
        return cls(
            tuple(padded([p.keys[i] for p in prefixes]) for i in layers),
            tuple(padded([p.values[i] for p in prefixes]) for i in layers),
            longest,
            torch.cat(masks),  # [B, P]
        )

    @classmethod
    def from_tensors(
        cls, keys: Sequence[torch.Tensor], values: Sequence[torch.Tensor]
    ) -> PrefixCache:
        """A single-row prefix from per-layer keys and values [1, H, P, d] (a deep prompt's)."""
        if len(keys) != len(values) or not keys:
            raise ValueError("a prefix needs keys and values for every layer")
        return cls(tuple(keys), tuple(values), int(keys[0].shape[2]))

    def empty_like(self) -> PrefixCache:
        """A single-row prefix of no columns with this one's layers, heads and widths (for rows
        without a prefix stacked beside rows with one)."""
        keys = tuple(k[:1, :, :0] for k in self.keys)
        values = tuple(v[:1, :, :0] for v in self.values)
        return PrefixCache(keys, values, 0)

    def detached(self) -> PrefixCache:
        """The same prefix outside the autograd graph."""
        keys = tuple(k.detach() for k in self.keys)
        values = tuple(v.detach() for v in self.values)
        return PrefixCache(keys, values, self.length, self.mask)

    @property
    def rows(self) -> int:
        return int(self.keys[0].shape[0])

    def real_mask(self, device: torch.device | None = None) -> torch.Tensor:
        """[R, P] long, 1 on real columns."""
        if self.mask is not None:
            return self.mask.to(device=device or self.mask.device, dtype=torch.long)
        device = device or self.keys[0].device
        return torch.ones(self.rows, self.length, dtype=torch.long, device=device)

    def expand(self, backbone: Backbone, rows: int) -> DynamicCache:
        """A fresh KV cache holding the prefix for `rows` rows (views, no copy until extended)."""
        if self.rows not in (1, rows):
            raise ValueError(f"a prefix stacked for {self.rows} rows cannot serve {rows}")
        cache = backbone.new_cache()
        device, dtype = backbone.device, backbone.dtype  # a plug-in's keys are fp32
        for layer, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            k, v = k.to(device=device, dtype=dtype), v.to(device=device, dtype=dtype)
            cache.update(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1), layer)
        return cache

    def after(self, batch: Spliced) -> Spliced:
        """`batch` (spliced without the prefix) as it continues after the prefix: mask covering
        the prefix, positions and lengths shifted by each row's real prefix length."""
        rows = batch.attention_mask.shape[0]
        device = batch.attention_mask.device
        prefix_mask = self.real_mask(device).expand(rows, -1)  # [B, P]
        real = prefix_mask.sum(dim=1)  # [B]
        return Spliced(
            batch.embeds,
            torch.cat([prefix_mask.to(batch.attention_mask.dtype), batch.attention_mask], dim=1),
            batch.position_ids + real.unsqueeze(1).to(batch.position_ids.device),
            batch.lengths + real.to(batch.lengths.device),
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
