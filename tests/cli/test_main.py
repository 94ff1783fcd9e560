import json
import subprocess
import sys
from pathlib import Path

import pytest

from frozenlm.cli.main import main


def test_tasks_lists_built_ins_with_split_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tasks", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"sentiment", "topic", "trec", "tweets", "trivia"}
    assert rows["trec"]["test"] == 1000 and rows["trivia"]["kind"] == "generation"


def test_eval_writes_the_report_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report.json"
    code = main(
        ["eval", "--task", "sentiment", "--backbone", "tiny", "--limit", "16", "--out", str(out)]
    )
    assert code == 0
    data = json.loads(out.read_text())
    assert data["n"] == 16 and 0 <= data["metrics"]["accuracy"]["value"] <= 1
    assert "majority baseline" in capsys.readouterr().out


def test_generation_eval_reports_exact_match_and_f1(tmp_path: Path) -> None:
    out = tmp_path / "trivia.json"
    argv = [
        "eval",
        "--task",
        "trivia",
        "--backbone",
        "tiny",
        "--limit",
        "3",
        "--max-new-tokens",
        "4",
    ]
    assert main([*argv, "--out", str(out)]) == 0
    assert set(json.loads(out.read_text())["metrics"]) == {"exact_match", "f1"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "--task", "no-such-task"], "no-such-task"),
        (["eval", "--task", "missing.yaml"], "missing.yaml"),
        (["eval", "--task", "trec", "--backbone", "/no/such/folder"], "/no/such/folder"),
        (["eval", "--task", "trivia", "--calibrate", "--backbone", "tiny"], "classification"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never.json"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("frozenlm: error:") and message in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_console_script_reports_errors_without_traceback(tmp_path: Path) -> None:
    task = tmp_path / "task.yaml"
    task.write_text("name: x\n")
    proc = subprocess.run(
        [sys.executable, "-m", "frozenlm", "eval", "--task", str(task), "--backbone", "tiny"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and str(task) in proc.stderr
