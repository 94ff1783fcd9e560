"""The `frozenlm` command: parses arguments, calls one library function, prints."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from frozenlm.cli.supericl import add_supericl_command
from frozenlm.cli.train import add_train_command
from frozenlm.errors import ConfigError, FrozenLMError
from frozenlm.prompts.render import FRAMINGS

log = logging.getLogger("frozenlm")

# Top-level options: not part of a run's command, left out of its record.
_TOP_LEVEL = {"-v": 0, "--verbose": 0, "--no-record": 0, "--runs-dir": 1, "--replay-of": 1}
_NOT_OPTIONS = {"func", "argv", "command", "verbose", "no_record", "runs_dir", "replay_of"}


def _add_backbone(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backbone",
        default="default",
        help="default (embedded SmolLM2-135M-Instruct), tiny (random test model) or a model folder",
    )


def _report(headline: str, data: Any, out: str | None) -> int:
    """Print a report's headline and, with --out, write its JSON atomically."""
    from frozenlm.atomic import atomic_write_json

    print(headline)
    if out:
        atomic_write_json(out, data)
        print(f"wrote {out}")
    return 0


def _record(
    args: argparse.Namespace,
    kind: str,
    backbone: Any,
    tasks: Any,
    metrics: dict[str, Any],
    costs: dict[str, Any],
    outputs: list[str],
) -> None:
    """Write the run record of a finished command (unless --no-record) and print its path."""
    from frozenlm.runs.records import write_record

    if args.no_record:
        return
    options = {k: v for k, v in vars(args).items() if k not in _NOT_OPTIONS}
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


def _record_eval(
    args: argparse.Namespace, backbone: Any, tasks: list[Any], reports: list[dict[str, Any]]
) -> None:
    from frozenlm.runs.records import report_metrics

    costs = {
        "seconds": sum(r.get("seconds", 0.0) for r in reports),
        "examples": sum(r.get("n", 0) for r in reports),
    }
    outputs = [args.out] if args.out else []
    _record(args, "eval", backbone, tasks, report_metrics(reports), costs, outputs)


