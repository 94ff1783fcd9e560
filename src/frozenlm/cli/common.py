"""What every command shares: the backbone options, printing a report, writing a run record.

Command modules import this module, never `cli/main.py`. Library modules are imported inside
functions, so that building the parser (and `frozenlm --help`) does not load torch.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from frozenlm.backbone import Backbone
    from frozenlm.tasks import Task

DTYPES = ("auto", "float32", "bfloat16", "float16")
"""`--dtype` choices: "auto" and `frozenlm.devices.DTYPES` (not imported: it loads torch)."""
# Namespace entries that are not a run's options: left out of its record's config.
NOT_OPTIONS = frozenset(
    {"func", "argv", "command", "verbose", "no_record", "runs_dir", "replay_of"}
)


def device_name(text: str) -> str:
    """`--device`: auto, cpu, cuda, cuda:N or mps."""
    if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", text):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got '{text}'")


def add_device_options(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """`--device` and `--dtype` (`default` None: keep what a recorded run used)."""
    keep = " (default: the record's)" if default is None else " (default: %(default)s)"
    parser.add_argument(
        "--device",
        type=device_name,
        default=default,
        metavar="auto|cpu|cuda|cuda:N|mps",
        help="where the backbone runs; auto: cuda if available, else mps, else cpu" + keep,
    )
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default=default,
        help="the backbone's weights; auto: bfloat16 on a CUDA device that supports it, else "
        "float32" + keep,
    )


def add_backbone(parser: argparse.ArgumentParser) -> None:
    """`--backbone`, `--device` and `--dtype`, on every command that loads a backbone."""
    parser.add_argument(
        "--backbone",
        default="default",
        help="default (embedded SmolLM2-135M-Instruct), tiny (random test model), a name from "
        "frozenlm models (e.g. qwen2.5-coder-0.5b) or a model folder",
    )
    parser.add_argument(
        "--allow-pickle-weights",
        action="store_true",
        help="load a backbone folder's pickled pytorch_model.bin (unsafe: pickle runs code); "
        "safetensors are always preferred",
    )
    add_device_options(parser)


def load_backbone(args: argparse.Namespace) -> Backbone:
    """The backbone the backbone options name."""
    from frozenlm.backbone import resolve_backbone

    return resolve_backbone(
        args.backbone,
        device=args.device,
        dtype=args.dtype,
        allow_pickle=args.allow_pickle_weights,
    )


def check_output_file(path: str | None, option: str = "--out") -> None:
    """Refuse, before any work, an output file that cannot be written (`path` a folder, its
    parent a file): ConfigError naming `option`."""
    from frozenlm.atomic import check_output_file as check

    if path:
        check(path, option)


def check_output_folder(
    path: str | None, option: str = "--out", *, marker: str | None = None
) -> None:
    """Refuse, before any work, an output folder that cannot be made (`path` a file, its
    parent a file; with `marker`, a non-empty folder without it, which would not be replaced):
    ConfigError naming `option`."""
    from frozenlm.atomic import check_output_folder as check

    if path:
        check(path, option, marker=marker)


def report(headline: str, data: Any, out: str | None) -> None:
    """Print a report's headline and, with --out, write its JSON atomically."""
    from frozenlm.atomic import atomic_write_json

    print(headline)
    if out:
        atomic_write_json(out, data)
        print(f"wrote {out}")


def record(
    args: argparse.Namespace,
    kind: str,
    backbone: Backbone,
    tasks: Sequence[Task] | Mapping[str, str],
    metrics: Mapping[str, Any],
    costs: Mapping[str, Any],
    outputs: Sequence[str],
) -> None:
    """Write the run record of a finished command (unless --no-record) and print its path."""
    from frozenlm.runs.records import write_record

    if args.no_record:
        return
    options = {k: v for k, v in vars(args).items() if k not in NOT_OPTIONS}
    path = write_record(
        kind,
        args.argv,
        backbone=backbone,
        tasks=tasks,
        config=options,
        metrics=metrics,
        costs=costs,
        outputs=outputs,
        replay_of=args.replay_of,
        runs=args.runs_dir,
    )
    print(f"record: {path}")


def record_eval(
    args: argparse.Namespace,
    backbone: Backbone,
    tasks: Sequence[Task],
    reports: Sequence[Mapping[str, Any]],
) -> None:
    """The record of an evaluation, from its reports' JSON."""
    from frozenlm.runs.records import report_metrics

    costs = {
        "seconds": sum(r.get("seconds", 0.0) for r in reports),
        "examples": sum(r.get("n", 0) for r in reports),
    }
    outputs = [args.out] if args.out else []
    record(args, "eval", backbone, tasks, report_metrics(reports), costs, outputs)
