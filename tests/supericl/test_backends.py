"""Backends: label matching of generated answers, and the HTTP client against real servers
(the tiny backbone behind the OpenAI-compatible routes; stdlib servers that fail on purpose)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from conftest import LocalServer
from frozenlm.supericl.backends import (
    BackendError,
    OpenAIBackend,
    OpenAIConfig,
    _match_label,
    first_paragraph,
)

VERBS = {"pos": "positive", "neg": "negative", "neu": "neutral"}


def test_first_token_logprobs_pick_the_label_when_a_token_starts_one_verbalizer() -> None:
    choice = _match_label("positive", {" positive": -0.2, " negative": -1.9, "n": -0.1}, VERBS)
    assert choice.label == "pos"  # "n" starts two verbalizers: ignored
    assert choice.scores == [-0.2, -1.9, float("-inf")]
    assert _match_label("x", {"Neg": -3.0, "zzz": -0.1}, VERBS).label == "neg"


def test_without_logprobs_the_answer_text_is_matched() -> None:
    assert _match_label(" Negative.", {}, VERBS).label == "neg"
    assert _match_label("I think it is neutral", {}, VERBS).label == "neu"
    assert _match_label("no idea", {}, VERBS).label is None


def _backend(server: LocalServer, tmp_path: Path, api: str = "completions") -> OpenAIBackend:
    config = OpenAIConfig(server.url, "tiny", api=api, cache=tmp_path / "cache")  # type: ignore[arg-type]
    return OpenAIBackend(config)


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_a_rerun_is_served_from_the_cache(
    openai_server: LocalServer, tmp_path: Path, api: str
) -> None:
    first = _backend(openai_server, tmp_path, api)
    before = len(openai_server.requests)
    text, top = first._complete("Review: fine\nLabel:", 3, stop=["\n"])
    assert first.calls == 1 and len(openai_server.requests) == before + 1
    assert len(top) == 5
    again = _backend(openai_server, tmp_path, api)
    assert again._complete("Review: fine\nLabel:", 3, stop=["\n"]) == (text, top)
    assert again.calls == 0 and again.cache_hits == 1
    assert len(openai_server.requests) == before + 1


class _Failing(BaseHTTPRequestHandler):
    """503 always, or 400 when log-probabilities are asked for (then a proper completion)."""

    hits: ClassVar[list[dict]] = []
    mode = "503"

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).hits.append(body)
        if self.mode == "503":
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"overloaded")
            return
        if "logprobs" in body:
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b'{"error": "logprobs are not supported"}')
            return
        reply = json.dumps({"choices": [{"text": " negative", "index": 0}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def failing() -> Iterator[tuple[str, type[_Failing]]]:
    handler = type("Handler", (_Failing,), {"hits": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    server.shutdown()


def test_server_errors_are_retried_then_reported(
    failing: tuple[str, type[_Failing]], tmp_path: Path
) -> None:
    url, handler = failing
    backend = OpenAIBackend(OpenAIConfig(url, "m", retries=2, cache=None))
    with pytest.raises(BackendError, match="answered HTTP 503: overloaded"):
        backend._complete("x", 2, stop=["\n"])
    assert len(handler.hits) == 3  # one try and two retries


def test_an_endpoint_without_logprobs_falls_back_to_the_answer_text(
    failing: tuple[str, type[_Failing]], tmp_path: Path
) -> None:
    url, handler = failing
    handler.mode = "400"
    backend = OpenAIBackend(OpenAIConfig(url, "m", cache=tmp_path / "c"))
    text, top = backend._complete("x", 2, stop=["\n"])
    assert (text, top) == (" negative", {})
    assert not backend.logprobs and "logprobs" not in handler.hits[-1]
    assert _match_label(text, top, VERBS).label == "neg"


def test_an_unreachable_endpoint_names_itself_after_the_retries(tmp_path: Path) -> None:
    backend = OpenAIBackend(
        OpenAIConfig("http://127.0.0.1:9/v1", "m", retries=1, timeout=2, cache=None)
    )
    with pytest.raises(BackendError, match=r"127\.0\.0\.1:9/v1/completions did not answer after 2"):
        backend._complete("x", 2, stop=["\n"])


def test_an_explanation_is_its_first_non_empty_paragraph() -> None:
    assert first_paragraph("\n\n Because the question asks for a person.\n\nLabel: x") == (
        "Because the question asks for a person."
    )
    assert first_paragraph("\n \n") == ""
