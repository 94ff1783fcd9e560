"""`frozenlm eval` of prompt designs: the report JSON, generation metrics, the run record."""

import json
from pathlib import Path

import pytest

from frozenlm.backbone import Backbone
from frozenlm.cli.main import main
from frozenlm.evaluation.evaluate import EvalConfig, evaluate
from frozenlm.runs.records import list_records
from frozenlm.tasks import load_task


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


def test_eval_is_the_library_call_with_the_same_options(
    tmp_path: Path, tiny: Backbone, capsys: pytest.CaptureFixture[str]
) -> None:
    out, runs = tmp_path / "few.json", tmp_path / "runs"
    argv = ["eval", "--task", "trec", "--method", "few-shot", "--shots", "2", "--calibrate",
            "--limit", "6", "--backbone", "tiny"]  # fmt: skip
    argv += ["--device", "cpu", "--dtype", "float32"]
    assert main(["--runs-dir", str(runs), *argv, "--out", str(out)]) == 0
    config = EvalConfig(method="few-shot", shots=2, calibrate=True, limit=6)
    expected = evaluate(tiny, load_task("trec"), config)
    data = json.loads(out.read_text())
    assert data["predictions"] == expected.to_json()["predictions"]
    assert data["metrics"] == expected.to_json()["metrics"]
    assert expected.headline().splitlines()[1] in capsys.readouterr().out
    (record,) = list_records(runs)
    assert record.config["device"] == "cpu" and record.config["dtype"] == "float32"
    assert record.experiment == "eval --task trec --method few-shot --shots 2 --calibrate --limit 6"


def test_calibrate_takes_a_mode_and_defaults_to_the_library_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["eval", "--task", "sentiment", "--backbone", "tiny", "--limit", "4"]
    runs = [
        (["--calibrate"], EvalConfig.calibration),
        (["--calibrate", "uniform"], "uniform"),
        (["--calibrate", "dev", "--dev-limit", "3"], "dev"),
    ]
    for flags, mode in runs:
        out = tmp_path / f"{mode}.json"
        assert main([*base, *flags, "--out", str(out)]) == 0
        calibration = json.loads(out.read_text())["calibration"]
        assert calibration["mode"] == mode
        assert f"  calibration: {mode}" in capsys.readouterr().out
    assert calibration["dev_n"] == 3 and calibration["chosen"] in ("none", "uniform", "prior")
    with pytest.raises(SystemExit):
        main([*base, "--calibrate", "zhao"])
    assert "invalid choice: 'zhao'" in capsys.readouterr().err
