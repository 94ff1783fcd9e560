"""The `frozenlm` command: its table of commands, defaults from the configs, errors as exit 2."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

import frozenlm
import frozenlm.devices
import frozenlm.errors
from frozenlm.cli.common import DTYPES
from frozenlm.cli.main import COMMANDS, build_parser, main
from frozenlm.compare.runner import CompareConfig
from frozenlm.evaluation.evaluate import EvalConfig
from frozenlm.plugins.prompt_generator import PromptGeneratorConfig
from frozenlm.plugins.soft_prompt import SoftPromptConfig
from frozenlm.supericl.run import SuperICLConfig
from frozenlm.supericl.small_classifier import ClassifierTrainConfig
from frozenlm.training.config import TrainConfig


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


def _options(parser: argparse.ArgumentParser, command: str) -> set[str]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {o for a in sub.choices[command]._actions for o in a.option_strings}


def test_the_command_table_is_the_cli() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == list(COMMANDS)
    loads_a_backbone = {
        "eval",
        "train",
        "compare",
        "supericl",
        "export-peft",
        "import-peft",
        "serve",
    }
    for name in COMMANDS:
        has = {"--backbone", "--device", "--dtype"} <= _options(parser, name)
        assert has == (name in loads_a_backbone | {"rerun"}), name
    # only the chosen command gets its options built
    assert _options(build_parser("tasks"), "eval") == {"-h", "--help"}


def test_cli_defaults_are_the_config_defaults() -> None:
    train = build_parser("train").parse_args(["train", "--task", "t", "--out", "o"])
    config, prompt = TrainConfig(), SoftPromptConfig()
    for field in ("steps", "batch_size", "grad_accum", "eval_every", "eval_limit", "patience",
                  "seed", "task_cap", "max_grad_norm", "balance"):  # fmt: skip
        assert getattr(train, field) == getattr(config, field), field
    # the optimizer's settings and the prompt length come from each method's recipe and config
    assert (train.optimizer, train.lr, train.weight_decay, train.warmup) == (None,) * 4
    assert train.prompt_length is None and train.init == prompt.init.value
    # no position given: each method's config default (soft prompt input, ID-PT start)
    assert (train.position, train.residual) == (None, prompt.residual)
    generator = PromptGeneratorConfig()
    assert (train.generator_width, train.generator_layers) == (generator.width, generator.layers)
    assert train.encoder == generator.encoder.value
    evaluation = build_parser("eval").parse_args(["eval"])
    for field in ("method", "shots", "selection", "framing", "split", "limit", "max_new_tokens",
                  "seed"):  # fmt: skip
        assert getattr(evaluation, field) == getattr(EvalConfig(), field), field
    supericl = build_parser("supericl").parse_args(["supericl", "--task", "t", "--out", "o.json"])
    for field in ("shots", "selection", "plugin_name", "split", "limit", "max_prompt_tokens"):
        assert getattr(supericl, field) == getattr(SuperICLConfig(), field), field
    small = ClassifierTrainConfig()
    assert (supericl.plugin_epochs, supericl.plugin_max_train) == (small.epochs, small.max_train)
    compare = build_parser("compare").parse_args(["compare", "--out", "o"])
    assert (compare.tasks, compare.budget) == (",".join(CompareConfig().tasks), "quick")
    assert ("auto", *frozenlm.devices.DTYPES) == DTYPES


def test_help_does_not_load_torch() -> None:
    code = (
        "import contextlib, io, sys\n"
        "from frozenlm.cli.main import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    main(['--help'])\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_no_library_module_imports_the_cli() -> None:
    package = Path(frozenlm.__file__).parent
    library = [p for p in package.rglob("*.py") if "cli" not in p.relative_to(package).parts]
    importers = [p for p in library if "frozenlm.cli" in p.read_text() and p.name != "__main__.py"]
    assert importers == []


def _no_backbone(*args: object, **kwargs: object) -> None:
    raise AssertionError("the backbone was loaded: work started before the output was checked")


def _output_cases(tmp: Path) -> list[tuple[list[str], str]]:
    folder, file = str(tmp / "folder"), str(tmp / "file")
    return [
        (["eval", "--task", "trec", "--out", folder], f"--out '{folder}' is a folder; expected"),
        (["eval", "--task", "trec", "--out", f"{file}/r.json"], f"'{file}' is a file, not a"),
        (["train", "--task", "trec", "--out", file], f"--out '{file}' is a file; expected a"),
        (["compare", "--out", file], f"--out '{file}' is a file; expected a folder"),
        (["supericl", "--task", "trec", "--out", f"{folder}.json"], "is a folder; expected"),
        (["supericl", "--task", "trec", "--out", f"{tmp}/s.json"], "--out's .jsonl sibling"),
        (["supericl", "--task", "trec", "--out", f"{tmp}/p.json"], "--out's .plugin sibling"),
        (["export-peft", str(tmp), file], f"OUT '{file}' is a file; expected a folder"),
        (["import-peft", str(tmp), folder, "--task", "trec"], "does not hold plugin.json"),
    ]


def test_output_paths_are_checked_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "folder.json").mkdir()
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("keep")
    (tmp_path / "file").write_text("x")
    (tmp_path / "s.jsonl").mkdir()
    (tmp_path / "p.plugin").write_text("x")
    monkeypatch.setattr(frozenlm.backbone, "resolve_backbone", _no_backbone)
    for argv, message in _output_cases(tmp_path):
        assert main([*argv, "--backbone", "tiny"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("frozenlm: error: ") and message in err, (argv, err)
        assert len(err.splitlines()) == 1
    assert (tmp_path / "file").read_text() == "x"


def test_allow_pickle_weights_reaches_the_backbone_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[object] = []

    def loader(spec: str, **kwargs: object) -> None:
        seen.append(kwargs["allow_pickle"])
        raise frozenlm.errors.ConfigError("stop here")

    monkeypatch.setattr(frozenlm.backbone, "resolve_backbone", loader)
    argv = ["eval", "--task", "trec", "--backbone", str(tmp_path)]
    assert main(argv) == 2
    assert main([*argv, "--allow-pickle-weights"]) == 2
    assert seen == [False, True]
    parser = build_parser()
    for name in ("eval", "train", "compare", "supericl", "export-peft", "import-peft"):
        assert "--allow-pickle-weights" in _options(parser, name), name
