"""The OpenAI-compatible routes, over real HTTP: greedy text and log-probabilities equal the
backbone's own, chat uses the chat template, bad requests get clear errors."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
import torch

from conftest import LocalServer
from frozenlm.backbone import Backbone
from frozenlm.engine.generation import GenerationConfig, generate


def post(server: LocalServer, route: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        server.url + route,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return dict(json.loads(reply.read()))


def test_completion_text_and_logprobs_equal_the_backbones(
    openai_server: LocalServer, tiny: Backbone
) -> None:
    prompt = "Review: a fine film\nLabel:"
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 3, "logprobs": 5, "stop": ["\n"]}
    answer = post(openai_server, "/completions", body)
    ids = list(tiny.tokenizer(prompt)["input_ids"])
    expected = generate(tiny, [[ids]], GenerationConfig(max_new_tokens=3, stop=("\n",)))[0]
    choice = answer["choices"][0]
    assert choice["text"] == expected
    with torch.no_grad():
        embeds = tiny.embed(torch.tensor([ids]))
        hidden = tiny.forward(embeds, torch.ones(1, len(ids)), torch.arange(len(ids))[None])
        logprobs = torch.log_softmax(tiny.lm_logits(hidden[0, -1]), dim=-1)
    top = logprobs.topk(5)
    served = choice["logprobs"]["top_logprobs"][0]
    assert len(served) == len({tiny.tokenizer.decode([int(i)]) for i in top.indices})
    for token_id, value in zip(top.indices.tolist(), top.values.tolist(), strict=True):
        assert served[tiny.tokenizer.decode([token_id])] == pytest.approx(value, abs=1e-4)
    assert answer["usage"]["prompt_tokens"] == len(ids)


def test_chat_completion_applies_the_chat_template(
    openai_server: LocalServer, tiny: Backbone
) -> None:
    messages = [{"role": "user", "content": "Is this good?"}]
    body = {"model": "tiny", "messages": messages, "max_tokens": 4, "logprobs": True}
    body["top_logprobs"] = 3
    answer = post(openai_server, "/chat/completions", body)
    text = tiny.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = list(tiny.tokenizer(text, add_special_tokens=False)["input_ids"])
    expected = generate(tiny, [[ids]], GenerationConfig(max_new_tokens=4, stop=()))[0]
    assert answer["choices"][0]["message"]["content"] == expected
    content = answer["choices"][0]["logprobs"]["content"]
    assert len(content[0]["top_logprobs"]) == 3
    assert content[0]["logprob"] == pytest.approx(content[0]["top_logprobs"][0]["logprob"])


def test_unknown_model_and_malformed_requests_are_refused(openai_server: LocalServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        post(openai_server, "/completions", {"model": "gpt-9", "prompt": "hi"})
    assert err.value.code == 404 and "model 'gpt-9' is not served here" in err.value.read().decode()
    with pytest.raises(urllib.error.HTTPError) as err:
        post(openai_server, "/completions", {"model": "tiny"})  # no prompt
    assert err.value.code == 422
    with pytest.raises(urllib.error.HTTPError) as err:
        post(openai_server, "/completions", {"model": "tiny", "prompt": "x " * 3000})
    assert err.value.code == 400 and "fit with max_tokens" in err.value.read().decode()


def refusal(server: LocalServer, route: str, body: dict[str, Any]) -> tuple[int, str]:
    """The status and body text of a request that must fail."""
    with pytest.raises(urllib.error.HTTPError) as err:
        post(server, route, body)
    return err.value.code, err.value.read().decode()


def test_empty_and_invalid_unicode_text_is_a_400_with_the_reason(
    openai_server: LocalServer,
) -> None:
    code, detail = refusal(openai_server, "/completions", {"model": "tiny", "prompt": ""})
    assert code == 400 and "prompt is empty" in detail
    code, detail = refusal(openai_server, "/completions", {"model": "tiny", "prompt": "a\ud800"})
    assert code == 400 and "prompt is not valid Unicode" in detail and "character 1" in detail
    message = {"role": "user", "content": "\ud800"}
    code, detail = refusal(
        openai_server, "/chat/completions", {"model": "tiny", "messages": [message]}
    )
    assert code == 400 and "messages[0].content is not valid Unicode" in detail
    body = {"model": "tiny", "prompt": "hi", "stop": ["\n", "\udfff"]}
    code, detail = refusal(openai_server, "/completions", body)
    assert code == 400 and "stop[1] is not valid Unicode" in detail


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("presence_penalty", 0.5, "presence_penalty is not supported"),
        ("frequency_penalty", -1.0, "frequency_penalty is not supported"),
        ("logit_bias", {"81": 5.0}, "logit_bias is not supported"),
        ("top_p", 0.5, "top_p is not supported"),
        ("stream_options", {"include_usage": True}, "stream_options needs stream"),
        ("echo", True, "echo is not supported"),
        ("best_of", 2, "best_of must be 1 or n"),
    ],
)
def test_fields_that_would_change_the_answer_are_refused(
    openai_server: LocalServer, field: str, value: Any, reason: str
) -> None:
    if field not in ("echo", "best_of"):  # chat has neither
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], field: value}
        code, detail = refusal(openai_server, "/chat/completions", body)
        assert code == 400 and reason in detail
    code, detail = refusal(
        openai_server, "/completions", {"model": "tiny", "prompt": "hi", field: value}
    )
    assert code == 400 and reason in detail


def test_fields_that_cannot_change_the_answer_are_accepted_and_unknown_ones_refused(
    openai_server: LocalServer,
) -> None:
    plain = {"model": "tiny", "prompt": "Review: fine\nLabel:", "max_tokens": 3}
    expected = post(openai_server, "/completions", plain)["choices"][0]["text"]
    neutral = {"temperature": 0, "n": 1, "stream": False, "presence_penalty": 0, "logit_bias": {}}
    ignored = {"top_p": 1.0, "seed": 7, "user": "someone", "best_of": 1}
    answer = post(openai_server, "/completions", plain | neutral | ignored)
    assert answer["choices"][0]["text"] == expected and len(answer["choices"]) == 1
    code, detail = refusal(openai_server, "/completions", plain | {"tools": []})
    assert code == 422 and "tools" in detail and "Extra inputs are not permitted" in detail


def test_n_sampled_choices_are_reproducible_by_seed_and_greedy_ones_agree(
    openai_server: LocalServer,
) -> None:
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 4, "n": 3}
    greedy = post(openai_server, "/completions", body)["choices"]
    assert len(greedy) == 3 and len({c["text"] for c in greedy}) == 1
    sampled = body | {"temperature": 1.5, "seed": 11}
    first = [c["text"] for c in post(openai_server, "/completions", sampled)["choices"]]
    again = [c["text"] for c in post(openai_server, "/completions", sampled)["choices"]]
    assert first == again and len(set(first)) > 1  # each choice its own draw
    usage = post(openai_server, "/completions", sampled)["usage"]
    assert usage["completion_tokens"] <= 12


def test_chat_honours_max_completion_tokens(openai_server: LocalServer) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}]}
    by_old_name = post(openai_server, "/chat/completions", body | {"max_tokens": 2})
    by_new_name = post(openai_server, "/chat/completions", body | {"max_completion_tokens": 2})
    assert by_new_name["choices"][0]["message"] == by_old_name["choices"][0]["message"]
    assert by_new_name["usage"] == by_old_name["usage"]
    assert by_new_name["usage"]["completion_tokens"] <= 2
    both = body | {"max_tokens": 3, "max_completion_tokens": 2}
    code, detail = refusal(openai_server, "/chat/completions", both)
    assert code == 400 and "disagree" in detail
    code, detail = refusal(openai_server, "/chat/completions", body | {"top_logprobs": 2})
    assert code == 400 and "top_logprobs needs logprobs" in detail


def test_a_prompt_longer_than_the_context_names_the_limit(
    openai_server: LocalServer, tiny: Backbone
) -> None:
    body = {"model": "tiny", "prompt": "x " * 3000, "max_tokens": 1}
    code, detail = refusal(openai_server, "/completions", body)
    assert code == 400 and f"the model's {tiny.max_length}-token context" in detail
    assert f"at most {tiny.max_length - 1} fit" in detail
