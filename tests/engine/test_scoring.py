import pytest
import torch

from frozenlm.backbone import Backbone
from frozenlm.engine.scoring import (
    ScoreRequest,
    full_sequence_logprob,
    score_batch,
)

PREFIXES = [
    "Review: a gripping, beautiful film.\nAnswer:",
    "Is this good?\nAnswer:",
    "Headline: the central bank raised rates again as inflation rose sharply\nAnswer:",
]
LABELS = [" positive", " negative", " technology and science", " sport", " entertainment"]


def _requests(backbone: Backbone) -> list[ScoreRequest]:
    tok = backbone.tokenizer
    candidates = [tok.encode(c, add_special_tokens=False) for c in LABELS]
    assert max(len(c) for c in candidates) > 1  # multi-token verbalizers are covered
    return [ScoreRequest([tok.encode(p, add_special_tokens=False)], candidates) for p in PREFIXES]


def _check_equal_to_full_forwards(backbone: Backbone) -> None:
    requests = _requests(backbone)
    for request, scores in zip(requests, score_batch(backbone, requests), strict=True):
        prefix = list(request.prefix[0])
        reference = torch.tensor(
            [full_sequence_logprob(backbone, prefix, c) for c in request.candidates]
        )
        torch.testing.assert_close(scores.logprobs, reference, atol=1e-4, rtol=0)
        assert scores.lengths.tolist() == [len(c) for c in request.candidates]


def test_shared_prefix_scores_equal_separate_full_forwards(tiny: Backbone) -> None:
    _check_equal_to_full_forwards(tiny)


@pytest.mark.slow
def test_shared_prefix_scores_equal_full_forwards_on_embedded(embedded: Backbone) -> None:
    _check_equal_to_full_forwards(embedded)


def test_lm_head_runs_only_where_a_score_needs_it(tiny: Backbone, monkeypatch) -> None:
    rows_seen: list[int] = []
    original = tiny.lm_logits

    def counting(hidden: torch.Tensor) -> torch.Tensor:
        rows_seen.append(hidden.reshape(-1, hidden.shape[-1]).shape[0])
        return original(hidden)

    monkeypatch.setattr(tiny, "lm_logits", counting)
    requests = _requests(tiny)
    score_batch(tiny, requests)
    extra = sum(len(c) - 1 for r in requests for c in r.candidates)
    assert sum(rows_seen) == len(requests) + extra


def test_length_normalisation_is_the_mean_token_log_probability(tiny: Backbone) -> None:
    request = _requests(tiny)[2]  # candidates of one to four tokens
    scores = score_batch(tiny, [request])[0]
    (prefix,) = request.prefix
    assert isinstance(prefix, list)
    want = [full_sequence_logprob(tiny, prefix, c) / len(c) for c in request.candidates]
    torch.testing.assert_close(
        scores.values(length_normalize=True), torch.tensor(want), atol=1e-4, rtol=0
    )
    assert scores.lengths.tolist() == [len(c) for c in request.candidates]
    torch.testing.assert_close(scores.values(), scores.logprobs)


def test_soft_prefix_pieces_are_scored_as_input_embeddings(tiny: Backbone) -> None:
    """Soft tokens before the ids score as one plain forward over [soft | embed(ids)] does."""
    soft = torch.randn(3, tiny.hidden_size, generator=torch.Generator().manual_seed(5))
    ids, candidates = [5, 6, 40], [[7], [8, 9]]
    (scores,) = score_batch(tiny, [ScoreRequest([soft, ids], candidates)])
    want = []
    for cand in candidates:
        embeds = torch.cat([soft, tiny.embed(torch.tensor(ids + cand))]).unsqueeze(0)
        logits = tiny.model(inputs_embeds=embeds).logits[0].float()  # [T, V]
        logprobs = torch.log_softmax(logits[-len(cand) - 1 : -1], dim=-1)
        want.append(float(logprobs.gather(1, torch.tensor(cand).unsqueeze(1)).sum()))
    torch.testing.assert_close(scores.logprobs, torch.tensor(want), atol=1e-4, rtol=0)


def test_a_cached_soft_prompt_scores_like_a_recomputed_one(tiny: Backbone) -> None:
    from frozenlm.engine.prefix_cache import PrefixCache

    torch.manual_seed(0)
    soft = torch.randn(6, tiny.hidden_size)
    plain = _requests(tiny)
    with_soft = [ScoreRequest([soft, *r.prefix], r.candidates) for r in plain]
    recomputed = score_batch(tiny, with_soft)
    cached = score_batch(tiny, plain, shared=PrefixCache.compute(tiny, [soft]))
    for got, want in zip(cached, recomputed, strict=True):
        torch.testing.assert_close(got.logprobs, want.logprobs, atol=1e-4, rtol=0)
