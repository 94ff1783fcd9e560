import pytest
import torch

from frozenlm.backbone import Backbone
from frozenlm.engine.batching import (
    BatchBudget,
    Row,
    generate_rows,
    lay_out,
    score_rows,
    token_budget_batches,
)
from frozenlm.engine.generation import GenerationConfig, generate
from frozenlm.engine.prefix_cache import PrefixCache
from frozenlm.engine.scoring import ScoreRequest, score_batch

SHARED_TEXT = "You are a careful classifier. Answer with yes or no.\n\n"
INPUTS = ["Is the sky blue?", "Do fish fly over mountains at night?", "Two plus two?"]
CANDIDATES = [[[1, 2], [3]], [[4], [5, 6, 7]], [[8], [9]]]


def _ids(backbone: Backbone, text: str) -> list[int]:
    return list(backbone.tokenizer(text, add_special_tokens=False)["input_ids"])


def _rows(backbone: Backbone, soft: torch.Tensor | None = None) -> list[Row]:
    return [Row(_ids(backbone, SHARED_TEXT + q + "\nAnswer:"), soft) for q in INPUTS]


def _alone(backbone: Backbone, rows: list[Row]) -> list[torch.Tensor]:
    """Each row scored by itself, its whole prefix in one plain forward: the reference."""
    out = []
    for row, cands in zip(rows, CANDIDATES, strict=True):
        out.append(score_batch(backbone, [ScoreRequest(row.pieces(), cands)])[0].logprobs)
    return out


def test_a_padding_cap_keeps_short_rows_out_of_long_rows_batches() -> None:
    lengths = [10, 12, 11, 100, 98, 13]
    assert len(token_budget_batches(lengths, max_tokens=10_000, max_rows=8)) == 1
    capped = token_budget_batches(lengths, max_tokens=10_000, max_rows=8, max_padding=0.25)
    assert sorted(sorted(b) for b in capped) == [[0, 1, 2, 5], [3, 4]]
    for batch in capped:
        padded = max(lengths[i] for i in batch) * len(batch)
        assert padded - sum(lengths[i] for i in batch) <= 0.25 * padded


def test_token_budget_batches_respect_limits() -> None:
    lengths = [5, 50, 7, 48, 6, 49]
    batches = token_budget_batches(lengths, max_tokens=100, max_rows=3)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for batch in batches:
        assert len(batch) <= 3
        assert max(lengths[i] for i in batch) * len(batch) <= 100


def test_the_shared_prompt_and_text_are_laid_out_once(tiny: Backbone) -> None:
    prompt = torch.randn(4, tiny.hidden_size, generator=torch.Generator().manual_seed(0))
    rows = _rows(tiny, prompt)
    layout = lay_out(tiny, rows)
    common = len(_ids(tiny, SHARED_TEXT)) - 1  # the last token may merge with the input's
    assert layout.shared is not None and layout.kv is None
    assert layout.shared.length >= 4 + common
    # each row keeps only its own ids: no soft tokens, none of the shared text
    for row, pieces in zip(rows, layout.pieces, strict=True):
        assert len(pieces) == 1 and not isinstance(pieces[0], torch.Tensor)
        assert list(pieces[0]) == list(row.ids[layout.shared.length - 4 :])


def test_rows_with_their_own_soft_tokens_share_no_text(tiny: Backbone) -> None:
    g = torch.Generator().manual_seed(1)
    rows = [Row(r.ids, torch.randn(3, tiny.hidden_size, generator=g)) for r in _rows(tiny)]
    layout = lay_out(tiny, rows)
    assert layout.shared is None
    assert all(isinstance(p[0], torch.Tensor) for p in layout.pieces)


@pytest.mark.parametrize("conditioning", ["none", "shared-soft", "own-soft"])
def test_scores_in_batches_equal_each_row_alone(tiny: Backbone, conditioning: str) -> None:
    g = torch.Generator().manual_seed(2)
    prompt = torch.randn(4, tiny.hidden_size, generator=g)
    rows = _rows(tiny, prompt if conditioning == "shared-soft" else None)
    if conditioning == "own-soft":
        rows = [
            Row(r.ids, torch.randn(i + 1, tiny.hidden_size, generator=g))
            for i, r in enumerate(rows)
        ]
    scores = score_rows(tiny, rows, CANDIDATES, BatchBudget(tokens=4096, rows=2))
    for got, want in zip(scores, _alone(tiny, rows), strict=True):
        torch.testing.assert_close(got.logprobs, want, atol=1e-4, rtol=0)


def test_rows_behind_different_key_value_prefixes_share_a_batch(tiny: Backbone) -> None:
    """Per-row key/value prefixes of different lengths (what a deep prompt gives), stacked in one
    batch, score as the same prefix text followed by the row in one plain forward."""
    texts = ["Task: sentiment.\n", "Task: topic of a long news article, five labels.\n", "Q:"]
    prefixes = [PrefixCache.compute(tiny, [_ids(tiny, t)]) for t in texts]
    rows = [Row(_ids(tiny, q), kv=kv) for q, kv in zip(INPUTS, prefixes, strict=True)]
    layout = lay_out(tiny, rows)
    assert layout.shared is None and layout.kv is not None
    scores = score_rows(tiny, rows, CANDIDATES, BatchBudget(tokens=4096, rows=3))
    for text, q, cands, got in zip(texts, INPUTS, CANDIDATES, scores, strict=True):
        whole = [_ids(tiny, text) + _ids(tiny, q)]
        want = score_batch(tiny, [ScoreRequest(whole, cands)])[0].logprobs
        torch.testing.assert_close(got.logprobs, want, atol=1e-4, rtol=0)


