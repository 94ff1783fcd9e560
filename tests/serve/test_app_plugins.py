"""`frozenlm serve` with trained plug-ins over real HTTP: answers equal `frozenlm eval`'s, rows of
different plug-ins share forwards, the official `openai` client works unchanged, plug-ins load
and unload at run time only from under the plug-in root."""

from __future__ import annotations

import json
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import running
from frozenlm.backbone import Backbone
from frozenlm.codec import to_json
from frozenlm.evaluation.evaluate import EvalConfig
from frozenlm.evaluation.saved import evaluate_saved
from frozenlm.plugins.prompt_generator import PromptGeneratorConfig
from frozenlm.plugins.soft_prompt import SoftPromptConfig
from frozenlm.serve.app import ServeConfig, create_app
from frozenlm.tasks import load_task
from frozenlm.training.config import TrainConfig
from frozenlm.training.loop import train_plugin

ADMIN = "s3cret-admin"


@dataclass
class Served:
    url: str
    root: Path
    app: Any


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, tiny: Backbone) -> Path:
    """Plug-ins trained for two steps on the tiny backbone: a soft prompt for sentiment, an
    ID-PT generator for trec, a soft prompt for trivia (generation)."""
    folder = tmp_path_factory.mktemp("plugins")
    config = TrainConfig(steps=2, batch_size=4, eval_every=2, eval_limit=4)
    soft = to_json(SoftPromptConfig(length=4))
    train_plugin(tiny, ["sentiment"], "soft-prompt", soft, config, folder / "sent")
    small = to_json(PromptGeneratorConfig(length=3, width=32, heads=2, ffn=64))
    train_plugin(tiny, ["trec"], "id-pt", small, config, folder / "trec")
    train_plugin(tiny, ["trivia"], "soft-prompt", soft, config, folder / "trivia")
    return folder


@pytest.fixture(scope="module")
def served(root: Path, tiny: Backbone) -> Iterator[Served]:
    plugins = [root / "sent", root / "trec", root / "trivia"]
    config = ServeConfig(admin_token=ADMIN)
    app = create_app(tiny, "tiny", plugins=plugins, plugin_root=root, config=config)
    with running(app) as url:
        yield Served(url, root, app)


def call(url: str, method: str = "GET", body: Any = None, **headers: str) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    for name, value in headers.items():
        request.add_header(name.replace("_", "-"), value)
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_models_lists_the_backbone_and_every_plugin_with_its_task(served: Served) -> None:
    code, listed = call(served.url + "/v1/models")
    assert code == 200
    by_id = {m["id"]: m for m in listed["data"]}
    assert set(by_id) == {"tiny", "sent", "trec", "trivia"}
    assert by_id["sent"]["kind"] == "soft-prompt" and by_id["trec"]["kind"] == "id-pt"
    assert by_id["sent"]["task"]["labels"] == list(load_task("sentiment").spec.labels)
    assert by_id["trivia"]["task"]["kind"] == "generation"


def test_classify_equals_evaluation_with_rows_of_two_plugins_in_flight(
    served: Served, tiny: Backbone
) -> None:
    n = 6
    results: dict[str, Any] = {}

    def ask(model: str, task: str) -> None:
        loaded = load_task(task)
        (field,) = loaded.spec.input_fields
        inputs = [ex.fields[field] for ex in loaded.test[:n]]
        results[model] = call(
            served.url + "/v1/classify", "POST", {"model": model, "input": inputs}
        )

    threads = [
        threading.Thread(target=ask, args=args)
        for args in (("sent", "sentiment"), ("trec", "trec"))
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for model in ("sent", "trec"):
        code, answer = results[model]
        assert code == 200, answer
        report = evaluate_saved(tiny, served.root / model, limit=n).reports[0]
        for got, want in zip(answer["data"], report.predictions, strict=True):
            assert got["label"] == want["predicted"]
            scores = [got["logprobs"][label] for label in report.confusion["labels"]]  # type: ignore[index]
            torch.testing.assert_close(
                torch.tensor(scores), torch.tensor(want["scores"]), atol=2e-4, rtol=0
            )
            assert sum(got["probabilities"].values()) == pytest.approx(1.0)


def test_generation_by_a_plugin_equals_evaluation(served: Served, tiny: Backbone) -> None:
    n = 3
    report = evaluate_saved(tiny, served.root / "trivia", limit=n).reports[0]
    for example, want in zip(load_task("trivia").test[:n], report.predictions, strict=True):
        body = {"model": "trivia", "prompt": example.fields["question"]}
        body["max_tokens"] = EvalConfig.max_new_tokens
        code, answer = call(served.url + "/v1/completions", "POST", body)
        assert code == 200, answer
        assert answer["choices"][0]["text"] == want["generated"]


def test_the_official_openai_client_works_unchanged(served: Served) -> None:
    import openai

    client = openai.OpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0)
    assert {m.id for m in client.models.list()} >= {"tiny", "sent"}
    made = client.completions.create(model="trivia", prompt="Who wrote Hamlet?", max_tokens=5)
    streamed = client.completions.create(
        model="trivia", prompt="Who wrote Hamlet?", max_tokens=5, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == made.choices[0].text
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=4
    )
    pieces = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello"}], max_tokens=4, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(pieces)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens <= 4
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.completions.create(model="gpt-9", prompt="hi")
    with pytest.raises(openai.BadRequestError, match="one user message"):
        client.chat.completions.create(
            model="trivia", messages=[{"role": "system", "content": "x"}], max_tokens=2
        )


