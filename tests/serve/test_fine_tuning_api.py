"""Prompt tuning as an API: the official openai client uploads a file, starts a job, polls its
events, and the trained plug-in is served; bad files get the line and the reason; a restarted
server serves finished jobs' plug-ins and fails unfinished ones."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import openai
import pytest

from conftest import running
from frozenlm.backbone import Backbone
from frozenlm.serve.app import ServeConfig, create_app
from frozenlm.serve.finetune import parse_training_file
from frozenlm.serve.models import ServeError

ADMIN = "tune-admin"


def _toy_file(n: int = 40) -> bytes:
    rows = [{"input": f"item {i} is {'good' if i % 2 else 'bad'}",
             "label": "yes" if i % 2 else "no"} for i in range(n)]  # fmt: skip
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def test_a_bad_training_file_names_the_line_and_the_reason() -> None:
    good = _toy_file()
    assert parse_training_file(good, "t.jsonl") == ("classification", 40)
    cases = {
        good + b"{oops\n": "line 41: not JSON",
        good + b'{"input": "x"}\n': "line 41: expected the keys input and label",
        good + b'{"prompt": "x", "completion": "y"}\n': "line 41: mixes generation rows",
        good + b'{"input": "", "label": "no"}\n': "line 41: 'input' must be non-empty text",
        b'{"input": "a", "label": "b"}\n': "has 1 examples; at least 8",
        b"\xff\xfe": "is not UTF-8",
    }
    for data, reason in cases.items():
        with pytest.raises(ServeError, match=reason) as err:
            parse_training_file(data, "t.jsonl")
        assert err.value.status == 400


def _wait(client: openai.OpenAI, job_id: str, seconds: float = 300) -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish in {seconds} s")


def test_the_openai_client_trains_a_soft_prompt_that_is_then_served(
    tiny: Backbone, tmp_path: Path
) -> None:
    config = ServeConfig(admin_token=ADMIN)
    app = create_app(tiny, "tiny", plugin_root=tmp_path, config=config, backbone_ref="tiny")
    with running(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=ADMIN, max_retries=0)
        uploaded = client.files.create(
            file=("toy.jsonl", io.BytesIO(_toy_file())), purpose="fine-tune"
        )
        with pytest.raises(openai.BadRequestError, match="line 1: not JSON"):
            client.files.create(file=("bad.jsonl", io.BytesIO(b"{x\n")), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(
            model="tiny", training_file=uploaded.id, suffix="toy", seed=0,
            method={"type": "soft-prompt",
                    "soft-prompt": {"hyperparameters": {"n_epochs": 1, "batch_size": 4}}},
        )  # fmt: skip
        assert job.status == "queued"
        done = _wait(client, job.id)
        assert done.status == "succeeded", done.error  # type: ignore[attr-defined]
        name = done.fine_tuned_model  # type: ignore[attr-defined]
        events = client.fine_tuning.jobs.list_events(job.id).data
        messages = [e.message for e in events]
        assert any(m.startswith("step 1: loss") for m in messages)
        assert any("dev" in m for m in messages) and messages[0] == "job succeeded"
        assert name in {m.id for m in client.models.list()}
        reply = client.post("/classify", body={"model": name, "input": "item 3 is good"},
                            cast_to=dict)  # fmt: skip
        assert set(reply["data"][0]["probabilities"]) == {"no", "yes"}

        deep = client.fine_tuning.jobs.create(
            model="tiny", training_file=uploaded.id,
            method={"type": "prefix", "prefix": {"hyperparameters": {"n_epochs": 1}}},
        )  # fmt: skip
        finished = _wait(client, deep.id)
        assert finished.status == "succeeded", finished.error  # type: ignore[attr-defined]
        listed = {m.id: m for m in client.models.list()}
        assert listed[finished.fine_tuned_model].model_extra["kind"] == "prefix"  # type: ignore[attr-defined,index]
        with pytest.raises(openai.BadRequestError, match="unknown hyperparameters steps"):
            client.fine_tuning.jobs.create(
                model="tiny",
                training_file=uploaded.id,
                hyperparameters={"steps": 3},  # type: ignore[typeddict-unknown-key]
            )

        cancelled = client.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id)
        assert client.fine_tuning.jobs.cancel(cancelled.id).status == "cancelled"
        with pytest.raises(openai.BadRequestError, match="model must be the served backbone"):
            client.fine_tuning.jobs.create(model="gpt-9", training_file=uploaded.id)
        with pytest.raises(openai.NotFoundError):
            client.fine_tuning.jobs.create(model="tiny", training_file="file-" + "0" * 24)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).files.list()

    # a job that never finished (the server stopped under it) and a restart
    stale = tmp_path / ".frozenlm" / "jobs" / cancelled.id / "job.json"
    record = json.loads(stale.read_text()) | {"status": "running"}
    stale.write_text(json.dumps(record))
    again = create_app(tiny, "tiny", plugin_root=tmp_path, config=config, backbone_ref="tiny")
    with running(again) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=ADMIN, max_retries=0)
        assert name in {m.id for m in client.models.list()}
        failed = client.fine_tuning.jobs.retrieve(cancelled.id)
        assert failed.status == "failed" and "restarted" in failed.error.message  # type: ignore[union-attr]
