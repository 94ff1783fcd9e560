"""The recursive LM from the command line: pre-train a connector on language modelling, train
one on a task from it, evaluate it like any plug-in, and draw selective recursion's curve."""

import json
from pathlib import Path

import pytest

from frozenlm.cli.main import main

SHORT = ["--backbone", "tiny", "--steps", "2", "--batch-size", "2", "--eval-every", "2",
         "--eval-limit", "2", "--prompt-length", "2", "--connector-tokens", "2",
         "--connector-width", "16", "--connector-heads", "2"]  # fmt: skip


@pytest.fixture(autouse=True)
def _memory_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROZENLM_PASS1_CACHE", "off")


def test_pretrain_then_train_from_it_then_eval_and_curve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lm = tmp_path / "lm"
    assert (
        main(["train", "--method", "recursion", "--pretrain-lm", "bbc", "--out", str(lm), *SHORT])
        == 0
    )
    meta = json.loads((lm / "best" / "plugin.json").read_text())
    assert meta["plugin_config"]["context_field"] == "context" and "lm-bbc" in meta["tasks"]

    task = tmp_path / "rec"
    argv = ["train", "--method", "recursion", "--task", "sentiment", "--out", str(task)]
    assert main([*argv, "--init-from", str(lm / "best"), *SHORT]) == 0
    meta = json.loads((task / "best" / "plugin.json").read_text())
    assert meta["plugin_config"]["init_from"] == str(lm / "best")
    assert meta["plugin_config"]["context_field"] is None

    two, one = tmp_path / "two.json", tmp_path / "one.json"
    evaluate = ["eval", "--task", "sentiment", "--backbone", "tiny", "--limit", "6"]
    assert main([*evaluate, "--plugin", str(task), "--out", str(two)]) == 0
    assert main([*evaluate, "--out", str(one)]) == 0
    curve, plot = tmp_path / "curve.json", tmp_path / "curve.png"
    argv = ["recursion", "curve", "--one", str(one), "--two", str(two), "--out", str(curve)]
    assert main([*argv, "--plot", str(plot), "--backbone", "tiny"]) == 0
    points = json.loads(curve.read_text())["points"]
    assert [p["share"] for p in points][::5] == [0.0, 0.5, 1.0]
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "two passes on 100%" in capsys.readouterr().out


def test_bad_input_gets_one_sentence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "x")
    assert main(["train", "--method", "recursion", "--out", out, *SHORT]) == 2
    assert "--task" in capsys.readouterr().err
    argv = ["train", "--task", "sentiment", "--first-prompt", "nowhere", "--out", out, *SHORT]
    assert main(argv) == 2
    assert "applies to --method recursion" in capsys.readouterr().err
    argv = ["train", "--method", "recursion", "--task", "sentiment", "--out", out]
    assert main([*argv, "--first-prompt", str(tmp_path / "missing"), *SHORT]) == 2
    assert "missing" in capsys.readouterr().err
    argv = ["recursion", "curve", "--one", str(tmp_path / "no.json"), "--two", "b", "--out", out]
    assert main(argv) == 2
    assert "does not exist" in capsys.readouterr().err
