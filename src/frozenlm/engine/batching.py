"""Rows into batches: what every row shares is computed once, the rest goes in token budgets.

A `Row` is one prompt for the frozen backbone and its conditioning: soft tokens [P, D] at a
place in its ids (a soft prompt, a generated prompt) and/or a per-layer key/value prefix (a deep
prompt). Rows of one call may carry different conditioning (mixed tasks and plug-ins).

`lay_out` finds what all rows start with: the same key/value prefix, the same soft tokens (the
same tensor object at the same place after the same text: one task's soft prompt) and the text
all prompts have in common (chat template, instruction, fixed demonstrations), up to the first
soft tokens when rows carry soft tokens of their own (an input-dependent prompt, a connector's
vectors, right before the input). That is run once into a `PrefixCache`; each row keeps only
its own pieces. Rows without a key/value prefix among rows with one get an empty one.
`score_rows` and `generate_rows` are the one batch loop of evaluation, mixed batches, ensembles
and SuperICL: length-sorted batches within a token budget, progress bar, results in the rows'
order; `hidden_rows` is the same loop returning each row's hidden states (a recursive LM's first
pass).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from frozenlm.backbone import Backbone
from frozenlm.engine.generation import Generation, GenerationConfig, generate_detailed
from frozenlm.engine.prefix_cache import PrefixCache, common_prefix_length
from frozenlm.engine.scoring import CandidateScores, ScoreRequest, score_batch
from frozenlm.engine.splice import Piece, splice
from frozenlm.progress import progress

MIN_SHARED_TOKENS = 8
"""A common text prefix shorter than this is not worth a separate forward (evaluation)."""


@dataclass(frozen=True)
class Row:
    """One prompt for the backbone: [kv prefix | ids before soft_at | soft tokens | the rest]."""

    ids: Sequence[int]
    """The prompt's token ids."""
    soft: torch.Tensor | None = None
    """Soft tokens [P, D]. Rows given the same tensor object share it."""
    kv: PrefixCache | None = None
    """A single-row per-layer key/value prefix before everything (a deep prompt). Rows given
    the same object share it."""
    soft_at: int = 0
    """The soft tokens go before `ids[soft_at]` (0: before every id)."""

    def __post_init__(self) -> None:
        if not 0 <= self.soft_at <= len(self.ids):
            raise ValueError(f"soft_at {self.soft_at} is outside a row of {len(self.ids)} ids")

    def pieces(self) -> list[Piece]:
        """The row's pieces in order (its key/value prefix aside)."""
        if self.soft is None:
            return [self.ids]
        head, tail = list(self.ids[: self.soft_at]), list(self.ids[self.soft_at :])
        return [*([head] if head else []), self.soft, tail]


@dataclass(frozen=True)
class BatchBudget:
    """How large a forward batch may be."""

    tokens: int = 4096
    """Padded tokens per forward batch."""
    rows: int = 16
    """Rows per forward batch."""
    padding: float | None = None
    """At most this share of a batch's padded tokens may be padding (None: any): rows of very
    different lengths (a server's mix of tasks) then go in different batches instead of short
    rows being padded to the longest."""


@dataclass
class Layout:
    """Rows as the engine runs them: what all rows continue after, and each row's own part."""

    shared: PrefixCache | None
    """Computed once; every row continues after it (None: nothing shared)."""
    pieces: list[list[Piece]]
    """Each row's own pieces (its soft tokens unless shared, then its ids past the shared text)."""
    kv: list[PrefixCache] | None
    """Each row's own key/value prefix, when the rows' prefixes differ (stacked per batch)."""

    def lengths(self) -> list[int]:
        """Positions each row computes (its own pieces)."""
        return [sum(len(p) for p in row) for row in self.pieces]

    def prefix_for(self, batch: Sequence[int]) -> PrefixCache | None:
        """The prefix the rows `batch` continue after: the shared one or their stacked own."""
        if self.kv is None:
            return self.shared
        return PrefixCache.stack([self.kv[i] for i in batch])


def _same(items: Sequence[object]) -> bool:
    return all(item is items[0] for item in items)


