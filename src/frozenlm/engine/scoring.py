"""Rank classification: log-likelihood of each candidate continuation after a shared prefix.

For each request the prefix (prompt up to the answer slot, soft tokens allowed) is run once with
a KV cache; every candidate (label verbalizer, possibly several tokens) reuses that cache. The lm
head is applied only where a candidate token is predicted: at the prefix's last position and at
each fed candidate token but the last. Single-token candidates need no second forward at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from frozenlm.backbone import Backbone
from frozenlm.engine.prefix_cache import PrefixCache
from frozenlm.engine.splice import Piece, splice, splice_continuation


@dataclass(frozen=True)
class ScoreRequest:
    """A prefix and the candidate continuations to score after it."""

    prefix: Sequence[Piece]
    candidates: Sequence[Sequence[int]]


@dataclass(frozen=True)
class CandidateScores:
    """Summed log-probabilities [K] of each candidate and its token counts [K]."""

    logprobs: torch.Tensor
    lengths: torch.Tensor

    def normalized(self) -> torch.Tensor:
        """Per-token mean log-probability (length normalisation)."""
        return self.logprobs / self.lengths


def _token_logprobs(
    backbone: Backbone, hidden: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """log p(target | hidden) for hidden [N, D] and targets [N] -> [N]."""
    logits = backbone.lm_logits(hidden)  # [N, V]
    return torch.log_softmax(logits, dim=-1).gather(1, targets.unsqueeze(1)).squeeze(1)


@torch.no_grad()
def score_batch(
    backbone: Backbone, requests: Sequence[ScoreRequest], shared: PrefixCache | None = None
) -> list[CandidateScores]:
    """Scores of every candidate of every request, in one prefix forward (+ one for long ones).

    With `shared`, every request's prefix continues after that cached prefix (e.g. a task's soft
    prompt), which is then not recomputed.
    """
    for r in requests:
        if not r.candidates or any(len(c) == 0 for c in r.candidates):
            raise ValueError("every request needs at least one non-empty candidate")
    past = splice(backbone, [r.prefix for r in requests])
    if shared is None:
        cache = backbone.new_cache()
    else:
        cache = shared.expand(backbone, len(requests))
        past = shared.after(past)
    hidden = backbone.forward(past.embeds, past.attention_mask, past.position_ids, cache)
    last = hidden[:, -1]  # [B, D], predicts each candidate's first token
    first_logprobs = torch.log_softmax(backbone.lm_logits(last), dim=-1)  # [B, V]

    scores = [
        first_logprobs[b, torch.tensor([c[0] for c in r.candidates])].clone()
        for b, r in enumerate(requests)
    ]  # each [K]
    # Candidates with more than one token: feed all but their last token after the cached prefix.
    owners = [
        (b, k) for b, r in enumerate(requests) for k, c in enumerate(r.candidates) if len(c) > 1
    ]
    if owners:
        fed = [list(requests[b].candidates[k][:-1]) for b, k in owners]
        rows = [b for b, _ in owners]
        cont = splice_continuation(backbone, past, rows, fed)
        cache.batch_select_indices(torch.tensor(rows, dtype=torch.long))
        cont_hidden = backbone.forward(cont.embeds, cont.attention_mask, cont.position_ids, cache)
        valid = torch.arange(cont_hidden.shape[1]).unsqueeze(0) < cont.lengths.unsqueeze(1)
        targets = torch.zeros_like(
            valid, dtype=torch.long
        )  # [N, W]: token predicted at each column
        for i, (b, k) in enumerate(owners):
            rest = requests[b].candidates[k][1:]
            targets[i, : len(rest)] = torch.tensor(list(rest), dtype=torch.long)
        token_lp = _token_logprobs(backbone, cont_hidden[valid], targets[valid])  # [M]
        per_candidate = torch.zeros(len(owners)).index_add_(
            0, torch.nonzero(valid)[:, 0], token_lp.float()
        )
        for i, (b, k) in enumerate(owners):
            scores[b][k] += per_candidate[i]
    return [
        CandidateScores(s.float(), torch.tensor([len(c) for c in r.candidates], dtype=torch.float))
        for s, r in zip(scores, requests, strict=True)
    ]


def token_budget_batches(lengths: Sequence[int], max_tokens: int, max_rows: int) -> list[list[int]]:
    """Group indices into batches of at most `max_rows` rows and `max_tokens` padded tokens.

    Indices are sorted by length first so padding stays small; each batch lists original indices.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        longest_if_added = max(longest, lengths[i])
        if current and (
            len(current) >= max_rows or longest_if_added * (len(current) + 1) > max_tokens
        ):
            batches.append(current)
            current, longest_if_added = [], lengths[i]
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    return batches


@torch.no_grad()
def full_sequence_logprob(
    backbone: Backbone, prefix_ids: Sequence[int], target: Sequence[int]
) -> float:
    """Reference: log p(target | prefix) from one plain forward over prefix + target ids."""
    ids = torch.tensor([list(prefix_ids) + list(target)])
    logits = backbone.model(input_ids=ids).logits[0].float()  # [T, V]
    logprobs = torch.log_softmax(logits[len(prefix_ids) - 1 : -1], dim=-1)
    return float(logprobs.gather(1, torch.tensor(list(target)).unsqueeze(1)).sum())
