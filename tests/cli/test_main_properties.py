"""Property: any command line ends in a result (exit 0), one sentence (exit 2) or argparse's
usage error (exit 2), never a traceback."""

from __future__ import annotations

from contextlib import chdir
from pathlib import Path
from tempfile import TemporaryDirectory

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import write_toy_task
from frozenlm.cli.main import main

SMALL_INT = st.integers(-1, 3).map(str) | st.sampled_from(["0", "1.5", "x", "", "99999999999"])
# Placeholders the test fills in with paths of its temporary folder.
PATHS = st.sampled_from(
    ["@task"] * 4 + ["@missing", "@folder", "@file", "@out", "trivia", "unknown"]
)
OPTIONS = {
    "eval": {
        "--task": PATHS,
        "--limit": SMALL_INT,
        "--shots": SMALL_INT,
        "--method": st.sampled_from(["zero-shot", "few-shot", "nine-shot"]),
        "--split": st.sampled_from(["train", "dev", "test", "all"]),
        "--selection": st.sampled_from(["random", "balanced", "nearest", "best"]),
        "--framing": st.sampled_from(["plain", "qa", "label", "json"]),
        "--max-new-tokens": SMALL_INT,
        "--out": PATHS,
        "--plugin": PATHS,
        "--calibrate": st.just(None),
        "--cot": st.just(None),
        "--length-normalize": st.just(None),
        "--dtype": st.sampled_from(["auto", "float32", "bfloat16", "int8"]),
        "--device": st.sampled_from(["auto", "cpu", "cuda", "tpu"]),
    },
    "train": {
        "--task": PATHS,
        "--out": PATHS,
        "--steps": SMALL_INT,
        "--batch-size": SMALL_INT,
        "--eval-every": SMALL_INT,
        "--eval-limit": SMALL_INT,
        "--prompt-length": SMALL_INT,
        "--lr": st.sampled_from(["0.3", "-1", "0", "nan", "x"]),
        "--method": st.sampled_from(["soft-prompt", "id-pt", "lora"]),
        "--init": st.sampled_from(["class-labels", "vocab", "random", "zeros"]),
        "--task-cap": SMALL_INT,
        "--resume": st.just(None),
        "--shared-prompt": st.just(None),
    },
    "tasks": {"--seed": SMALL_INT, "--json": st.just(None)},
    "runs": {"--kind": st.sampled_from(["train", "eval", "compare", "other"])},
    "rerun": {"--backbone": PATHS},
    "scale": {"--out": PATHS},
    "export-peft": {"--task": PATHS},
}
POSITIONAL = {"rerun": 1, "scale": 1, "export-peft": 2}


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    command = draw(st.sampled_from(sorted(OPTIONS)))
    argv = [command] + [draw(PATHS) for _ in range(POSITIONAL.get(command, 0))]
    names = draw(st.lists(st.sampled_from(sorted(OPTIONS[command])), max_size=3, unique=True))
    if command in ("eval", "train") and "--task" not in names:
        names.insert(0, "--task")
    for name in names:
        value = draw(OPTIONS[command][name])
        argv += [name] if value is None else [name, value]
    if command in ("eval", "train"):
        argv += ["--backbone", "tiny"]
        if command == "eval" and "--limit" not in names:
            argv += ["--limit", "2"]  # keep each case to about a second
        if command == "train" and "--steps" not in names:
            argv += ["--steps", "1"]
    return argv


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(argv=command_lines())
def test_any_command_line_exits_0_or_2_without_a_traceback(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with TemporaryDirectory() as folder:
        root = Path(folder)
        (root / "folder").mkdir()
        (root / "file").write_text("not a task\n")
        places = {
            "@task": str(write_toy_task(root, n=12)),
            "@missing": str(root / "missing.yaml"),
            "@folder": str(root / "folder"),
            "@file": str(root / "file"),
            "@out": str(root / "out"),
        }
        line = ["--no-record", *(places.get(token, token) for token in argv)]
        try:
            with chdir(root):  # a relative --out ("trivia") lands here, not in the repository
                code = main(line)
        except SystemExit as exit_:  # argparse: a usage error
            code = exit_.code if isinstance(exit_.code, int) else 2
        event(f"{argv[0]}: exit {code}")
        assert code in (0, 2), line
        if code == 2:
            err = capsys.readouterr().err
            assert "Traceback" not in err and err.strip(), line
