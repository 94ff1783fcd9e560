"""CLI life of a soft prompt: train, eval --plugin, ensembles, PEFT export/import, refusals."""

import json
from pathlib import Path

import pytest
import torch

from conftest import write_toy_task
from frozenlm.backbone import Backbone, TinyConfig
from frozenlm.cli.main import main
from frozenlm.evaluation.ensemble import combine
from frozenlm.evaluation.evaluate import EvalConfig, evaluate
from frozenlm.metrics import bootstrap
from frozenlm.plugins.registry import load_plugin
from frozenlm.tasks import load_task


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("cli")
    task = write_toy_task(folder)
    for seed in (0, 1):
        argv = [
            "train",
            "--task",
            f"{task},trec",
            "--backbone",
            "tiny",
            "--out",
            str(folder / f"run{seed}"),
        ]
        argv += [
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--eval-every",
            "2",
            "--eval-limit",
            "4",
            "--prompt-length",
            "3",
        ]
        # run0 sits where PEFT puts a prompt (exportable), run1 at the default position
        position = ["--position", "start"] if seed == 0 else []
        assert main([*argv, *position, "--seed", str(seed)]) == 0
    return folder, task


def test_eval_plugin_writes_one_report_per_task(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = trained
    out = folder / "eval.json"
    assert (
        main(
            [
                "eval",
                "--plugin",
                str(folder / "run0"),
                "--backbone",
                "tiny",
                "--limit",
                "8",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    reports = json.loads(out.read_text())["reports"]
    assert [r["task"] for r in reports] == ["toy", "trec"]
    assert all(r["method"] == "soft-prompt" and r["n"] == 8 for r in reports)
    assert "accuracy" in reports[1]["metrics"]


def test_an_ensemble_combines_what_each_prompt_scores_alone(
    trained: tuple[Path, Path], tiny: Backbone, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = trained
    runs = [folder / "run0", folder / "run1"]
    out = folder / "ensemble.json"
    argv = ["eval", "--plugin", ",".join(map(str, runs)), "--task", "trec", "--backbone", "tiny"]
    assert main([*argv, "--limit", "8", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["method"] == "soft-prompt-ensemble" and data["n"] == 8
    assert data["names"] == [str(r) for r in runs]
    # each prompt alone on the ensemble's examples (trec's seed-0 test split)
    config, task = EvalConfig(limit=8), load_task("trec")
    alone = [evaluate(tiny, task, config, plugin=load_plugin(r, tiny)[0]) for r in runs]
    singles = [r.metrics["accuracy"].to_json() for r in alone]
    assert data["metrics"]["single_accuracies"] == singles
    scores = torch.tensor([[p["scores"] for p in r.predictions] for r in alone])  # [N, n, K]
    labels = list(task.spec.labels)
    gold = torch.tensor([labels.index(p["gold"]) for p in alone[0].predictions])
    by_vote, by_mean = combine(scores)
    for name, predicted in (("mean_logprob", by_mean), ("majority_vote", by_vote)):
        expected = bootstrap((predicted == gold).float().tolist(), seed=0).to_json()
        assert data["metrics"][f"{name}_accuracy"] == expected
    assert data["metrics"]["accuracy"] == data["metrics"]["mean_logprob_accuracy"]
    printed = capsys.readouterr().out
    assert f"  {runs[0]}: " in printed and "majority vote: " in printed


def test_the_task_file_a_plugin_was_trained_on_is_accepted_by_eval(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`train --task FILE` then `eval --plugin DIR --task FILE`: the file's task is matched by
    its name and split hash, alone and in an ensemble; a file whose data changed is refused."""
    folder, task = trained
    run0, both = str(folder / "run0"), f"{folder / 'run0'},{folder / 'run1'}"
    by_file, by_name = tmp_path / "file.json", tmp_path / "name.json"
    argv = ["eval", "--plugin", run0, "--backbone", "tiny", "--limit", "4"]
    assert main([*argv, "--task", str(task), "--out", str(by_file)]) == 0
    assert main([*argv, "--task", "toy", "--out", str(by_name)]) == 0
    report, reference = json.loads(by_file.read_text()), json.loads(by_name.read_text())
    assert report["task"] == "toy" and report["predictions"] == reference["predictions"]
    ensemble = ["eval", "--plugin", both, "--backbone", "tiny", "--limit", "4", "--task"]
    assert main([*ensemble, str(task)]) == 0
    assert "majority vote: " in capsys.readouterr().out

    changed = tmp_path / "changed"
    changed.mkdir()
    changed_task = changed / "task.json"
    changed_task.write_text(task.read_text())
    rows = (folder / "data.jsonl").read_text().splitlines()
    (changed / "data.jsonl").write_text("\n".join(rows[:-2]) + "\n")
    for command in (argv, ensemble[:-1]):
        assert main([*command, "--task", str(changed_task)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (
            f"frozenlm: error: '{changed_task}' gives task 'toy' other splits than the plug-in "
            f"in '{run0}' was trained on (its data changed since training); evaluate on the "
            "data it was trained on, or train again"
        )


def test_an_ensemble_is_evaluated_on_one_task(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = trained
    runs = f"{folder / 'run0'},{folder / 'run1'}"
    assert main(["eval", "--plugin", runs, "--task", "trec,toy", "--backbone", "tiny"]) == 2
    assert "is evaluated on one --task" in capsys.readouterr().err


def test_peft_round_trip_scores_the_same(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = trained
    peft_dir, back = folder / "peft", folder / "imported"
    # a prompt before the input cannot become a PEFT adapter (PEFT's go before everything)
    refused = ["export-peft", str(folder / "run1"), str(peft_dir), "--task", "trec"]
    assert main([*refused, "--backbone", "tiny"]) == 2
    assert "position 'input'" in capsys.readouterr().err and not peft_dir.exists()
    assert (
        main(
            [
                "export-peft",
                str(folder / "run0"),
                str(peft_dir),
                "--task",
                "trec",
                "--backbone",
                "tiny",
            ]
        )
        == 0
    )
    assert (
        json.loads((peft_dir / "adapter_config.json").read_text())["peft_type"] == "PROMPT_TUNING"
    )
    assert (
        main(["import-peft", str(peft_dir), str(back), "--task", "trec", "--backbone", "tiny"]) == 0
    )
    first, second = folder / "a.json", folder / "b.json"
    common = ["--task", "trec", "--backbone", "tiny", "--limit", "12"]
    assert main(["eval", "--plugin", str(folder / "run0"), *common, "--out", str(first)]) == 0
    assert main(["eval", "--plugin", str(back), *common, "--out", str(second)]) == 0
    scores = [
        [p["scores"] for p in json.loads(f.read_text())["predictions"]] for f in (first, second)
    ]
    assert scores[0] == scores[1]


def test_export_needs_a_task_when_there_are_several(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = trained
    assert main(["export-peft", str(folder / "run0"), str(folder / "x"), "--backbone", "tiny"]) == 2
    assert "choose one with --task" in capsys.readouterr().err
    assert not (folder / "x").exists()


def test_another_backbone_is_refused_unless_allowed(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, _ = trained
    other = folder / "other-backbone"
    model = Backbone.tiny(TinyConfig(seed=1))
    model.model.save_pretrained(other)
    model.tokenizer.save_pretrained(other)
    capsys.readouterr()  # drop the save's progress output
    argv = [
        "eval",
        "--plugin",
        str(folder / "run0"),
        "--task",
        "trec",
        "--backbone",
        str(other),
        "--limit",
        "4",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--allow-other-backbone" in err and len(err.strip().splitlines()) == 1
    assert main([*argv, "--allow-other-backbone"]) == 0


def test_training_into_an_existing_run_needs_resume(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    folder, task = trained
    argv = [
        "train",
        "--task",
        str(task),
        "--backbone",
        "tiny",
        "--out",
        str(folder / "run0"),
        "--steps",
        "2",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--resume to continue it, --overwrite to replace it" in err
    assert len(err.strip().splitlines()) == 1