def lay_out(
    backbone: Backbone,
    rows: Sequence[Row],
    *,
    share_text: bool = True,
    min_text: int = MIN_SHARED_TOKENS,
    grad: bool = False,
) -> Layout:
    """What all `rows` start with, run once (with `grad`, inside the autograd graph), and the
    pieces each row adds. Text is shared only when at least `min_text` tokens are common (text
    before shared soft tokens always is, since the soft tokens are)."""
    if not rows:
        return Layout(None, [], None)
    kvs = [row.kv for row in rows]
    softs = [row.soft for row in rows]
    first = rows[0]
    shared_kv = _same(kvs)
    common = common_prefix_length([row.ids for row in rows]) if shared_kv else 0
    at = first.soft_at if first.soft is not None else 0
    shared_soft = (
        shared_kv
        and first.soft is not None
        and _same(softs)
        and all(row.soft_at == at for row in rows)
        and (at == 0 or common >= at or len(rows) == 1)
    )
    own_soft = any(s is not None for s in softs) and not shared_soft
    end = at if shared_soft else 0  # shared text ends here...
    if share_text and shared_kv and not own_soft and common - end >= min_text:
        end = common  # ...or after all the text every row starts with...
    if share_text and shared_kv and own_soft:  # ...or before the first row's own soft tokens
        before = min(row.soft_at if row.soft is not None else len(row.ids) for row in rows)
        if min(before, common) >= min_text:
            end = min(before, common)
    prefix: list[Piece] = []
    if end or shared_soft:
        head = list(first.ids[:at]) if shared_soft else []
        if head:
            prefix.append(head)
        if shared_soft and first.soft is not None and first.soft.shape[0] > 0:
            prefix.append(first.soft)
        if list(first.ids[len(head) : end]):
            prefix.append(list(first.ids[len(head) : end]))
    base = first.kv if shared_kv else None
    shared = base
    if prefix:
        shared = PrefixCache.compute(backbone, prefix, grad=grad, after=base)
    pieces: list[list[Piece]] = []
    for row in rows:
        if shared_soft or row.soft is None:
            pieces.append([list(row.ids[end:])])
        else:  # its own soft tokens, after the shared text (which ends at or before them)
            head = list(row.ids[end : row.soft_at])
            pieces.append([*([head] if head else []), row.soft, list(row.ids[row.soft_at :])])
    if shared_kv:
        return Layout(shared, pieces, None)
    model = next(kv for kv in kvs if kv is not None)
    empty = model.empty_like()
    return Layout(None, pieces, [empty if kv is None else kv for kv in kvs])


