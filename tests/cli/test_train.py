"""`frozenlm train` for every plug-in kind: ID-PT generators, shared and per-task soft prompts."""

import json
from pathlib import Path

import pytest

from frozenlm.cli.main import main

SHORT = ["--backbone", "tiny", "--steps", "2", "--batch-size", "4", "--eval-every", "2",
         "--eval-limit", "4", "--prompt-length", "3", "--task-cap", "40"]  # fmt: skip


def test_id_pt_trains_on_several_tasks_and_reads_a_task_it_never_saw(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gen"
    argv = ["train", "--method", "id-pt", "--task", "sentiment,trec", "--out", str(out)]
    assert main([*argv, *SHORT, "--generator-width", "32"]) == 0
    meta = json.loads((out / "best" / "plugin.json").read_text())
    assert meta["kind"] == "id-pt" and meta["plugin_config"]["width"] == 32
    assert meta["plugin_config"]["position"] == "start"  # the generator's default, not input
    assert meta["train_config"]["task_cap"] == 40
    assert "best dev" in capsys.readouterr().out

    report = tmp_path / "topic.json"
    eval_argv = ["eval", "--plugin", str(out), "--task", "topic", "--backbone", "tiny"]
    assert main([*eval_argv, "--limit", "6", "--out", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["task"] == "topic" and data["method"] == "id-pt" and data["n"] == 6


def test_a_shared_soft_prompt_is_one_prompt_for_every_task(tmp_path: Path) -> None:
    out = tmp_path / "shared"
    argv = ["train", "--task", "sentiment,trec", "--shared-prompt", "--out", str(out)]
    assert main([*argv, *SHORT]) == 0
    meta = json.loads((out / "best" / "plugin.json").read_text())
    assert list(meta["tensors"]) == ["prompt.*"] and meta["plugin_config"]["shared"]
    assert meta["plugin_config"]["position"] == "input"  # the soft prompt's default
    assert meta["train_config"]["optimizer"] == "adamw"  # its recipe
    report = tmp_path / "both.json"
    eval_argv = ["eval", "--plugin", str(out), "--backbone", "tiny", "--limit", "4"]
    assert main([*eval_argv, "--out", str(report)]) == 0
    tasks = [r["task"] for r in json.loads(report.read_text())["reports"]]
    assert tasks == ["sentiment", "trec"]
    # the one prompt serves any task, as ID-PT does: the held-out-task control
    assert main([*eval_argv, "--task", "topic"]) == 0
    # per-task prompts have no prompt for a task they were not trained for
    per_task = tmp_path / "per-task"
    assert main(["train", "--task", "sentiment", "--out", str(per_task), *SHORT]) == 0
    assert main(["eval", "--plugin", str(per_task), "--backbone", "tiny", "--task", "topic"]) == 2


def test_generator_options_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--method", "id-pt", "--task", "trec", "--out", str(tmp_path / "x"), *SHORT]
    assert main([*argv, "--shared-prompt"]) == 2
    assert main([*argv, "--generator-width", "30"]) == 2
    assert main([*argv, "--task-cap", "0"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line]
    assert errors == [
        "frozenlm: error: --shared-prompt applies to soft prompts, not to id-pt",
        "frozenlm: error: width 30 is not divisible by 4 heads",
        "frozenlm: error: task-cap must be at least 1, got 0",
    ]
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_overwrite_replaces_a_finished_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["train", "--task", "trec", "--out", str(out), *SHORT]
    assert main(argv) == 0
    (out / "best").rename(out / ".best.old-0123abcd")  # killed while swapping best/ in
    assert main(argv) == 2
    assert "already holds a training run (last, .best.old-0123abcd)" in capsys.readouterr().err
    assert main([*argv, "--seed", "3", "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["best", "last"]
    assert json.loads((out / "best" / "plugin.json").read_text())["train_config"]["seed"] == 3
