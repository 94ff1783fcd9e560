import json
from pathlib import Path

import pytest

from frozenlm.cli.main import main


def test_compare_command_writes_report_results_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "--backbone", "tiny", "--tasks", "sentiment", "--methods",
            "zero-shot,soft-prompt", "--train-sizes", "8", "--no-domain-shift",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| soft-prompt |" in printed and "report.md" in printed
    record = json.loads(Path(printed.split("record: ", 1)[1].strip()).read_text())
    assert record["kind"] == "compare" and record["command"] == argv
    assert "sentiment/soft-prompt/n=8" in record["metrics"]
    results = json.loads((out / "results.json").read_text())
    assert {(c["method"], c["train_size"]) for c in results["cells"]} == {
        ("zero-shot", "all"),
        ("soft-prompt", "8"),
    }
    assert results["config"]["budget"] == "quick"
    assert (out / "learning_curves.png").exists()


def test_compare_rejects_an_unknown_method(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["compare", "--backbone", "tiny", "--methods", "bert", "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    assert "unknown method 'bert'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_compare_shards_and_report_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "--backbone", "tiny", "--tasks", "sentiment", "--methods",
            "zero-shot,soft-prompt", "--train-sizes", "8", "--no-domain-shift",
            "--out", str(out)]  # fmt: skip
    assert main([*argv, "--shard", "1/2"]) == 0
    assert "1 cells of other shards are not done yet" in capsys.readouterr().out
    assert main(["compare", "--report-only", "--out", str(out)]) == 2
    assert "1 of 2 cells are not finished yet" in capsys.readouterr().err
    assert main([*argv, "--shard", "2/2"]) == 0
    assert "full report" in capsys.readouterr().out and (out / "report.md").exists()
    assert main(["compare", "--report-only", "--out", str(out)]) == 0
    assert "2 cells" in capsys.readouterr().out
    assert main([*argv, "--shard", "3/2"]) == 2
    assert "--shard takes K/N" in capsys.readouterr().err


def test_two_shard_processes_at_once_share_one_folder(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "cmp"
    argv = [sys.executable, "-m", "frozenlm", "--no-record", "compare", "--backbone", "tiny",
            "--tasks", "sentiment", "--methods", "zero-shot,few-shot,soft-prompt",
            "--train-sizes", "8", "--no-domain-shift", "--out", str(out)]  # fmt: skip
    runs = [subprocess.Popen([*argv, "--shard", f"{k}/2"]) for k in (1, 2)]
    assert [p.wait(timeout=300) for p in runs] == [0, 0]
    cells = json.loads((out / "results.json").read_text())["cells"]
    assert sorted(c["method"] for c in cells) == ["few-shot", "soft-prompt", "zero-shot"]
    assert not list(out.rglob("*.tmp"))  # nothing half-written left behind