def token_budget_batches(
    lengths: Sequence[int], max_tokens: int, max_rows: int, max_padding: float | None = None
) -> list[list[int]]:
    """Group indices into batches of at most `max_rows` rows and `max_tokens` padded tokens
    (and, with `max_padding`, at most that share of padding in each).

    Indices are sorted by length first so padding stays small; each batch lists original indices.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = real = 0
    for i in order:
        longest_if_added = max(longest, lengths[i])
        padded = longest_if_added * (len(current) + 1)
        wasteful = max_padding is not None and padded - (real + lengths[i]) > max_padding * padded
        if current and (len(current) >= max_rows or padded > max_tokens or wasteful):
            batches.append(current)
            current, longest_if_added, real = [], lengths[i], 0
        current.append(i)
        longest = longest_if_added
        real += lengths[i]
    if current:
        batches.append(current)
    return batches


def score_rows(
    backbone: Backbone,
    rows: Sequence[Row],
    candidates: Sequence[Sequence[Sequence[int]]],
    budget: BatchBudget = BatchBudget(),
    *,
    share_text: bool = True,
    desc: str = "scoring",
) -> list[CandidateScores]:
    """Rank-classification scores of each row's candidates (`candidates[i]` for row i), in
    batches within `budget`; equal (to float tolerance) to scoring each row alone."""
    if len(candidates) != len(rows):
        raise ValueError(f"{len(rows)} rows but {len(candidates)} candidate lists")
    layout = lay_out(backbone, rows, share_text=share_text)
    lengths = [
        n + max(len(c) for c in cands)
        for n, cands in zip(layout.lengths(), candidates, strict=True)
    ]
    out: list[CandidateScores | None] = [None] * len(rows)
    batches = token_budget_batches(lengths, budget.tokens, budget.rows, budget.padding)
    with progress(total=len(rows), desc=desc, unit="ex", leave=False) as bar:
        for batch in batches:
            requests = [ScoreRequest(layout.pieces[i], candidates[i]) for i in batch]
            scores = score_batch(backbone, requests, layout.prefix_for(batch))
            for i, result in zip(batch, scores, strict=True):
                out[i] = result
            bar.update(len(batch))
    return [s for s in out if s is not None]


def generate_rows(
    backbone: Backbone,
    rows: Sequence[Row],
    config: GenerationConfig,
    budget: BatchBudget = BatchBudget(),
    *,
    share_text: bool = True,
    desc: str = "generate",
) -> list[str]:
    """Greedy continuation of each row (see `generate`), in batches within `budget`."""
    made = generate_rows_detailed(backbone, rows, config, budget, share_text=share_text, desc=desc)
    return [g.text for g in made]


def generate_rows_detailed(
    backbone: Backbone,
    rows: Sequence[Row],
    config: GenerationConfig,
    budget: BatchBudget = BatchBudget(),
    *,
    share_text: bool = True,
    desc: str = "generate",
) -> list[Generation]:
    """`generate_rows`, keeping each row's tokens and their log-probabilities."""
    layout = lay_out(backbone, rows, share_text=share_text)
    lengths = [n + config.max_new_tokens for n in layout.lengths()]
    out: list[Generation | None] = [None] * len(rows)
    batches = token_budget_batches(lengths, budget.tokens, budget.rows, budget.padding)
    with progress(total=len(rows), desc=desc, unit="ex", leave=False) as bar:
        for batch in batches:
            prefixes = [layout.pieces[i] for i in batch]
            made = generate_detailed(backbone, prefixes, config, layout.prefix_for(batch))
            for i, generation in zip(batch, made, strict=True):
                out[i] = generation
            bar.update(len(batch))
    return [g for g in out if g is not None]


@torch.no_grad()
def hidden_rows(
    backbone: Backbone,
    rows: Sequence[Row],
    keep: Sequence[int],
    layer: int = -1,
    budget: BatchBudget = BatchBudget(),
    *,
    desc: str = "first pass",
) -> list[torch.Tensor]:
    """The hidden states [keep[i], D] after `layer` layers of the last `keep[i]` positions of
    each row, in batches within `budget`, without gradients.

    Only soft tokens shared by every row (and the text before them) are computed once, never
    text the rows merely happen to share: a row's states then depend on that row alone, not on
    the rows it was batched with (a cache of them stays valid)."""
    layout = lay_out(backbone, rows, share_text=False)
    lengths = layout.lengths()
    for i, (length, wanted) in enumerate(zip(lengths, keep, strict=True)):
        if not 0 < wanted <= length:
            raise ValueError(f"row {i} computes {length} positions of its own, not {wanted}")
    out: list[torch.Tensor | None] = [None] * len(rows)
    batches = token_budget_batches(lengths, budget.tokens, budget.rows, budget.padding)
    with progress(total=len(rows), desc=desc, unit="ex", leave=False) as bar:
        for batch in batches:
            spliced = splice(backbone, [layout.pieces[i] for i in batch])
            prefix = layout.prefix_for(batch)
            cache = None
            if prefix is not None:
                spliced = prefix.after(spliced)
                cache = prefix.expand(backbone, len(batch))
            states = backbone.forward(
                spliced.embeds,
                spliced.attention_mask,
                spliced.position_ids,
                cache,
                layer=layer,
            )  # [B, T, D], left-padded: each row's last positions are its own
            for b, i in enumerate(batch):
                out[i] = states[b, states.shape[1] - keep[i] :].clone()
            bar.update(len(batch))
    return [s for s in out if s is not None]
