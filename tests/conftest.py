"""Shared fixtures: the embedded tokenizer, the tiny random backbone, the real embedded backbone."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from frozenlm.backbone import Backbone, load_tokenizer
from frozenlm.qa.data import QATask, load_qa_files

# Property tests: a fixed seed in CI (the same examples every run), fresh ones on a laptop.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny() -> Backbone:
    """Tiny random-weight Llama (2 layers, hidden 64) with the embedded tokenizer."""
    return Backbone.load("tiny")


@pytest.fixture(scope="session")
def embedded() -> Backbone:
    """The real embedded SmolLM2-135M-Instruct (use in tests marked slow)."""
    return Backbone.load()


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run records of CLI calls in tests go to a temporary folder, never into ./runs."""
    monkeypatch.setenv("FROZENLM_RUNS", str(tmp_path_factory.mktemp("records")))


def write_toy_task(folder: Path, n: int = 40) -> Path:
    """A task file of `n` examples, "item i is good/bad" -> yes/no: training on it takes a
    second, not ten as on sentiment. Returns the task file's path."""
    rows = [
        {"text": f"item {i} is {'good' if i % 2 else 'bad'}", "label": "pos" if i % 2 else "neg"}
        for i in range(n)
    ]
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {
        "name": "toy",
        "data": "data.jsonl",
        "input_fields": ["text"],
        "label_field": "label",
        "labels": {"pos": "yes", "neg": "no"},
        "instruction": "Is the item good?",
    }
    (folder / "task.json").write_text(json.dumps(task))
    return folder / "task.json"


@dataclass
class LocalServer:
    """An OpenAI-compatible server over the tiny backbone, running in a thread."""

    url: str
    """Base URL up to /v1."""
    requests: list[str]
    """Paths of the requests it received, in order."""


@contextmanager
def running(app: Any) -> Iterator[str]:
    """A real HTTP server (uvicorn) for `app` on a free localhost port, in a thread; its base
    URL (no path). Stopped on exit the way SIGTERM stops it (requests in flight finish)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="session")
def openai_server(tiny: Backbone) -> Iterator[LocalServer]:
    """`frozenlm serve`'s app over HTTP, serving `tiny` as model "tiny" (no plug-ins)."""
    from starlette.requests import Request

    from frozenlm.serve.app import create_app

    app = create_app(tiny, "tiny")
    seen: list[str] = []

    @app.middleware("http")
    async def remember(request: Request, call_next: Any) -> Any:
        seen.append(request.url.path)
        return await call_next(request)

    with running(app) as url:
        yield LocalServer(f"{url}/v1", seen)


# -- a toy QA task: 24 questions about made-up facts over 24 passages and 12 distractors --

CITIES = [
    "Avalon",
    "Brindle",
    "Corvo",
    "Dunmore",
    "Elspeth",
    "Farrow",
    "Galen",
    "Hollin",
    "Ivel",
    "Jarrow",
    "Kestrel",
    "Lorne",
    "Marrow",
    "Nettle",
    "Orrin",
    "Pell",
    "Quarry",
    "Rook",
    "Sable",
    "Thorne",
    "Umber",
    "Vale",
    "Wren",
    "Yarrow",
]
RIVERS = [
    "Amber",
    "Birch",
    "Cinder",
    "Dove",
    "Ember",
    "Fennel",
    "Garnet",
    "Heron",
    "Indigo",
    "Juniper",
    "Kale",
    "Linden",
    "Moss",
    "Nectar",
    "Opal",
    "Poppy",
    "Quill",
    "Rowan",
    "Saffron",
    "Tansy",
    "Umbra",
    "Violet",
    "Willow",
    "Yew",
]


def write_toy_qa(folder: Path) -> tuple[Path, Path]:
    """(questions.jsonl, passages.jsonl) of the toy task."""
    folder.mkdir(parents=True, exist_ok=True)
    passages = []
    questions = []
    for i, (city, river) in enumerate(zip(CITIES, RIVERS, strict=True)):
        pid = f"p{i:02d}"
        passages.append(
            {
                "id": pid,
                "title": f"{city} town",
                "text": f"The town of {city} lies on the river {river}. Its market sells wool "
                f"and its bridge is {i + 3} hundred years old.",
            }
        )
        questions.append(
            {
                "question": f"Which river does the town of {city} lie on?",
                "answers": [river],
                "gold": pid,
            }
        )
    for j in range(12):
        passages.append(
            {
                "id": f"d{j:02d}",
                "text": f"Distractor number {j} talks about weather, rain and "
                f"clouds over the hills for {j + 1} days.",
            }
        )
    q = folder / "questions.jsonl"
    p = folder / "passages.jsonl"
    q.write_text("".join(json.dumps(r) + "\n" for r in questions))
    p.write_text("".join(json.dumps(r) + "\n" for r in passages))
    return q, p


@pytest.fixture(scope="session")
def toy_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_toy_qa(tmp_path_factory.mktemp("toy-qa"))


@pytest.fixture(scope="session")
def toy_qa(toy_files: tuple[Path, Path]) -> QATask:
    return load_qa_files(*toy_files, name="toy")
