"""The one place where soft tokens join token embeddings, attention masks and position ids.

A row is a sequence of pieces: token ids (`Sequence[int]`) or soft tokens (a float tensor
[P, D] in the backbone's embedding space, e.g. a soft prompt). Rows may differ in length and in
which pieces they carry, so every row of a batch can carry a different task's plug-in.
Rows are left-padded (the last real token of every row is at the last column), which is what
batched scoring and generation need; position ids count real tokens only.

Training needs no left padding: `pack` lays rows end to end in bins whose position ids restart at
0 for each row, which the backbone reads as independent sequences, so short rows share a bin;
`pack_after` lays rows that all continue after one cached prefix end to end in one sequence,
with a block mask that lets each row see the prefix and itself only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from frozenlm.backbone import Backbone

Piece = Sequence[int] | torch.Tensor
IGNORE_INDEX = -100


@dataclass
class Spliced:
    """A left-padded batch ready for `Backbone.forward`."""

    embeds: torch.Tensor  # [B, T, D]
    attention_mask: torch.Tensor  # [B, T], 1 for real positions
    position_ids: torch.Tensor  # [B, T]
    lengths: torch.Tensor  # [B], real positions per row
    labels: torch.Tensor | None = None  # [B, T], target token at t, IGNORE_INDEX elsewhere


@dataclass
class Packed:
    """Rows laid end to end in bins, for `Backbone.forward` with no attention mask."""

    embeds: torch.Tensor  # [N_bins, C, D]
    position_ids: torch.Tensor  # [N_bins, C], restarting at 0 for each row
    lengths: torch.Tensor  # [B], positions per row
    labels: torch.Tensor  # [N_bins, C], target token at t, IGNORE_INDEX elsewhere


@dataclass
class PackedAfter:
    """Rows end to end in one sequence after a shared prefix, for `Backbone.forward` with the
    prefix's KV cache."""

    embeds: torch.Tensor  # [1, N, D], N = every row's positions
    attention_mask: torch.Tensor  # [1, 1, N, P + N] bool: the prefix's real columns and the row
    position_ids: torch.Tensor  # [1, N], each row counting on from the prefix's real length
    labels: torch.Tensor  # [1, N], target token at t, IGNORE_INDEX elsewhere


def _ids(ids: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(list(ids), dtype=torch.long, device=device)


def _is_soft(piece: Piece) -> bool:
    return isinstance(piece, torch.Tensor) and piece.is_floating_point()


def _embed_rows(
    backbone: Backbone, rows: Sequence[Sequence[Piece]], targets: Sequence[Sequence[int]] | None
) -> list[torch.Tensor]:
    """Each row's pieces (then its target ids) embedded and joined: one [T_b, D] per row."""
    if targets is not None and len(targets) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(targets)} target sequences")
    full_rows: list[list[Piece]] = [list(row) for row in rows]
    if any(isinstance(piece, int) for row in full_rows for piece in row):
        raise TypeError("a row is a list of pieces (token-id lists or soft tensors), not of ints")
    if targets is not None:
        for row, target in zip(full_rows, targets, strict=True):
            row.append(list(target))

    # Embed every token piece of the batch in one call, then cut it back into pieces.
    token_pieces = [list(p) for row in full_rows for p in row if not _is_soft(p)]
    flat_ids = [i for piece in token_pieces for i in piece]
    flat_embeds = backbone.embed(torch.tensor(flat_ids, dtype=torch.long, device=backbone.device))
    embedded = iter(torch.split(flat_embeds, [len(p) for p in token_pieces]))

    width = backbone.hidden_size
    out: list[torch.Tensor] = []
    for row in full_rows:
        parts = [torch.zeros(0, width, dtype=backbone.dtype, device=backbone.device)]
        for piece in row:
            if _is_soft(piece):
                assert isinstance(piece, torch.Tensor)
                if piece.dim() != 2 or piece.shape[1] != width:
                    shape = list(piece.shape)
                    raise ValueError(
                        f"soft tokens must be [P, {width}] for this backbone, got {shape}"
                    )
                parts.append(piece.to(device=backbone.device, dtype=backbone.dtype))
            else:
                parts.append(next(embedded))
        out.append(torch.cat(parts))  # [T_b, D]
    return out


def splice(
    backbone: Backbone,
    rows: Sequence[Sequence[Piece]],
    targets: Sequence[Sequence[int]] | None = None,
) -> Spliced:
    """Join each row's pieces (and optional target ids, appended last) into a padded batch.

    With `targets`, `labels[b, t]` is the target token at position t (so the hidden state at t-1
    predicts it) and IGNORE_INDEX everywhere else: the loss covers target tokens only.
    """
    width = backbone.hidden_size
    row_embeds = _embed_rows(backbone, rows, targets)
    lengths = [int(e.shape[0]) for e in row_embeds]
    total = max(lengths) if lengths else 0
    padded = [torch.cat([e.new_zeros(total - int(e.shape[0]), width), e]) for e in row_embeds]
    device = backbone.device
    empty = torch.zeros(0, 0, width, dtype=backbone.dtype, device=device)
    embeds = torch.stack(padded) if padded else empty  # [B, T, D]

    lengths_t = torch.tensor(lengths, dtype=torch.long, device=device)
    columns = torch.arange(total, device=device).unsqueeze(0)  # [1, T]
    pad = (total - lengths_t).unsqueeze(1)  # [B, 1]
    attention_mask = (columns >= pad).long()  # [B, T]
    position_ids = (columns - pad).clamp(min=0)  # [B, T]

    labels = None
    if targets is not None:
        labels = torch.full((len(rows), total), IGNORE_INDEX, dtype=torch.long, device=device)
        for b, target in enumerate(targets):
            if target:
                labels[b, total - len(target) :] = _ids(target, device)
    return Spliced(embeds, attention_mask, position_ids, lengths_t, labels)


