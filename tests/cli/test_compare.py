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
