import pytest
import torch

from frozenlm.backbone import Backbone
from frozenlm.engine.generation import GenerationConfig, cut_at_stop, generate, generate_detailed


def test_cut_at_the_first_stop_string() -> None:
    assert cut_at_stop("Paris\nQ: next", ["\n", "Q:"]) == ("Paris", True)
    assert cut_at_stop("Paris", ["\n"]) == ("Paris", False)


def test_cached_decoding_equals_recomputing(tiny: Backbone) -> None:
    tok = tiny.tokenizer
    prefixes = [
        [tok.encode(t, add_special_tokens=False)]
        for t in ["Hello there", "A much longer prompt to pad"]
    ]
    cached = generate(tiny, prefixes, GenerationConfig(max_new_tokens=12, stop=()))
    uncached = generate(
        tiny, prefixes, GenerationConfig(max_new_tokens=12, stop=(), use_cache=False)
    )
    assert cached == uncached
    assert all(len(tok.encode(text, add_special_tokens=False)) <= 13 for text in cached)


def test_token_logprobs_equal_the_full_sequence_scores(tiny: Backbone) -> None:
    ids = tiny.tokenizer.encode("Hello there, friend", add_special_tokens=False)
    config = GenerationConfig(max_new_tokens=5, stop=(), top_logprobs=3)
    (out,) = generate_detailed(tiny, [[ids]], config)
    assert len(out.tokens) == len(out.logprobs) == len(out.top) == 5
    full = torch.tensor([ids + out.tokens])  # [1, T]
    with torch.no_grad():
        hidden = tiny.forward(
            tiny.embed(full), torch.ones_like(full), torch.arange(full.shape[1])[None]
        )
        logprobs = torch.log_softmax(tiny.lm_logits(hidden[0]), dim=-1)  # [T, V]
    for step, token in enumerate(out.tokens):
        expected = logprobs[len(ids) - 1 + step]
        assert out.logprobs[step] == pytest.approx(float(expected[token]), abs=1e-4)
        assert out.top[step][0][0] == token  # greedy: the chosen token is the most likely
        assert [t for t, _ in out.top[step]] == expected.topk(3).indices.tolist()


@pytest.mark.slow
def test_embedded_model_answers_a_simple_question(embedded: Backbone) -> None:
    tok = embedded.tokenizer
    text = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    out = generate(
        embedded,
        [[tok.encode(text, add_special_tokens=False)]],
        GenerationConfig(max_new_tokens=16),
    )
    assert "Paris" in out[0]


def test_sampling_is_seeded_and_greedy_at_temperature_zero(tiny: Backbone) -> None:
    from frozenlm.engine.generation import GenerationConfig, generate_detailed

    rows = [[[5, 6, 7]], [[8, 9]]]
    greedy = generate_detailed(tiny, rows, GenerationConfig(max_new_tokens=6, stop=()))
    hot = GenerationConfig(max_new_tokens=6, stop=(), temperature=5.0, seed=3)
    first = generate_detailed(tiny, rows, hot)
    assert [g.tokens for g in first] == [g.tokens for g in generate_detailed(tiny, rows, hot)]
    assert [g.tokens for g in first] != [g.tokens for g in greedy]
    cold = GenerationConfig(max_new_tokens=6, stop=(), temperature=0.0)
    assert [g.tokens for g in generate_detailed(tiny, rows, cold)] == [g.tokens for g in greedy]
