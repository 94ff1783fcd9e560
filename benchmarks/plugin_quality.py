"""Quality of every way of specialising the embedded model, per task and train size, side by side.

For each task x train size x method x seed: the same balanced sample of train rows (as
`frozenlm compare` draws it), the same rows in the same order, the same steps and batch for
every trained method; test accuracy and macro-F1 with bootstrap intervals, the majority class,
train seconds, peak memory growth, and any divergence the loop recovered from.

    python benchmarks/plugin_quality.py --out docs/results/quality/quality.json

A method is a `compare` method name, optionally with overrides after a colon: plug-in config
fields and `TrainConfig` fields, e.g. `soft-prompt:position=input`, `prefix:lr=0.003,length=20`
(the recipe trials). Every finished cell is written under --cells at once, so an interrupted run
continues where it stopped; --out is written (atomically) after every cell.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from frozenlm.atomic import atomic_write_json
from frozenlm.backbone import Backbone
from frozenlm.codec import to_json
from frozenlm.compare.methods import METHODS, Budget, Method, TrainedPlugin
from frozenlm.compare.runner import subsample
from frozenlm.evaluation.evaluate import evaluate
from frozenlm.measure import PeakMemory
from frozenlm.metrics import bootstrap, macro_f1, majority_label
from frozenlm.tasks import load_task
from frozenlm.training.config import TrainConfig

TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def method_from_spec(spec: str) -> Method:
    """`name` or `name:key=value,...` -> a compare method (plug-ins take config and train
    overrides; other methods take none)."""
    name, _, rest = spec.partition(":")
    if name not in METHODS:
        raise SystemExit(f"unknown method '{name}'; expected one of {', '.join(METHODS)}")
    if not rest:
        return METHODS[name]
    base = METHODS[name]
    if not isinstance(base, TrainedPlugin):
        raise SystemExit(f"method '{name}' takes no overrides (only plug-ins do)")
    overrides = dict(part.split("=", 1) for part in rest.split(","))
    train = {k: _value(v) for k, v in overrides.items() if k in TRAIN_FIELDS}
    config = base.config | {k: _value(v) for k, v in overrides.items() if k not in TRAIN_FIELDS}
    method = TrainedPlugin(name, config, base.train_overrides | train)
    return method


def run_cell(
    backbone: Backbone, task_name: str, spec: str, size: int, seed: int, budget: Budget, work: Path
) -> dict[str, Any]:
    task = load_task(task_name, seed=0)
    data = subsample(task, size, seed)
    method = method_from_spec(spec)
    start = time.perf_counter()
    with PeakMemory() as peak:
        fitted = method.fit(backbone, data, budget, seed, work)
    seconds = time.perf_counter() - start
    config = replace(fitted.eval_config, split="test", limit=budget.test_limit)
    if fitted.evaluator is not None:
        report = fitted.evaluator(data, config)
    else:
        report = evaluate(fitted.backbone, data, config, plugin=fitted.plugin)
    labels = list(task.spec.labels)
    gold = [p["gold"] for p in report.predictions]
    predicted = [p["predicted"] for p in report.predictions]
    majority = majority_label([ex.label for ex in task.train])
    return {
        "task": task_name,
        "method": spec,
        "size": size,
        "seed": seed,
        "n": report.n,
        "accuracy": report.metrics["accuracy"].to_json(),
        "macro_f1": macro_f1(gold, predicted, labels),
        "majority": bootstrap([float(g == majority) for g in gold], seed=seed).to_json(),
        "majority_macro_f1": macro_f1(gold, [majority] * len(gold), labels),
        "predicted_labels": len(set(predicted)),
        "fit_seconds": seconds,
        "train_seconds": fitted.train_seconds,
        "peak_mb": peak.mb,
        "peak_exact": peak.exact,
        "best_step": fitted.best_step,
        "recoveries": fitted.recoveries,
        "trainable_parameters": fitted.trainable_parameters,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="sentiment,trec,topic")
    parser.add_argument("--sizes", default="16,64,256,1000")
    parser.add_argument(
        "--methods", default="peft-prompt,soft-prompt,prefix,lora", help="comma-separated specs"
    )
    parser.add_argument(
        "--full-ft-sizes", default="1000", help="sizes at which full fine-tuning also runs"
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--dev-limit", type=int, default=100)
    parser.add_argument("--test-limit", type=int, default=200)
    parser.add_argument("--cells", default="runs/plugin_quality", help="one JSON per cell")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    budget = Budget(
        "quality",
        steps=args.steps,
        batch_size=args.batch_size,
        eval_every=args.eval_every,
        dev_limit=args.dev_limit,
        test_limit=args.test_limit,
        train_sizes=(),
    )
    methods = [m for m in args.methods.split(";" if ";" in args.methods else ",") if m]
    sizes = [int(s) for s in args.sizes.split(",")]
    full_ft = {int(s) for s in args.full_ft_sizes.split(",") if s}
    seeds = [int(s) for s in args.seeds.split(",")]
    backbone = Backbone.load()
    cells_dir = Path(args.cells)
    results: dict[str, Any] = {
        "backbone": backbone.name,
        "fingerprint": backbone.fingerprint,
        "budget": to_json(budget),
        "cells": [],
    }
    plan = [
        (task, spec, size, seed)
        for task in args.tasks.split(",")
        for size in sizes
        for spec in methods + (["full-ft"] if size in full_ft else [])
        for seed in seeds
    ]
    for i, (task, spec, size, seed) in enumerate(plan):
        safe = spec.replace(":", "__").replace(",", "_").replace("=", "-")
        path = cells_dir / task / f"{safe}__{size}__seed{seed}.json"
        if path.is_file():
            cell = json.loads(path.read_text())
        else:
            print(f"[{i + 1}/{len(plan)}] {task} {spec} size {size} seed {seed}", flush=True)
            work = cells_dir / "work" / task / f"{safe}__{size}__seed{seed}"
            cell = run_cell(backbone, task, spec, size, seed, budget, work)
            atomic_write_json(path, cell)
            acc, majority = cell["accuracy"]["value"], cell["majority"]["value"]
            print(
                f"    accuracy {acc:.3f} (majority {majority:.3f}), "
                f"macro-F1 {cell['macro_f1']:.3f}, {cell['fit_seconds']:.0f} s",
                flush=True,
            )
        results["cells"].append(cell)
        atomic_write_json(Path(args.out), results)


if __name__ == "__main__":
    main()
