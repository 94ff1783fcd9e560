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
