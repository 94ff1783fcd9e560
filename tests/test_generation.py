import pytest

from frozenlm.backbone import Backbone
from frozenlm.generation import GenerationConfig, _cut_at_stop, generate


def test_cut_at_the_first_stop_string() -> None:
    assert _cut_at_stop("Paris\nQ: next", ["\n", "Q:"]) == ("Paris", True)
    assert _cut_at_stop("Paris", ["\n"]) == ("Paris", False)


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