def test_plugins_load_and_unload_at_run_time_only_from_under_the_root(
    served: Served, tmp_path: Path
) -> None:
    admin = served.url + "/admin/plugins"
    shutil.copytree(served.root / "sent", served.root / "copy")
    code, made = call(admin, "POST", {"path": "copy/best", "name": "sent2"}, X_Admin_Token=ADMIN)
    assert code == 200 and made["data"][0]["id"] == "sent2"
    code, answer = call(served.url + "/v1/classify", "POST", {"model": "sent2", "input": "great"})
    assert code == 200 and answer["data"][0]["label"] in load_task("sentiment").spec.labels
    assert call(admin, "POST", {"path": "copy", "name": "sent2"}, X_Admin_Token=ADMIN)[0] == 409

    outside = tmp_path / "elsewhere"
    shutil.copytree(served.root / "sent", outside)
    (served.root / "link").symlink_to(outside)
    for path, status in (("../", 403), ("link", 403), (str(outside), 400), ("missing", 404)):
        code, refused = call(admin, "POST", {"path": path}, X_Admin_Token=ADMIN)
        assert code == status, (path, refused)
    shutil.copytree(served.root / "sent", served.root / "broken")
    weights = next((served.root / "broken").rglob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:40])  # truncated
    code, refused = call(admin, "POST", {"path": "broken"}, X_Admin_Token=ADMIN)
    assert code == 400 and refused["error"]["message"]

    assert call(admin, "POST", {"path": "copy"}, X_Admin_Token="wrong")[0] == 401
    assert call(admin)[0] == 401  # no token
    code, gone = call(admin + "/sent2", "DELETE", X_Admin_Token=ADMIN)
    assert code == 200 and gone["unloaded"] == ["sent2"]
    code, answer = call(served.url + "/v1/classify", "POST", {"model": "sent2", "input": "great"})
    assert code == 404


def test_bad_plugin_requests_get_a_4xx_with_the_reason(served: Served, tiny: Backbone) -> None:
    url = served.url
    code, answer = call(url + "/v1/classify", "POST", {"model": "trivia", "input": "x"})
    assert code == 400 and "not a classification plug-in" in answer["error"]["message"]
    code, answer = call(url + "/v1/classify", "POST", {"model": "sent", "input": {"txt": "x"}})
    assert code == 400 and "lacks text" in answer["error"]["message"]
    long = "word " * (tiny.max_length + 10)
    code, answer = call(url + "/v1/classify", "POST", {"model": "sent", "input": long})
    assert code == 400 and "does not fit" in answer["error"]["message"]
    code, answer = call(url + "/v1/classify", "POST", {"model": "sent", "input": []})
    assert code == 400


def test_admin_is_off_without_a_token_and_an_api_key_guards_every_route(
    root: Path, tiny: Backbone
) -> None:
    app = create_app(
        tiny, "tiny", plugins=[root / "sent"], config=ServeConfig(api_key="k1", max_body_bytes=4000)
    )
    with running(app) as url:
        for path in ("/health", "/metrics", "/v1/models", "/openapi.json", "/docs"):
            assert call(url + path)[0] == 401, path
        code, _ = call(url + "/v1/classify", "POST", {"model": "sent", "input": "x"})
        assert code == 401
        code, health = call(url + "/health", Authorization="Bearer k1")
        assert code == 200 and health["status"] == "ok"
        assert call(url + "/admin/plugins", Authorization="Bearer k1")[0] == 404
        code, _ = call(url + "/v1/classify", "POST", {"model": "sent", "input": "x" * 5000},
                       Authorization="Bearer k1")  # fmt: skip
        assert code == 413


def test_metrics_count_requests_batches_and_tokens(served: Served) -> None:
    call(served.url + "/v1/completions", "POST", {"model": "tiny", "prompt": "Hi", "max_tokens": 2})
    with urllib.request.urlopen(served.url + "/metrics", timeout=30) as reply:
        text = reply.read().decode()
    assert 'frozenlm_requests_total{model="tiny",route="/v1/completions",status="200"}' in text
    assert 'frozenlm_batch_rows_count{kind="decode"}' in text
    assert 'frozenlm_generated_tokens_total{model="tiny"}' in text
    assert "frozenlm_tokens_per_second" in text and "frozenlm_queue_depth" in text
