"""`frozenlm runs`, `rerun` and `scale`: records written by eval and train, listed, replayed on
another backbone, scaled."""

import json
import platform
import re
from pathlib import Path

import pytest
import torch

from conftest import write_toy_task
from frozenlm.backbone import Backbone, TinyConfig, build_tiny_model, load_tokenizer
from frozenlm.cli.main import main
from frozenlm.cli.records import replay_argv
from frozenlm.runs.records import (
    RunRecord,
    experiment_key,
    list_records,
    runs_dir,
)
from frozenlm.tasks import load_task

EVAL = ["eval", "--task", "trec", "--backbone", "tiny", "--limit", "8"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("records")


@pytest.fixture(scope="module")
def other_backbone(folder: Path) -> Path:
    """A second local backbone: wider than `tiny` and other random weights."""
    path = folder / "wide-tiny"
    tokenizer = load_tokenizer()
    build_tiny_model(len(tokenizer), TinyConfig(hidden_size=128, seed=1)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def original(folder: Path) -> tuple[RunRecord, Path]:
    """An eval run on the tiny backbone, with its record."""
    out = folder / "report.json"
    assert main(["--runs-dir", str(folder / "runs"), *EVAL, "--out", str(out)]) == 0
    (record,) = list_records(folder / "runs")
    return record, out


@pytest.fixture(scope="module")
def replayed(
    folder: Path, original: tuple[RunRecord, Path], other_backbone: Path
) -> tuple[RunRecord, bytes]:
    """The original replayed on the other backbone; the original report's bytes before it."""
    record, out = original
    before = out.read_bytes()
    argv = ["--runs-dir", str(folder / "runs"), "rerun", record.id, "--backbone"]
    assert main([*argv, str(other_backbone)]) == 0
    (replay,) = [r for r in list_records(folder / "runs") if r.replay_of == record.id]
    return replay, before


def test_eval_writes_a_record_with_what_ran_and_what_came_out(
    folder: Path, original: tuple[RunRecord, Path], tiny: Backbone
) -> None:
    record, out = original
    assert re.fullmatch(r"\d{8}-\d{6}-eval-[0-9a-f]{6}", record.id)
    assert (folder / "runs" / f"{record.id}.json").is_file()
    assert record.kind == "eval" and record.replay_of is None
    assert record.command == [*EVAL, "--out", str(out)]
    assert record.experiment == "eval --task trec --limit 8"
    assert record.backbone == {
        "name": tiny.name,
        "fingerprint": tiny.fingerprint,
        "source": "tiny",
        "parameters": tiny.num_parameters,
    }
    assert record.split_hash == {"trec": load_task("trec").split_hash()}
    assert record.versions["torch"] == torch.__version__
    assert record.versions["python"] == platform.python_version()
    report = json.loads(out.read_text())
    assert record.metrics == {
        "trec": {
            name: {
                **report["metrics"][name],
                "baseline": report["baseline"][name]["value"],
                "n": 8,
            }
            for name in ("accuracy", "macro_f1")
        }
    }
    assert record.costs == {"seconds": report["seconds"], "examples": 8}
    assert record.outputs == [str(out)]
    assert record.config["task"] == "trec" and record.config["limit"] == 8


def test_runs_lists_records_by_kind(
    folder: Path, original: tuple[RunRecord, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    record, _ = original
    capsys.readouterr()
    assert main(["--runs-dir", str(folder / "runs"), "runs"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(record.id))
    assert "tiny-random-llama-s0" in line and "trec accuracy" in line
    assert line.endswith("eval --task trec --limit 8")
    assert main(["--runs-dir", str(folder / "runs"), "runs", "--kind", "eval", "--json"]) == 0
    assert record.id in [r["id"] for r in json.loads(capsys.readouterr().out)]
    assert main(["--runs-dir", str(folder / "runs"), "runs", "--kind", "train", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_rerun_replays_on_another_backbone_without_touching_the_original(
    original: tuple[RunRecord, Path], replayed: tuple[RunRecord, bytes], other_backbone: Path
) -> None:
    record, out = original
    replay, before = replayed
    assert out.read_bytes() == before
    assert replay.experiment == record.experiment
    assert replay.backbone["name"] == "wide-tiny"
    assert replay.backbone["fingerprint"] != record.backbone["fingerprint"]
    assert replay.backbone["parameters"] > record.backbone["parameters"]
    assert replay.split_hash == record.split_hash
    new_out = out.with_name("report.wide-tiny.json")
    assert replay.outputs == [str(new_out)] and new_out.is_file()
    assert replay.command[-2:] == ["--backbone", str(other_backbone)]


def test_scale_of_one_record_includes_its_replays(
    folder: Path,
    original: tuple[RunRecord, Path],
    replayed: tuple[RunRecord, bytes],
    capsys: pytest.CaptureFixture[str],
) -> None:
    record, _ = original
    replay, _ = replayed
    out = folder / "scale"
    assert main(["--runs-dir", str(folder / "runs"), "scale", record.id, "--out", str(out)]) == 0
    table = [x for x in (out / "scale.md").read_text().splitlines() if x.startswith("| ")]
    # the backbones with their records, then the trec table: one row per backbone
    assert [x.split(" | ")[0] for x in table] == [
        "| backbone",
        "| tiny-random-llama-s0",
        "| wide-tiny",
    ] * 2
    accuracy = f"{replay.metrics['trec']['accuracy']['value']:.3f}"
    assert replay.id in table[2] and accuracy in table[5]
    assert (out / "scale.png").read_bytes().startswith(b"\x89PNG")
    assert "| wide-tiny |" in capsys.readouterr().out


def test_replay_argv_moves_every_output_and_drops_resume() -> None:
    command = [
        "train",
        "--task",
        "sentiment",
        "--out",
        "runs/three/",
        "--resume",
        "--backbone=tiny",
    ]
    record = RunRecord(
        id="x", kind="train", created="", command=command, experiment=experiment_key(command),
        config={}, backbone={}, split_hash={}, versions={}, metrics={}, costs={}, outputs=[],
    )  # fmt: skip
    assert record.experiment == "train --task sentiment"
    model = "/models/My Model/"
    assert replay_argv(record, model) == [
        "train", "--task", "sentiment", "--out", "runs/three.My-Model", "--backbone", model,
    ]  # fmt: skip
    evaluation = RunRecord(
        **{**record.to_json(), "kind": "eval", "command": ["eval", "--out=x.json"]}
    )
    assert replay_argv(evaluation, "tiny") == ["eval", "--out", "x.tiny.json", "--backbone", "tiny"]
    # an eval of trained plug-ins reads what the train records' replays wrote
    plugged = RunRecord(**{**evaluation.to_json(), "command": ["eval", "--plugin", "runs/a/,b"]})
    replayed = ["eval", "--plugin", "runs/a.tiny,b.tiny", "--backbone", "tiny"]
    assert replay_argv(plugged, "tiny") == replayed


def test_a_replay_keeps_the_recorded_device_and_dtype_unless_given() -> None:
    command = ["eval", "--task", "trec", "--device", "cuda:1", "--dtype=bfloat16", "--limit", "4"]
    record = RunRecord(
        id="x", kind="eval", created="", command=command, experiment=experiment_key(command),
        config={}, backbone={}, split_hash={}, versions={}, metrics={}, costs={}, outputs=[],
    )  # fmt: skip
    assert record.experiment == "eval --task trec --limit 4"
    kept = ["eval", "--task", "trec", "--limit", "4", "--device", "cuda:1", "--dtype", "bfloat16"]
    assert replay_argv(record, "tiny") == [*kept, "--backbone", "tiny"]
    moved = replay_argv(record, "tiny", device="cpu")
    assert moved[moved.index("--device") + 1] == "cpu" and moved.count("--device") == 1
    plain = RunRecord(**{**record.to_json(), "command": ["eval", "--task", "trec"]})
    given = replay_argv(plain, "tiny", dtype="float32")
    assert given == ["eval", "--task", "trec", "--dtype", "float32", "--backbone", "tiny"]


def test_rerun_passes_device_and_dtype_to_the_replay(
    original: tuple[RunRecord, Path], folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record, _ = original
    argv = ["--runs-dir", str(folder / "runs"), "--no-record", "rerun", record.id]
    assert main([*argv, "--backbone", "tiny", "--device", "cpu", "--dtype", "float32"]) == 0
    assert "--device cpu --dtype float32 --backbone tiny" in capsys.readouterr().out
    with pytest.raises(SystemExit) as refused:  # argparse's usage error
        main([*argv, "--backbone", "tiny", "--device", "gpu"])
    assert refused.value.code == 2
    assert "expected auto, cpu, cuda, cuda:N or mps, got 'gpu'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ('{"id": "x"}', "has no valid 'kind' field"),
        ("[1, 2]", "holds a JSON list, not an object"),
    ],
)
def test_a_malformed_record_is_one_line_and_exit_2(
    tmp_path: Path, content: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert main(["--runs-dir", str(tmp_path), "rerun", str(bad), "--backbone", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("frozenlm: error: run record") and str(bad) in err and message in err
    assert len(err.splitlines()) == 1
    assert main(["--runs-dir", str(tmp_path), "scale", "no-such-id"]) == 2
    assert "no run record 'no-such-id'" in capsys.readouterr().err


def test_runs_folder_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FROZENLM_RUNS", str(tmp_path / "env-runs"))
    assert runs_dir() == tmp_path / "env-runs"
    assert (
        main(["--no-record", "eval", "--task", "trec", "--backbone", "tiny", "--limit", "2"]) == 0
    )
    assert not (tmp_path / "env-runs").exists()
    assert main(["eval", "--task", "trec", "--backbone", "tiny", "--limit", "2"]) == 0
    (path,) = (tmp_path / "env-runs").glob("*.json")
    assert f"record: {path}" in capsys.readouterr().out


def test_train_writes_a_record_with_dev_metrics_and_costs(tmp_path: Path, tiny: Backbone) -> None:
    out, task = tmp_path / "sp", write_toy_task(tmp_path)
    argv = ["train", "--task", str(task), "--backbone", "tiny", "--steps", "2", "--eval-every", "2"]
    argv += ["--eval-limit", "4", "--batch-size", "2", "--out", str(out)]
    assert main(["--runs-dir", str(tmp_path / "runs"), *argv]) == 0
    (record,) = list_records(tmp_path / "runs", kind="train")
    best = json.loads((out / "best" / "plugin.json").read_text())
    assert record.command == argv
    assert record.experiment == (
        f"train --task {task} --steps 2 --eval-every 2 --eval-limit 4 --batch-size 2"
    )
    assert record.metrics == {"toy": {"dev_accuracy": best["metrics"]["dev_per_task"]["toy"]}}
    assert record.split_hash == {"toy": load_task(str(task)).split_hash()}
    assert record.costs["steps"] == 2
    assert record.costs["trainable_parameters"] == 20 * tiny.hidden_size  # 20 prompt vectors
    assert record.outputs == [str(out)] and record.backbone["fingerprint"] == tiny.fingerprint