def test_a_shared_key_value_prefix_and_shared_text_build_on_each_other(tiny: Backbone) -> None:
    kv = PrefixCache.compute(tiny, [_ids(tiny, "System: be brief.\n")])
    rows = [Row(r.ids, kv=kv) for r in _rows(tiny)]
    scores = score_rows(tiny, rows, CANDIDATES)
    for row, cands, got in zip(rows, CANDIDATES, scores, strict=True):
        whole = [_ids(tiny, "System: be brief.\n") + list(row.ids)]
        want = score_batch(tiny, [ScoreRequest(whole, cands)])[0].logprobs
        torch.testing.assert_close(got.logprobs, want, atol=1e-4, rtol=0)


def test_rows_without_a_prefix_join_rows_with_one(tiny: Backbone) -> None:
    """A deep prompt's rows, a soft prompt's rows and plain rows in one batch score as each
    alone (rows without a key/value prefix get an empty one, masked)."""
    kv = PrefixCache.compute(tiny, [_ids(tiny, "System: be brief.\n")])
    prompt = torch.randn(3, tiny.hidden_size, generator=torch.Generator().manual_seed(5))
    plain = _rows(tiny)
    rows = [Row(plain[0].ids, kv=kv), Row(plain[1].ids, prompt, soft_at=2), Row(plain[2].ids)]
    layout = lay_out(tiny, rows)
    assert layout.kv is not None and [p.length for p in layout.kv] == [kv.length, 0, 0]
    scores = score_rows(tiny, rows, CANDIDATES, BatchBudget(tokens=4096, rows=3))
    want = [
        score_batch(
            tiny,
            [ScoreRequest([_ids(tiny, "System: be brief.\n") + list(plain[0].ids)], CANDIDATES[0])],
        ),
        score_batch(tiny, [ScoreRequest(rows[1].pieces(), CANDIDATES[1])]),
        score_batch(tiny, [ScoreRequest([plain[2].ids], CANDIDATES[2])]),
    ]
    for got, (alone,) in zip(scores, want, strict=True):
        torch.testing.assert_close(got.logprobs, alone.logprobs, atol=1e-4, rtol=0)


@pytest.mark.parametrize("at", [1, 5])
def test_soft_tokens_inside_the_prompt_are_shared_with_the_text_before_them(
    tiny: Backbone, at: int
) -> None:
    """Soft tokens after the first `at` ids of every row: that text and the soft tokens are run
    once, and the scores equal each row's [ids before | soft | ids after] in one forward."""
    prompt = torch.randn(4, tiny.hidden_size, generator=torch.Generator().manual_seed(6))
    rows = [Row(r.ids, prompt, soft_at=at) for r in _rows(tiny)]
    layout = lay_out(tiny, rows)
    assert layout.shared is not None and layout.shared.length >= at + 4
    assert all(not isinstance(p[0], torch.Tensor) for p in layout.pieces)
    scores = score_rows(tiny, rows, CANDIDATES, BatchBudget(tokens=4096, rows=2))
    for got, want in zip(scores, _alone(tiny, rows), strict=True):
        torch.testing.assert_close(got.logprobs, want, atol=1e-4, rtol=0)


def test_a_row_refuses_soft_tokens_outside_it() -> None:
    with pytest.raises(ValueError, match="outside a row"):
        Row([1, 2], torch.zeros(1, 4), soft_at=3)


def test_generation_in_batches_equals_each_row_alone(tiny: Backbone) -> None:
    prompt = torch.randn(4, tiny.hidden_size, generator=torch.Generator().manual_seed(3))
    rows = _rows(tiny, prompt)
    config = GenerationConfig(max_new_tokens=6, stop=())
    batched = generate_rows(tiny, rows, config, BatchBudget(rows=2))
    alone = [generate(tiny, [[prompt, row.ids]], config)[0] for row in rows]
    assert batched == alone


def test_text_before_rows_own_soft_tokens_is_shared_with_the_same_scores(tiny: Backbone) -> None:
    g = torch.Generator().manual_seed(5)
    head = _ids(tiny, "Classify the sentiment of the review that follows, please.\n")
    rows = [
        Row(
            head + _ids(tiny, q),
            torch.randn(i + 2, tiny.hidden_size, generator=g),
            soft_at=len(head),
        )
        for i, q in enumerate(INPUTS)
    ]
    layout = lay_out(tiny, rows)
    assert layout.shared is not None and layout.shared.length == len(head)
    assert all(isinstance(p[0], torch.Tensor) for p in layout.pieces)  # each row's own tokens first
    scores = score_rows(tiny, rows, CANDIDATES, BatchBudget(tokens=4096, rows=2))
    for got, want in zip(scores, _alone(tiny, rows), strict=True):
        torch.testing.assert_close(got.logprobs, want, atol=1e-4, rtol=0)
    alone = lay_out(tiny, rows, share_text=False)
    assert alone.shared is None  # what the first pass asks for: nothing shared between inputs
