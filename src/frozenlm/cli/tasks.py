"""`frozenlm tasks`: the built-in tasks with their split sizes (`frozenlm.tasks.task_summaries`)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.add_argument("--seed", type=int, default=0, help="split seed")


def run(args: argparse.Namespace) -> int:
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
