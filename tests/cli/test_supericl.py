"""`frozenlm supericl`: the JSON keys the issue names, the per-example JSONL, clear refusals,
and (slow) the default MiniLM plug-in trained, saved and reused."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from conftest import write_toy_task
from frozenlm.cli.main import main
from frozenlm.supericl import SmallClassifier
from frozenlm.tasks import load_task

KEYS = (
    "icl_accuracy",
    "plugin_accuracy",
    "supericl_accuracy",
    "override_rate",
    "override_accuracy",
)


def test_supericl_writes_metrics_predictions_and_a_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    task_file = write_toy_task(tmp_path, 60)
    SmallClassifier.tiny(load_task(str(task_file))).save(tmp_path / "plug")
    out = tmp_path / "r.json"
    argv = ["supericl", "--task", str(task_file), "--backbone", "tiny", "--plugin"]
    argv += [str(tmp_path / "plug"), "--shots", "2", "--limit", "5", "--out", str(out)]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert all(key in data["metrics"] for key in KEYS)
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(rows) == data["n"] == 5
    assert {"id", "gold", "plugin", "plugin_confidence", "icl", "supericl"} <= set(rows[0])
    printed = capsys.readouterr().out
    assert "supericl_accuracy" in printed and "record:" in printed
    assert not (tmp_path / "r.plugin").exists()  # a user's plug-in is not copied

    # The run is recorded, so it replays on another backbone beside the original.
    runs = tmp_path / "runs"
    assert main(["--runs-dir", str(runs), *argv]) == 0
    (record,) = runs.glob("*.json")
    assert main(["--runs-dir", str(runs), "rerun", str(record), "--backbone", "tiny"]) == 0
    replayed = json.loads((tmp_path / "r.tiny.json").read_text())
    assert replayed["metrics"] == data["metrics"]  # the same weights: the same numbers


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--out", "r.txt"], "--out must name a .json file"),
        (["--out", "r.json", "--backend", "openai"], "needs --base-url URL and --model NAME"),
        (["--out", "r.json", "--plugin", "nowhere"], "neither 'default' nor an existing folder"),
        (["--out", "r.json", "--task", "trivia"], "needs a classification task"),
    ],
)
def test_bad_options_get_one_clear_sentence(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["supericl", "--task", "sentiment", "--backbone", "tiny", *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_the_default_plugin_is_trained_saved_and_reused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "s.json"
    argv = ["supericl", "--task", "sentiment", "--shots", "4", "--limit", "40"]
    argv += ["--plugin-max-train", "400", "--plugin-epochs", "2", "--out", str(out)]
    assert main(argv) == 0
    first = json.loads(out.read_text())
    assert first["plugin"]["train_examples"] == 400
    assert first["metrics"]["plugin_accuracy"] >= 0.6  # MiniLM learns movie-review sentiment
    assert (tmp_path / "s.plugin" / "frozenlm-plugin.json").is_file()
    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0
    assert "reusing the plug-in trained earlier" in caplog.text
    assert json.loads(out.read_text())["metrics"] == first["metrics"]