def pack(
    backbone: Backbone, rows: Sequence[Sequence[Piece]], targets: Sequence[Sequence[int]]
) -> Packed:
    """The rows, each followed by its target ids, packed into bins as long as the longest row.

    Rows are placed first-fit by decreasing length, end to end within a bin, and the position ids
    restart at 0 for each row; the unused tail of a bin is a dummy segment (its own positions,
    never a target). With no attention mask the backbone then attends within each row only (a
    block-diagonal causal mask). Short rows share a bin, so no more positions are computed than
    in a padded batch and often fewer; a bin holding one full-length row needs no mask at all.
    `labels[b, t]` is the target token at t and IGNORE_INDEX elsewhere; a row's first position
    is never a target, so nothing is learned across a row boundary.
    """
    embedded = _embed_rows(backbone, rows, targets)
    lengths = [int(e.shape[0]) for e in embedded]
    if any(length == 0 for length in lengths):
        raise ValueError("every packed row needs at least one position")
    capacity = max(lengths)
    bins: list[list[int]] = []  # row indices per bin
    free: list[int] = []
    for i in sorted(range(len(rows)), key=lambda i: -lengths[i]):
        slot = next((b for b, room in enumerate(free) if room >= lengths[i]), None)
        if slot is None:
            bins.append([])
            free.append(capacity)
            slot = len(bins) - 1
        bins[slot].append(i)
        free[slot] -= lengths[i]

    width = backbone.hidden_size
    embeds = embedded[0].new_zeros(len(bins), capacity, width)  # [N_bins, C, D]
    device = backbone.device
    position_ids = torch.zeros(len(bins), capacity, dtype=torch.long, device=device)
    labels = torch.full((len(bins), capacity), IGNORE_INDEX, dtype=torch.long, device=device)
    for b, members in enumerate(bins):
        start = 0
        for i in members:
            end = start + lengths[i]
            embeds[b, start:end] = embedded[i]
            position_ids[b, start:end] = torch.arange(lengths[i], device=device)
            if targets[i]:
                labels[b, end - len(targets[i]) : end] = _ids(targets[i], device)
            start = end
        position_ids[b, start:] = torch.arange(capacity - start, device=device)  # dummy tail
    lengths_t = torch.tensor(lengths, dtype=torch.long, device=device)
    return Packed(embeds, position_ids, lengths_t, labels)


def pack_after(
    backbone: Backbone,
    rows: Sequence[Sequence[Piece]],
    targets: Sequence[Sequence[int]],
    prefix_mask: torch.Tensor,
) -> PackedAfter:
    """The rows, each followed by its target ids, end to end after one prefix whose columns
    `prefix_mask` [1, P] marks real (1) or not (0).

    Each row's positions attend to the prefix's real columns and causally to its own positions,
    never to another row's, and count on from the prefix's real length: the same attention as a
    padded batch after the prefix (`PrefixCache.after`), with no padding to compute (a padded
    batch of rows of random length computes about a third more positions than it needs).
    """
    embedded = _embed_rows(backbone, rows, targets)
    lengths = [int(e.shape[0]) for e in embedded]
    if any(length == 0 for length in lengths):
        raise ValueError("every packed row needs at least one position")
    device = backbone.device
    total, past = sum(lengths), int(prefix_mask.shape[1])
    real = int(prefix_mask.sum())
    mask = torch.zeros(1, 1, total, past + total, dtype=torch.bool, device=device)
    mask[0, 0, :, :past] = prefix_mask[0].to(device=device, dtype=torch.bool)
    position_ids = torch.empty(1, total, dtype=torch.long, device=device)
    labels = torch.full((1, total), IGNORE_INDEX, dtype=torch.long, device=device)
    start = 0
    for length, target in zip(lengths, targets, strict=True):
        end = start + length
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        mask[0, 0, start:end, past + start : past + end] = causal
        position_ids[0, start:end] = torch.arange(real, real + length, device=device)
        if target:
            labels[0, end - len(target) : end] = _ids(target, device)
        start = end
    return PackedAfter(torch.cat(embedded).unsqueeze(0), mask, position_ids, labels)


def splice_continuation(
    backbone: Backbone,
    past: Spliced,
    rows: Sequence[int],
    continuations: Sequence[Sequence[int]],
) -> Spliced:
    """Right-padded continuation tokens after a cached, left-padded batch `past`.

    Continuation i extends past row `rows[i]`; the returned attention mask covers the past
    columns of that row followed by the continuation, and position ids carry on from the row's
    real length. Pair it with the past KV cache re-indexed by `rows`.
    """
    if not continuations:
        raise ValueError("no continuations to splice")
    device = past.attention_mask.device
    index = torch.tensor(list(rows), dtype=torch.long, device=device)
    lengths = torch.tensor([len(c) for c in continuations], dtype=torch.long, device=device)
    width = int(lengths.max())
    ids = torch.zeros(len(continuations), width, dtype=torch.long, device=device)  # [N, W]
    for i, cont in enumerate(continuations):
        ids[i, : len(cont)] = _ids(cont, device)
    columns = torch.arange(width, device=device).unsqueeze(0)  # [1, W]
    new_mask = (columns < lengths.unsqueeze(1)).long()  # [N, W]
    attention_mask = torch.cat([past.attention_mask[index], new_mask], dim=1)  # [N, T + W]
    position_ids = past.lengths[index].unsqueeze(1) + columns  # [N, W]
    return Spliced(backbone.embed(ids), attention_mask, position_ids, lengths)
