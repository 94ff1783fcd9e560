"""The `frozenlm` command: parses arguments, calls one library function, prints."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from frozenlm.errors import ConfigError, FrozenLMError

log = logging.getLogger("frozenlm")


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
    from frozenlm.evaluate import EvalConfig, evaluate
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
    return _report(report.headline(), report.to_json(), args.out)


def _eval_plugin(args: argparse.Namespace) -> int:
    from frozenlm.backbone import resolve_backbone
    from frozenlm.evaluate import EvalConfig, evaluate
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
    for name in names:
        if name not in sources:
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
        task = load_task(sources[name], seed=train_config.get("seed", 0))
        report = evaluate(backbone, task, config, plugin=plugin)  # type: ignore[arg-type]
        reports.append(report)
    data = (
        reports[0].to_json() if len(reports) == 1 else {"reports": [r.to_json() for r in reports]}
    )
    return _report("\n".join(r.headline() for r in reports), data, args.out)


def _eval_ensemble(args: argparse.Namespace, backbone: Any) -> int:
    from frozenlm.ensemble import evaluate_ensemble
    from frozenlm.evaluate import EvalConfig
    from frozenlm.plugins.registry import load_plugin
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
        prompts.append(plugin.soft_tokens(args.task, [None])[0])  # type: ignore[operator]
        source = checkpoint.meta["task_sources"][args.task]
        chat = checkpoint.meta.get("train_config", {}).get("chat_template", True)
    config = EvalConfig(split=args.split, limit=args.limit, chat_template=chat, seed=args.seed)
    report = evaluate_ensemble(backbone, load_task(source), prompts, config, names=folders)
    return _report(report.headline(), report.to_json(), args.out)


def _cmd_train(args: argparse.Namespace) -> int:
    from frozenlm.backbone import resolve_backbone
    from frozenlm.plugins.soft_prompt import SoftPromptConfig
    from frozenlm.train import TrainConfig, train_plugin

    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        eval_every=args.eval_every,
        eval_limit=args.eval_limit,
        patience=args.patience,
        seed=args.seed,
        chat_template=not args.no_chat_template,
    )
    plugin_config = SoftPromptConfig(length=args.prompt_length, init=args.init).to_json()
    backbone = resolve_backbone(args.backbone)
    result = train_plugin(
        backbone,
        args.task.split(","),
        args.method,
        plugin_config,
        config,
        args.out,
        resume=args.resume,
    )
    print(
        f"best dev {result.best_metric:.4f} at step {result.best_step} "
        f"({result.steps_done} steps{', stopped early' if result.stopped_early else ''}, "
        f"{result.seconds:.0f} s); best checkpoint in {args.out}/best"
    )
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
    report = compare(backbone, config, args.out)
    text = report.read_text()
    print(text.split("## Costs", 1)[0].rstrip())
    print(f"\nfull report: {report} (plots and results.json beside it)")
    return 0


def _cmd_export_peft(args: argparse.Namespace) -> int:
    from frozenlm.backbone import resolve_backbone
    from frozenlm.plugins.registry import export_peft_plugin

    backbone = resolve_backbone(args.backbone)
    task = export_peft_plugin(args.plugin_dir, args.out_dir, backbone, args.task)
    print(f"exported the '{task}' prompt as a PEFT prompt-tuning adapter to {args.out_dir}")
    return 0


def _cmd_import_peft(args: argparse.Namespace) -> int:
    from frozenlm.backbone import resolve_backbone
    from frozenlm.plugins.registry import import_peft_plugin

    backbone = resolve_backbone(args.backbone)
    import_peft_plugin(args.peft_dir, args.out_dir, backbone, args.task)
    print(f"imported {args.peft_dir} as a frozenlm soft prompt for '{args.task}' in {args.out_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="frozenlm",
        description="Get the most out of one frozen language model, with measured numbers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
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
    ev.add_argument("--framing", choices=["plain", "qa"], default="plain", help="qa: Q: ... A:")
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

    tr = sub.add_parser("train", help="train a plug-in (soft prompt) on one or more tasks")
    tr.add_argument("--task", required=True, help="task names or files, comma-separated")
    tr.add_argument("--method", choices=["soft-prompt"], default="soft-prompt")
    tr.add_argument("--out", required=True, help="output folder (best/ and last/ checkpoints)")
    tr.add_argument("--prompt-length", type=int, default=20, help="soft prompt vectors")
    tr.add_argument("--init", choices=["class-labels", "vocab", "random"], default="class-labels")
    tr.add_argument("--steps", type=int, default=150, help="optimizer steps at most")
    tr.add_argument("--batch-size", type=int, default=8)
    tr.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    tr.add_argument("--optimizer", choices=["adafactor", "adamw"], default="adafactor")
    tr.add_argument("--lr", type=float, default=0.3, help="learning rate (Lester: 0.3)")
    tr.add_argument("--weight-decay", type=float, default=1e-5)
    tr.add_argument("--eval-every", type=int, default=25, help="dev evaluation every N steps")
    tr.add_argument("--eval-limit", type=int, default=200, help="dev examples per evaluation")
    tr.add_argument("--patience", type=int, default=4, help="evaluations without improvement")
    tr.add_argument("--no-chat-template", action="store_true")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--resume", action="store_true", help="continue from OUT/last")
    _add_backbone(tr)
    tr.set_defaults(func=_cmd_train)

    cp = sub.add_parser(
        "compare",
        help="the main job: every method on every task, quality and cost side by side",
        description="Run prompt design, soft prompts, PEFT prompt tuning, LoRA and full "
        "fine-tuning on the same splits and seeds; write report.md, results.json and plots to "
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
