"""Textual recursion: pass 1 samples candidates (seeded), which become part of pass 2's input in
a task file `frozenlm eval` can read, and a soft prompt trains on it."""

import json
from pathlib import Path

import pytest

from frozenlm.backbone import Backbone
from frozenlm.errors import ConfigError
from frozenlm.plugins.registry import new_plugin
from frozenlm.recursion.textual import (
    TextualConfig,
    candidate_task,
    sample_candidates,
    textual_recursion,
)
from frozenlm.tasks import load_task
from frozenlm.training.config import TrainConfig
from frozenlm.training.loop import train_plugin

QUICK = TrainConfig(steps=2, batch_size=4, eval_every=2, eval_limit=4, optimizer="adamw", lr=1e-2)


def test_candidates_are_seeded_distinct_and_labels_for_classification(tiny: Backbone) -> None:
    sentiment, trivia = load_task("sentiment"), load_task("trivia")
    prompt = new_plugin("soft-prompt", {"length": 2}, tiny, [sentiment.spec, trivia.spec], 0)
    config = TextualConfig(k=3, max_new_tokens=4)
    labels = sample_candidates(tiny, prompt, sentiment, sentiment.test[:4], config)
    words = set(sentiment.spec.labels.values())
    assert all(0 < len(c) <= 3 and set(c) <= words for c in labels)
    answers = sample_candidates(tiny, prompt, trivia, trivia.test[:3], config)
    assert answers == sample_candidates(tiny, prompt, trivia, trivia.test[:3], config)
    assert all(len(c) == len(set(c)) for c in answers)
    with pytest.raises(ConfigError, match="temperature"):
        TextualConfig(temperature=0)


def test_textual_recursion_writes_a_task_file_and_trains_on_it(
    tiny: Backbone, tmp_path: Path
) -> None:
    first = tmp_path / "sp"
    train_plugin(tiny, ["trivia"], "soft-prompt", {"length": 2, "position": "input"}, QUICK, first)
    task = load_task("trivia")
    out = tmp_path / "textual"
    result = textual_recursion(
        tiny, first, task, out, TextualConfig(k=2, max_new_tokens=3), QUICK, test_limit=5
    )
    written = load_task(result.task_file)
    assert written.name == "trivia-candidates" and written.split_sizes() == task.split_sizes()
    assert "Candidates: {candidates}" in written.spec.template
    assert result.report.n == 5 and result.report.task == "trivia-candidates"
    assert (out / "prompt" / "best" / "plugin.json").is_file()
    rows = [json.loads(line) for line in (out / "task" / "test.jsonl").read_text().splitlines()]
    assert all(r["candidates"] for r in rows) and rows[0]["answer"]
    everything = {s: {ex.id: ["x"] for ex in task.split(s)} for s in ("train", "dev", "test")}
    in_order = candidate_task(task, everything)
    assert [ex.fields["question"] for ex in in_order.test] == [
        ex.fields["question"] for ex in task.test
    ]
