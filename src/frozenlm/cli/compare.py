"""`frozenlm compare`: every method on every task (`frozenlm.compare.runner.compare`)."""

from __future__ import annotations

import argparse

from frozenlm.cli.common import add_backbone, check_output_folder, load_backbone, record

DESCRIPTION = (
    "Run prompt design, soft prompts, PEFT prompt tuning, ID-PT, LoRA, full fine-tuning, the "
    "plug-in classifier and SuperICL on the same splits and seeds; write report.md, "
    "results.json and plots to OUT. Finished cells are kept: the same command continues an "
    "interrupted run."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from frozenlm.compare.runner import CompareConfig

    parser.description = DESCRIPTION
    parser.add_argument(
        "--tasks",
        default=",".join(CompareConfig.tasks),
        help="task names or files, comma-separated; the QA text tasks nq-closed and nq-open too "
        "(default: %(default)s)",
    )
    parser.add_argument("--methods", default="all", help="'all' or a comma-separated list")
    parser.add_argument(
        "--budget",
        choices=["quick", "full"],
        default=CompareConfig.budget,
        help="quick: minutes, subsampled test sets; full: the published recipe's 150 steps",
    )
    parser.add_argument(
        "--train-sizes", help="labelled training examples for the learning curves, e.g. 16,64,all"
    )
    parser.add_argument(
        "--no-domain-shift",
        action="store_true",
        help="skip the sentiment <-> tweets domain-shift table",
    )
    parser.add_argument("--seed", type=int, default=CompareConfig.seed)
    parser.add_argument("--out", required=True, help="output folder (cells, report, plots)")
    parser.add_argument(
        "--shard",
        metavar="K/N",
        help="run only the K-th of N disjoint sets of cells into a shared --out (one job of a "
        "job array, on any machine); the shard that finds every cell done writes the report",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="write the report of --out from its finished cells (no backbone is loaded); "
        "refused while any cell is missing",
    )
    add_backbone(parser)


def run(args: argparse.Namespace) -> int:
    from frozenlm.compare.runner import (
        CompareConfig,
        Shard,
        compare,
        parse_methods,
        parse_train_sizes,
        report_only,
    )

    if args.report_only:
        if args.shard:
            from frozenlm.errors import ConfigError

            raise ConfigError("--report-only runs no cells; drop --shard")
        assembled = report_only(args.out)
        print(assembled.summary)
        print(f"\nfull report: {assembled.report} ({len(assembled.cells)} cells)")
        return 0
    shard = Shard.parse(args.shard) if args.shard else None
    check_output_folder(args.out)
    config = CompareConfig(
        tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
        methods=parse_methods(args.methods),
        budget=args.budget,
        train_sizes=parse_train_sizes(args.train_sizes) if args.train_sizes else None,
        domain_shift=not args.no_domain_shift,
        seed=args.seed,
    )
    backbone = load_backbone(args)
    result = compare(backbone, config, args.out, shard)
    if result.report is None:
        print(
            f"shard {args.shard} finished; {result.missing} cells of other shards are not done "
            f"yet: the last shard (or frozenlm compare --report-only --out {args.out}) writes "
            "the report"
        )
    else:
        print(result.summary)
        print(f"\nfull report: {result.report} (plots and results.json beside it)")
    done = [c for c in result.cells if c["status"] == "done"]
    metrics = {
        f"{c['task']}/{c['method']}/n={c['train_size']}": {c["test"]["metric"]: c["test"]}
        for c in done
    }
    hashes = {c["task"]: c["split_hash"] for c in result.cells}
    costs = {"seconds": result.seconds, "cells": len(result.cells)}
    record(args, "compare", backbone, hashes, metrics, costs, [args.out])
    return 0
