"""`frozenlm serve` under faults: every kind of plug-in served as evaluation answers, a full queue
answered 429 with Retry-After, a request past its timeout 504, a client that leaves mid-stream
stops its rows, SIGTERM lets requests in flight finish."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import httpx2 as httpx
import pytest
import torch

from conftest import running
from frozenlm.backbone import Backbone
from frozenlm.codec import to_json
from frozenlm.evaluation.evaluate import EvalConfig
from frozenlm.evaluation.saved import evaluate_saved
from frozenlm.plugins.prefix import PrefixConfig
from frozenlm.serve.app import ServeConfig, create_app
from frozenlm.serve.batcher import BatcherConfig
from frozenlm.tasks import load_task
from frozenlm.training.config import TrainConfig
from frozenlm.training.loop import train_plugin

QUICK = TrainConfig(steps=2, batch_size=4, eval_every=2, eval_limit=4, optimizer="adamw", lr=1e-2)
CONNECTOR = {"tokens": 3, "prompt_length": 2, "width": 16, "heads": 2, "ffn": 32}


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory, tiny: Backbone) -> Path:
    """A deep prompt for sentiment and a connector (recursive LM) for trivia."""
    os.environ["FROZENLM_PASS1_CACHE"] = "off"
    folder = tmp_path_factory.mktemp("kinds")
    prefix = to_json(PrefixConfig(length=3))
    train_plugin(tiny, ["sentiment"], "prefix", prefix, QUICK, folder / "deep")
    train_plugin(tiny, ["trivia"], "recursion", CONNECTOR, QUICK, folder / "rec")
    return folder


def post(url: str, body: dict) -> tuple[int, dict, dict]:
    reply = httpx.post(url, json=body, timeout=60)
    return reply.status_code, reply.json(), dict(reply.headers)


def test_a_deep_prompt_and_a_connector_are_served_as_evaluated(kinds: Path, tiny: Backbone) -> None:
    app = create_app(tiny, "tiny", plugins=[kinds / "deep", kinds / "rec"])
    n = 3
    with running(app) as url:
        report = evaluate_saved(tiny, kinds / "deep", limit=n).reports[0]
        texts = [ex.fields["text"] for ex in load_task("sentiment").test[:n]]
        code, answer, _ = post(url + "/v1/classify", {"model": "deep", "input": texts})
        assert code == 200, answer
        for got, want in zip(answer["data"], report.predictions, strict=True):
            scores = torch.tensor([got["logprobs"][k] for k in report.confusion["labels"]])  # type: ignore[index]
            torch.testing.assert_close(scores, torch.tensor(want["scores"]), atol=2e-4, rtol=0)
        report = evaluate_saved(tiny, kinds / "rec", limit=n).reports[0]
        for example, want in zip(load_task("trivia").test[:n], report.predictions, strict=True):
            body = {"model": "rec", "prompt": example.fields["question"]}
            code, answer, _ = post(
                url + "/v1/completions", body | {"max_tokens": EvalConfig.max_new_tokens}
            )
            assert code == 200 and answer["choices"][0]["text"] == want["generated"]


def test_a_full_queue_is_429_with_retry_after_and_a_stuck_request_504(tiny: Backbone) -> None:
    config = ServeConfig(request_timeout=1.0, batcher=BatcherConfig(max_queue=1))
    app = create_app(tiny, "tiny", config=config)
    app.state.batcher.start = lambda: None  # the worker never runs: requests only wait
    body = {"model": "tiny", "prompt": "hello", "max_tokens": 2}
    with running(app) as url:
        results: list[tuple[int, dict, dict]] = []
        first = threading.Thread(target=lambda: results.append(post(url + "/v1/completions", body)))
        first.start()
        time.sleep(0.3)
        code, answer, headers = post(url + "/v1/completions", body)
        assert code == 429 and headers["retry-after"] == "1"
        assert "queue is full" in answer["error"]["message"]
        first.join()
        assert results[0][0] == 504 and "no answer within 1 s" in results[0][1]["error"]["message"]


def test_a_client_that_leaves_mid_stream_stops_its_rows(tiny: Backbone) -> None:
    app = create_app(tiny, "tiny")
    body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 1000, "stream": True}
    with running(app) as url:
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as reply:
            for line in reply.iter_lines():
                if line.startswith("data:"):
                    break  # one chunk arrived: the row is decoding; now hang up
        batcher = app.state.batcher
        deadline = time.monotonic() + 20
        while batcher._running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not batcher._running and not batcher._slots
        text = httpx.get(url + "/metrics").text
        generated = [
            s for s in text.splitlines() if s.startswith("frozenlm_generated_tokens_total")
        ]
        assert generated and float(generated[0].split()[-1]) < 1000


def test_sigterm_lets_a_request_in_flight_finish(tmp_path: Path) -> None:
    port = 18000 + os.getpid() % 1000
    env = os.environ | {"FROZENLM_SERVE_PORT": str(port), "FROZENLM_SERVE_BACKBONE": "tiny"}
    server = subprocess.Popen(
        [sys.executable, "-m", "frozenlm", "--no-record", "serve"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        body = {"model": "tiny-random-llama-s0", "prompt": "Once", "max_tokens": 400, "stop": []}
        body["model"] = json.loads(urllib.request.urlopen(url + "/v1/models").read())["data"][0][
            "id"
        ]
        done: list[tuple[int, dict, dict]] = []
        flight = threading.Thread(target=lambda: done.append(post(url + "/v1/completions", body)))
        flight.start()
        time.sleep(0.5)
        server.send_signal(signal.SIGTERM)
        flight.join(timeout=60)
        assert done and done[0][0] == 200 and done[0][1]["usage"]["completion_tokens"] > 0
        # uvicorn re-raises the signal once it has shut down gracefully: ended by SIGTERM
        assert server.wait(timeout=60) in (0, -signal.SIGTERM)
        assert b"Traceback" not in server.stderr.read()
    finally:
        if server.poll() is None:
            server.kill()
