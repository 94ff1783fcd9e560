"""`frozenlm runs`, `rerun` and `scale`: the run records (`frozenlm.runs.records`) listed,
replayed on another backbone, and lined up by backbone size (`frozenlm.runs.scale.write_scale`).

A replay is the recorded command line with its options rewritten, so it lives here, with the
CLI that knows its options; from Python, a rerun is `frozenlm.cli.main.main(["rerun", ...])`.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from frozenlm.cli.common import add_device_options

if TYPE_CHECKING:
    from frozenlm.runs.records import RunRecord

# Options a replay replaces or drops: option -> number of values it takes.
_REPLACED = {"--backbone": 1, "--resume": 0, "--overwrite": 0, "--device": 1, "--dtype": 1}


def add_runs_arguments(parser: argparse.ArgumentParser) -> None:
    from frozenlm.runs.records import KINDS

    parser.add_argument("--kind", choices=KINDS, help="only this kind")
    parser.add_argument("--json", action="store_true", help="print the records as JSON")


def run_runs(args: argparse.Namespace) -> int:
    from frozenlm.runs.records import list_records

    records = list_records(args.runs_dir, kind=args.kind)
    if args.json:
        print(json.dumps([r.to_json() for r in records], indent=2))
        return 0
    if not records:
        print("no run records yet (train, eval and compare write them)")
        return 0
    header = f"{'id':<29} {'kind':<7} {'backbone':<28} {'headline':<24} experiment"
    print(header)
    print("-" * len(header))
    for r in records:
        print(f"{r.id:<29} {r.kind:<7} {r.backbone['name']:<28} {r.headline():<24} {r.experiment}")
    return 0


def add_rerun_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Run a record's command again with --backbone replaced; every --out gets the new "
        "backbone's name in it, so the original's output is kept."
    )
    parser.add_argument("record", metavar="RECORD", help="a record id (see frozenlm runs) or file")
    parser.add_argument(
        "--backbone",
        required=True,
        help="default, tiny, a name from frozenlm models or a model folder",
    )
    add_device_options(parser, default=None)


def run_rerun(args: argparse.Namespace, main: Callable[[Sequence[str]], int]) -> int:
    """Replay the record through `main` (the CLI's entry point, passed in by it)."""
    from frozenlm.runs.records import load_record

    record = load_record(args.record, args.runs_dir)
    argv = replay_argv(record, args.backbone, device=args.device, dtype=args.dtype)
    top = ["--replay-of", record.replay_of or record.id]
    if args.runs_dir is not None:
        top += ["--runs-dir", args.runs_dir]
    if args.no_record:
        top.append("--no-record")
    print(f"replaying {record.id}: frozenlm {' '.join(argv)}")
    return main([*top, *argv])


def add_scale_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Tables and a plot of experiments' records on several backbones: each RECORD comes "
        "with its replays (frozenlm rerun); several experiments share one table per task."
    )
    parser.add_argument("records", metavar="RECORD", nargs="+", help="record ids or files")
    parser.add_argument("--out", default="runs/scale", help="folder for scale.md and scale.png")


def run_scale(args: argparse.Namespace) -> int:
    from frozenlm.runs.records import experiment_records
    from frozenlm.runs.scale import write_scale

    records = experiment_records(args.records, args.runs_dir)
    print(write_scale(records, args.out).rstrip())
    print(f"\nwrote {args.out}/scale.md and {args.out}/scale.png")
    return 0


def backbone_slug(spec: str) -> str:
    """A short file-name-safe name for `--backbone SPEC`: "tiny", "default" or a folder's name."""
    name = Path(spec.rstrip("/\\")).name or spec
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip(".-") or "backbone"


def _with_suffix(path: str, suffix: str, *, is_file: bool) -> str:
    """`x.json` -> `x.SUFFIX.json` (files); `runs/three` -> `runs/three.SUFFIX` (folders)."""
    trimmed = path.rstrip("/\\")
    p = Path(trimmed)
    if is_file and p.suffix:
        return str(p.with_name(f"{p.stem}.{suffix}{p.suffix}"))
    return f"{trimmed}.{suffix}"


def replay_argv(
    record: RunRecord,
    backbone: str,
    out_suffix: str | None = None,
    *,
    device: str | None = None,
    dtype: str | None = None,
) -> list[str]:
    """The record's command on `backbone`: `--backbone` replaced, `--resume` and `--overwrite`
    dropped, and every `--out` given `out_suffix` (default: `backbone_slug(backbone)`) so a
    replay never overwrites the original's output. Each `--plugin` folder of `frozenlm eval`
    gets the same suffix: it names the output of the train run's replay on that backbone, so
    replaying a train record and then the evals that read its plug-in repeats the whole chain
    (`qa train-reader` and `qa eval --plugin` alike)
    (SuperICL's `--plugin` is a user's model folder and is kept). `--device` and `--dtype` stay
    as recorded unless given. Top-level options (`--runs-dir`, ...) are not included."""
    suffix = out_suffix or backbone_slug(backbone)
    # eval and qa eval --out are JSON files; train and compare write folders
    is_file = record.kind in ("eval", "qa-eval")
    evaluates = record.command[:1] == ["eval"] or record.command[:2] == ["qa", "eval"]
    given = {"--device": device, "--dtype": dtype}
    argv: list[str] = []
    tokens = iter(record.command)
    for token in tokens:
        option, eq, value = token.partition("=")
        if option in _REPLACED:
            value = value if eq or not _REPLACED[option] else next(tokens, "")
            if option in given:
                given[option] = given[option] or value
        elif option == "--out":
            value = value if eq else next(tokens, "")
            argv += ["--out", _with_suffix(value, suffix, is_file=is_file)]
        elif option == "--plugin" and evaluates:
            value = value if eq else next(tokens, "")
            folders = [_with_suffix(v, suffix, is_file=False) for v in value.split(",")]
            argv += ["--plugin", ",".join(folders)]
        else:
            argv.append(token)
    for option, chosen in given.items():
        if chosen is not None:
            argv += [option, chosen]
    return [*argv, "--backbone", backbone]
