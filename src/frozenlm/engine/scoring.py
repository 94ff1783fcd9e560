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

    def values(self, length_normalize: bool = False) -> torch.Tensor:
        """Summed log-probabilities [K], or per-token means with `length_normalize`."""
        return self.normalized() if length_normalize else self.logprobs


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

    With `shared`, every request's prefix continues after that cached prefix (a task's soft
    prompt and the text all prompts share, or one key/value prefix per request, stacked), which
    is then not recomputed.
    """
    for r in requests:
        if not r.candidates or any(len(c) == 0 for c in r.candidates):
            raise ValueError("every request needs at least one non-empty candidate")
    device = backbone.device
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
        first_logprobs[b, _ids([c[0] for c in r.candidates], device)].clone()
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
        cache.batch_select_indices(_ids(rows, device))
        cont_hidden = backbone.forward(cont.embeds, cont.attention_mask, cont.position_ids, cache)
        columns = torch.arange(cont_hidden.shape[1], device=device).unsqueeze(0)  # [1, W]
        valid = columns < cont.lengths.unsqueeze(1)  # [N, W]
        targets = torch.zeros_like(valid, dtype=torch.long)  # [N, W]: token predicted at each
        for i, (b, k) in enumerate(owners):
            rest = requests[b].candidates[k][1:]
            targets[i, : len(rest)] = _ids(rest, device)
        token_lp = _token_logprobs(backbone, cont_hidden[valid], targets[valid])  # [M]
        per_candidate = torch.zeros(len(owners), device=device).index_add_(
            0, torch.nonzero(valid)[:, 0], token_lp.float()
        )
        for i, (b, k) in enumerate(owners):
            scores[b][k] += per_candidate[i]
    return [
        CandidateScores(
            s.float().cpu(), torch.tensor([len(c) for c in r.candidates], dtype=torch.float)
        )
        for s, r in zip(scores, requests, strict=True)
    ]


def _ids(ids: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(list(ids), dtype=torch.long, device=device)


@torch.no_grad()
def full_sequence_logprob(
    backbone: Backbone, prefix_ids: Sequence[int], target: Sequence[int]
) -> float:
    """Reference: log p(target | prefix) from one plain forward over prefix + target ids."""
    ids = _ids([*prefix_ids, *target], backbone.device).unsqueeze(0)  # [1, T]
    logits = backbone.model(input_ids=ids).logits[0].float()  # [T, V]
    logprobs = torch.log_softmax(logits[len(prefix_ids) - 1 : -1], dim=-1)
    return float(logprobs.gather(1, _ids(target, backbone.device).unsqueeze(1)).sum())
