"""The `frozenlm` command: parses arguments, calls one library function, prints."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from frozenlm.errors import FrozenLMError

log = logging.getLogger("frozenlm")


def _add_backbone(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backbone",
        default="default",
        help="default (embedded SmolLM2-135M-Instruct), tiny (random test model) or a model folder",
    )


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
    from frozenlm.atomic import atomic_write_json
    from frozenlm.backbone import resolve_backbone
    from frozenlm.evaluate import EvalConfig, evaluate
    from frozenlm.tasks import load_task

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
    print(report.headline())
    if args.out:
        atomic_write_json(args.out, report.to_json())
        print(f"wrote {args.out}")
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
    ev.add_argument("--task", required=True, help="a built-in task name or a task file (YAML/JSON)")
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
