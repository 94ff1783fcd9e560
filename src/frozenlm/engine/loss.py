"""The training loss of a batch of rows: cross-entropy on their target tokens only.

Rows are laid out as for scoring (`batching.lay_out`): when every row continues after the same
conditioning (one task's soft prompt, a fine-tuned copy's empty one, a shared key/value prefix),
that and the text all rows share are run once, with gradients flowing back through their keys
and values, and each row's own tokens follow it end to end in one sequence with a block mask
(`splice.pack_after`; left-padded when the backbone's attention takes no such mask, or when
rows carry key/value prefixes of their own). Otherwise the rows are packed end to end without
padding. Either way the loss equals that of the plain padded batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from frozenlm.backbone import Backbone
from frozenlm.engine.batching import Row, lay_out
from frozenlm.engine.splice import IGNORE_INDEX, Piece, pack, pack_after, splice


def target_loss(backbone: Backbone, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over target tokens; the lm head runs on those positions only.

    hidden [B, T, D] and labels [B, T] (target token at t, IGNORE_INDEX elsewhere): position t-1
    predicts the token at t.
    """
    targets = labels[:, 1:]  # [B, T-1]
    where = targets != IGNORE_INDEX
    logits = backbone.lm_logits(hidden[:, :-1][where])  # [N, V], N = target tokens
    return F.cross_entropy(logits, targets[where])


def batch_loss(
    backbone: Backbone, rows: Sequence[Row], targets: Sequence[Sequence[int]]
) -> torch.Tensor:
    """Mean target-token loss of `rows`, each followed by its `targets` ids, computed cheaply."""
    if len(rows) > 1:
        layout = lay_out(backbone, rows, min_text=1, grad=True)
        if layout.shared is not None and backbone.takes_block_mask:
            shared = layout.shared
            after = pack_after(backbone, layout.pieces, targets, shared.real_mask())
            cache = shared.expand(backbone, 1)
            hidden = backbone.forward(after.embeds, after.attention_mask, after.position_ids, cache)
            return target_loss(backbone, hidden, after.labels)
        if layout.shared is not None or layout.kv is not None:
            batch = splice(backbone, layout.pieces, targets)
            prefix = layout.prefix_for(range(len(rows)))
            assert prefix is not None
            batch = prefix.after(batch)
            cache = prefix.expand(backbone, len(rows))
            hidden = backbone.forward(batch.embeds, batch.attention_mask, batch.position_ids, cache)
            assert batch.labels is not None
            return target_loss(backbone, hidden, batch.labels)
    if any(row.kv is not None for row in rows):
        (row,) = rows  # one row with a key/value prefix: run after it
        kv = row.kv
        assert kv is not None
        batch = kv.after(splice(backbone, [row.pieces()], targets))
        cache = kv.expand(backbone, 1)
        hidden = backbone.forward(batch.embeds, batch.attention_mask, batch.position_ids, cache)
        assert batch.labels is not None
        return target_loss(backbone, hidden, batch.labels)
    pieces: list[list[Piece]] = [row.pieces() for row in rows]
    packed = pack(backbone, pieces, targets)
    hidden = backbone.forward(packed.embeds, None, packed.position_ids)
    return target_loss(backbone, hidden, packed.labels)