def _cmd_tasks(args: argparse.Namespace) -> int:
    from frozenlm.tasks import task_summaries

    rows = task_summaries(seed=args.seed)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'task':<10} {'kind':<15} {'train':>6} {'dev':>5} {'test':>5}  labels (=verbalizer)"
    print(header)
    print("-" * len(header))
    for row in rows:
        verbalizers = row["verbalizers"]
        labels = ", ".join(
            label if label == word else f"{label}={word}" for label, word in verbalizers.items()
        )
        print(
            f"{row['name']:<10} {row['kind']:<15} {row['train']:>6} {row['dev']:>5} "
            f"{row['test']:>5}  {labels or '(generation: ' + row['metric'] + ', f1)'}"
        )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from frozenlm.backbone import resolve_backbone
    from frozenlm.evaluation.evaluate import EvalConfig, evaluate
    from frozenlm.tasks import load_task

    if args.plugin:
        return _eval_plugin(args)
    if not args.task:
        raise ConfigError("eval needs --task (or --plugin DIR, which knows its tasks)")

    config = EvalConfig(
        method=args.method,
        shots=args.shots,
        selection=args.selection,
        framing=args.framing,
        chat_template=not args.no_chat_template,
        chain_of_thought=args.cot,
        calibrate=args.calibrate,
        length_normalize=args.length_normalize,
        split=args.split,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    task = load_task(args.task, seed=args.seed)
    backbone = resolve_backbone(args.backbone)
    report = evaluate(backbone, task, config)
    _report(report.headline(), report.to_json(), args.out)
    _record_eval(args, backbone, [task], [report.to_json()])
    return 0


def _eval_plugin(args: argparse.Namespace) -> int:
    from frozenlm.backbone import resolve_backbone
    from frozenlm.evaluation.evaluate import EvalConfig, evaluate
    from frozenlm.plugins.registry import load_plugin
    from frozenlm.tasks import load_task

    backbone = resolve_backbone(args.backbone)
    if "," in args.plugin:
        return _eval_ensemble(args, backbone)
    plugin, checkpoint = load_plugin(
        args.plugin, backbone, allow_other_backbone=args.allow_other_backbone
    )
    sources: dict[str, str] = checkpoint.meta["task_sources"]
    names = args.task.split(",") if args.task else list(sources)
    train_config = checkpoint.meta.get("train_config", {})
    reports = []
    tasks = []
    any_task = plugin.serves_any_task
    for name in names:
        if name not in sources and not any_task:
            raise ConfigError(
                f"the plug-in in '{args.plugin}' was trained for {', '.join(sources)}, not '{name}'"
            )
        config = EvalConfig(
            split=args.split,
            limit=args.limit,
            chat_template=train_config.get("chat_template", True),
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
        )
        # An ID-PT generator (it reads the instruction) or a shared prompt serves unseen tasks.
        task = load_task(sources.get(name, name), seed=train_config.get("seed", 0))
        report = evaluate(backbone, task, config, plugin=plugin)
        reports.append(report)
        tasks.append(task)
    data = (
        reports[0].to_json() if len(reports) == 1 else {"reports": [r.to_json() for r in reports]}
    )
    _report("\n".join(r.headline() for r in reports), data, args.out)
    _record_eval(args, backbone, tasks, [r.to_json() for r in reports])
    return 0


def _eval_ensemble(args: argparse.Namespace, backbone: Any) -> int:
    from frozenlm.evaluation.ensemble import evaluate_ensemble
    from frozenlm.evaluation.evaluate import EvalConfig
    from frozenlm.plugins.registry import load_plugin
    from frozenlm.plugins.soft_prompt import SoftPromptSet
    from frozenlm.tasks import load_task

    if not args.task or "," in args.task:
        raise ConfigError("an ensemble (--plugin A,B,...) is evaluated on one --task")
    folders = args.plugin.split(",")
    prompts = []
    for folder in folders:
        plugin, checkpoint = load_plugin(
            folder, backbone, allow_other_backbone=args.allow_other_backbone
        )
        if args.task not in checkpoint.meta["task_sources"]:
            raise ConfigError(f"the plug-in in '{folder}' has no prompt for task '{args.task}'")
        if not isinstance(plugin, SoftPromptSet):
            kind = checkpoint.meta["kind"]
            raise ConfigError(f"'{folder}' holds a {kind}; only soft prompts form an ensemble")
        prompts.append(plugin.prompt(args.task))
        source = checkpoint.meta["task_sources"][args.task]
        chat = checkpoint.meta.get("train_config", {}).get("chat_template", True)
    config = EvalConfig(split=args.split, limit=args.limit, chat_template=chat, seed=args.seed)
    task = load_task(source)
    report = evaluate_ensemble(backbone, task, prompts, config, names=folders)
    _report(report.headline(), report.to_json(), args.out)
    _record_eval(args, backbone, [task], [report.to_json()])
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from frozenlm.backbone import resolve_backbone
    from frozenlm.compare.runner import (
        CompareConfig,
        compare,
        parse_methods,
        parse_train_sizes,
    )

    config = CompareConfig(
        tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
        methods=parse_methods(args.methods),
        budget=args.budget,
        train_sizes=parse_train_sizes(args.train_sizes) if args.train_sizes else None,
        domain_shift=not args.no_domain_shift,
        seed=args.seed,
    )
    backbone = resolve_backbone(args.backbone)
    start = time.perf_counter()
    report = compare(backbone, config, args.out)
    text = report.read_text()
    print(text.split("## Costs", 1)[0].rstrip())
    print(f"\nfull report: {report} (plots and results.json beside it)")
    results = json.loads((report.parent / "results.json").read_text())
    done = [c for c in results["cells"] if c["status"] == "done"]
    metrics = {
        f"{c['task']}/{c['method']}/n={c['train_size']}": {c["test"]["metric"]: c["test"]}
        for c in done
    }
    hashes = {c["task"]: c["split_hash"] for c in results["cells"]}
    costs = {"seconds": time.perf_counter() - start, "cells": len(results["cells"])}
    _record(args, "compare", backbone, hashes, metrics, costs, [args.out])
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
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


def _cmd_rerun(args: argparse.Namespace) -> int:
    from frozenlm.runs.records import load_record, replay_argv

    record = load_record(args.record, args.runs_dir)
    argv = replay_argv(record, args.backbone)
    top = ["--replay-of", record.replay_of or record.id]
    if args.runs_dir is not None:
        top += ["--runs-dir", args.runs_dir]
    if args.no_record:
        top.append("--no-record")
    print(f"replaying {record.id}: frozenlm {' '.join(argv)}")
    return main([*top, *argv])


def _cmd_scale(args: argparse.Namespace) -> int:
    from frozenlm.runs.records import experiment_records
    from frozenlm.runs.scale import write_scale

    records = experiment_records(args.records, args.runs_dir)
    print(write_scale(records, args.out).rstrip())
    print(f"\nwrote {args.out}/scale.md and {args.out}/scale.png")
    return 0


def _cmd_export_peft(args: argparse.Namespace) -> int:
    from frozenlm.backbone import resolve_backbone
    from frozenlm.plugins.peft import export_peft_plugin

    backbone = resolve_backbone(args.backbone)
    task = export_peft_plugin(args.plugin_dir, args.out_dir, backbone, args.task)
    print(f"exported the '{task}' prompt as a PEFT prompt-tuning adapter to {args.out_dir}")
    return 0


def _cmd_import_peft(args: argparse.Namespace) -> int:
    from frozenlm.backbone import resolve_backbone
    from frozenlm.plugins.peft import import_peft_plugin

    backbone = resolve_backbone(args.backbone)
    import_peft_plugin(args.peft_dir, args.out_dir, backbone, args.task)
    print(f"imported {args.peft_dir} as a frozenlm soft prompt for '{args.task}' in {args.out_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
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

    tasks = sub.add_parser("tasks", help="list the built-in tasks with their split sizes")
    tasks.add_argument("--json", action="store_true", help="print JSON for machines")
    tasks.add_argument("--seed", type=int, default=0, help="split seed")
    tasks.set_defaults(func=_cmd_tasks)

    ev = sub.add_parser("eval", help="evaluate prompt design on a task")
    ev.add_argument("--task", help="a built-in task name or a task file (YAML/JSON)")
    ev.add_argument(
        "--plugin",
        help="a trained plug-in folder (from frozenlm train); several, comma-separated, are "
        "evaluated as a prompt ensemble",
    )
    ev.add_argument(
        "--allow-other-backbone",
        action="store_true",
        help="load a plug-in trained on other backbone weights anyway",
    )
    ev.add_argument("--method", choices=["zero-shot", "few-shot"], default="zero-shot")
    ev.add_argument("--shots", type=int, default=4, help="demonstrations for few-shot")
    ev.add_argument(
        "--selection",
        choices=["random", "balanced", "nearest"],
        default="balanced",
        help="how demonstrations are chosen (nearest: by MiniLM embedding)",
    )
    ev.add_argument(
        "--framing", choices=FRAMINGS, default="plain", help="qa: Q: ... A:; label: ... Label:"
    )
    ev.add_argument(
        "--no-chat-template", action="store_true", help="do not wrap prompts in the chat template"
    )
    ev.add_argument("--cot", action="store_true", help="chain of thought (generation tasks)")
    ev.add_argument("--calibrate", action="store_true", help="contextual calibration")
    ev.add_argument(
        "--length-normalize", action="store_true", help="mean log-probability per label token"
    )
    ev.add_argument("--split", default="test", choices=["train", "dev", "test"])
    ev.add_argument("--limit", type=int, default=None, help="evaluate the first N examples")
    ev.add_argument("--max-new-tokens", type=int, default=32, help="generation length limit")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", default=None, help="write the report as JSON to this file")
    _add_backbone(ev)
    ev.set_defaults(func=_cmd_eval)

    add_train_command(sub, _add_backbone)

    cp = sub.add_parser(
        "compare",
        help="the main job: every method on every task, quality and cost side by side",
        description="Run prompt design, soft prompts, PEFT prompt tuning, ID-PT, LoRA, full "
        "fine-tuning, the plug-in classifier and SuperICL on the same splits and seeds; write "
        "report.md, results.json and plots to "
        "OUT. Finished cells are kept: the same command continues an interrupted run.",
    )
    cp.add_argument("--tasks", default="sentiment", help="task names or files, comma-separated")
    cp.add_argument("--methods", default="all", help="'all' or a comma-separated list")
    cp.add_argument(
        "--budget",
        choices=["quick", "full"],
        default="quick",
        help="quick: minutes, subsampled test sets; full: the published recipe's 150 steps",
    )
    cp.add_argument(
        "--train-sizes", help="labelled training examples for the learning curves, e.g. 16,64,all"
    )
    cp.add_argument(
        "--no-domain-shift",
        action="store_true",
        help="skip the sentiment <-> tweets domain-shift table",
    )
    cp.add_argument("--seed", type=int, default=0)
    cp.add_argument("--out", required=True, help="output folder (cells, report, plots)")
    _add_backbone(cp)
    cp.set_defaults(func=_cmd_compare)

    add_supericl_command(sub, _add_backbone)

    ex = sub.add_parser("export-peft", help="write a trained soft prompt as a PEFT adapter")
    ex.add_argument("plugin_dir", metavar="DIR", help="a soft-prompt folder from frozenlm train")
    ex.add_argument("out_dir", metavar="OUT", help="the PEFT adapter folder to write")
    ex.add_argument("--task", help="which task's prompt (needed when DIR has several)")
    _add_backbone(ex)
    ex.set_defaults(func=_cmd_export_peft)

    im = sub.add_parser("import-peft", help="turn a PEFT prompt-tuning adapter into a plug-in")
    im.add_argument("peft_dir", metavar="PEFT_DIR", help="a PEFT prompt-tuning adapter folder")
    im.add_argument("out_dir", metavar="OUT", help="the frozenlm checkpoint folder to write")
    im.add_argument("--task", required=True, help="the task the prompt is for (name or file)")
    _add_backbone(im)
    im.set_defaults(func=_cmd_import_peft)

    rs = sub.add_parser("runs", help="list the run records (train, eval, compare)")
    rs.add_argument("--kind", choices=["train", "eval", "compare"], help="only this kind")
    rs.add_argument("--json", action="store_true", help="print the records as JSON")
    rs.set_defaults(func=_cmd_runs)

    rr = sub.add_parser(
        "rerun",
        help="replay a recorded run on another backbone",
        description="Run a record's command again with --backbone replaced; every --out gets "
        "the new backbone's name in it, so the original's output is kept.",
    )
    rr.add_argument("record", metavar="RECORD", help="a record id (see frozenlm runs) or file")
    rr.add_argument("--backbone", required=True, help="default, tiny or a model folder")
    rr.set_defaults(func=_cmd_rerun)

    sc = sub.add_parser(
        "scale",
        help="one experiment across backbones: a table and a plot against model size",
        description="Table and plot of the same experiment's records on several backbones. "
        "With one RECORD, its replays (frozenlm rerun) are included.",
    )
    sc.add_argument("records", metavar="RECORD", nargs="+", help="record ids or files")
    sc.add_argument("--out", default="runs/scale", help="folder for scale.md and scale.png")
    sc.set_defaults(func=_cmd_scale)
    # A recorded command must mean the same later, when new options could make abbreviations
    # ambiguous: options are spelled out in full.
    for command_parser in sub.choices.values():
        command_parser.allow_abbrev = False
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
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = _command_argv(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code: Any = args.func(args)
    except FrozenLMError as err:
        print(f"frozenlm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("frozenlm: interrupted", file=sys.stderr)
        return 130
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
