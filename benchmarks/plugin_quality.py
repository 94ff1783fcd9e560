"""Quality of every way of specialising the embedded model, per task and train size, side by side.

For each task x train size x method x seed: the same balanced sample of train rows (as
`frozenlm compare` draws it), the same rows in the same order, the same steps and batch for
every trained method; test accuracy and macro-F1 with bootstrap intervals, the majority class,
train seconds, peak memory growth, and any divergence the loop recovered from.

    python benchmarks/plugin_quality.py --out docs/results/quality/quality.json

A method is a `compare` method name, optionally with overrides after a colon: plug-in config
fields and `TrainConfig` fields, e.g. `soft-prompt:position=input`, `prefix:lr=0.003,length=20`
(the recipe trials). Every finished cell is written under --cells at once, so an interrupted run
continues where it stopped; --out is written (atomically) after every cell. `--report DIR`
writes DIR/quality.md (accuracy with intervals, macro-F1, the spread over seeds, costs and the
issue's targets) and DIR/quality.png (accuracy against train size per method) from --out, after
the run or alone with `--report-only`.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from frozenlm.atomic import atomic_write_bytes, atomic_write_json
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
        "task": task.name,
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


FROZENLM = ("soft-prompt", "prefix", "id-pt")
"""The frozen plug-ins frozenlm trains itself (the first part of a method spec)."""
PEFT = ("peft-prompt", "peft-prefix")
"""PEFT's prompt-learning baselines."""


ORDER = ("peft-prompt", "peft-prefix", "soft-prompt", "id-pt", "prefix", "lora", "full-ft")
"""Column and legend order: PEFT's prompt methods, frozenlm's plug-ins, then fine-tuning."""


def _kind(spec: str) -> str:
    return spec.split(":", 1)[0]


def _methods(cells: Sequence[dict[str, Any]]) -> list[str]:
    """The cells' method specs in `ORDER` (unknown kinds last), variants in first-seen order."""
    seen = list(dict.fromkeys(c["method"] for c in cells))
    rank = {kind: i for i, kind in enumerate(ORDER)}
    return sorted(seen, key=lambda m: (rank.get(_kind(m), len(ORDER)), seen.index(m)))


def _rows(cells: Sequence[dict[str, Any]]) -> list[tuple[str, int]]:
    """(task, size) in first-seen task order, sizes ascending."""
    tasks = list(dict.fromkeys(c["task"] for c in cells))
    pairs = {(c["task"], c["size"]) for c in cells}
    return sorted(pairs, key=lambda p: (tasks.index(p[0]), p[1]))


def _groups(cells: Sequence[dict[str, Any]]) -> dict[tuple[str, int, str], list[dict[str, Any]]]:
    """(task, size, method) -> its cells, one per seed, in plan order."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for cell in cells:
        groups.setdefault((cell["task"], cell["size"], cell["method"]), []).append(cell)
    return groups


def _mean(group: Sequence[dict[str, Any]], key: str = "accuracy") -> float:
    return statistics.fmean(c[key]["value"] if isinstance(c[key], dict) else c[key] for c in group)


def _fmt(group: Sequence[dict[str, Any]]) -> str:
    """One seed: "0.830 [0.775, 0.880]"; several: "0.812 ±0.021 (3 seeds)" (mean, sample
    standard deviation), bold-free so the table stays greppable."""
    if len(group) == 1:
        a = group[0]["accuracy"]
        text = f"{a['value']:.3f} [{a['low']:.3f}, {a['high']:.3f}]"
    else:
        values = [c["accuracy"]["value"] for c in group]
        text = (
            f"{statistics.fmean(values):.3f} ±{statistics.stdev(values):.3f} ({len(values)} seeds)"
        )
    if any(c["accuracy"]["value"] <= c["majority"]["value"] for c in group):
        text += " ≤maj"
    if any(c.get("recoveries") for c in group):
        text += " r" + str(sum(len(c.get("recoveries") or []) for c in group))
    return text


def _table(
    rows: Sequence[tuple[str, int]],
    methods: Sequence[str],
    groups: dict[tuple[str, int, str], list[dict[str, Any]]],
    majority_key: str,
    fmt: Callable[[Sequence[dict[str, Any]]], str],
) -> list[str]:
    """A markdown table: one line per (task, size) with the majority class's `majority_key`
    and `fmt` of each method's cells ("–" where it did not run)."""
    lines = ["| task | rows | majority | " + " | ".join(methods) + " |"]
    lines.append("|---|---|---|" + "---|" * len(methods))
    for task, size in rows:
        first = next(g[0] for (t, n, _), g in groups.items() if (t, n) == (task, size))
        majority = first[majority_key]
        value = majority["value"] if isinstance(majority, dict) else majority
        line = f"| {task} | {size} | {value:.3f} |"
        for method in methods:
            group = groups.get((task, size, method))
            line += f" {fmt(group)} |" if group else " – |"
        lines.append(line)
    return lines


def quality_markdown(results: dict[str, Any]) -> str:
    """The tables of quality.md: accuracy (interval or spread), macro-F1, costs, targets."""
    cells = results["cells"]
    groups = _groups(cells)
    methods, rows = _methods(cells), _rows(cells)
    budget = results["budget"]
    out = [
        f"Backbone {results['backbone']}; {budget['steps']} steps of batch {budget['batch_size']}, "
        f"dev evaluation every {budget['eval_every']} steps on {budget['dev_limit']} dev "
        f"examples, test on the first {budget['test_limit']}. Test accuracy with bootstrap 95% "
        "intervals (one seed) or mean ± standard deviation over seeds; `≤maj`: a cell at or "
        "below the majority class; `rN`: N divergence recoveries in the loop.",
        "",
    ]
    out += _table(rows, methods, groups, "majority", _fmt)
    out += ["", "Macro-F1 (mean over seeds):", ""]
    out += _table(
        rows, methods, groups, "majority_macro_f1", lambda g: f"{_mean(g, 'macro_f1'):.3f}"
    )
    out += [
        "",
        "Costs (mean over cells): trainable numbers, train seconds, peak memory growth:",
        "",
    ]
    out += ["| method | trainable | train s | peak MB |", "|---|---|---|---|"]
    for method in methods:
        mine = [c for c in cells if c["method"] == method]
        trainable = max(c["trainable_parameters"] for c in mine)
        seconds = statistics.fmean(c["train_seconds"] for c in mine)
        peak = statistics.fmean(c["peak_mb"] for c in mine)
        out.append(f"| {method} | {trainable:,} | {seconds:.0f} | {peak:.0f} |")
    out += ["", *targets(cells)]
    return "\n".join(out) + "\n"


def targets(cells: Sequence[dict[str, Any]]) -> list[str]:
    """The issue's targets, each as the measured figure: the best frozenlm plug-in against the
    best PEFT prompt-learning method (mean over task x size), against LoRA at 256 and 1,000
    rows, and every trained cell against the majority class."""
    groups = _groups(cells)
    rows = _rows(cells)

    def best(task: str, size: int, kinds: Sequence[str]) -> float | None:
        means = [
            _mean(g)
            for (t, n, m), g in groups.items()
            if (t, n) == (task, size) and _kind(m) in kinds
        ]
        return max(means) if means else None

    lines = ["Targets (measured):", ""]
    gaps = []
    for task, size in rows:
        ours, peft = best(task, size, FROZENLM), best(task, size, PEFT)
        if ours is not None and peft is not None:
            gaps.append(ours - peft)
    if gaps:
        lines.append(
            f"- best frozenlm plug-in minus best PEFT prompt method, mean over {len(gaps)} "
            f"task x size cells: {100 * statistics.fmean(gaps):+.1f} points (target >= +3)"
        )
    for size in (256, 1000):
        diffs = []
        for task, n in rows:
            ours, lora = best(task, n, FROZENLM), best(task, n, ("lora",))
            if n == size and ours is not None and lora is not None:
                diffs.append(f"{task} {100 * (ours - lora):+.1f}")
        if diffs:
            lines.append(
                f"- best frozenlm plug-in minus LoRA at {size} rows: "
                + ", ".join(diffs)
                + " points (target >= -2)"
            )
    for label, ours in (("frozenlm plug-in", True), ("baseline", False)):
        mine = [c for c in cells if (_kind(c["method"]) in FROZENLM) == ours]
        low = [
            f"{c['task']}/{c['size']}/{c['method']}/seed {c['seed']} "
            f"({c['accuracy']['value']:.3f} vs {c['majority']['value']:.3f})"
            for c in mine
            if c["accuracy"]["value"] <= c["majority"]["value"]
        ]
        lines.append(
            f"- {label} cells at or below the majority class: {len(low)} of {len(mine)}"
            + (": " + "; ".join(low) if low else "")
        )
    return lines


def plot_quality(results: dict[str, Any], path: Path) -> None:
    """One panel per task: mean test accuracy (over seeds) against train rows (log scale), one
    line per method, the seed-0 interval as a band, the majority class dotted."""
    from matplotlib.figure import Figure

    cells = results["cells"]
    groups = _groups(cells)
    tasks = list(dict.fromkeys(c["task"] for c in cells))
    methods = _methods(cells)
    fig = Figure(figsize=(5.2 * len(tasks), 4.4), dpi=110)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks, strict=True):
        sizes = sorted({c["size"] for c in cells if c["task"] == task})
        for index, method in enumerate(methods):
            measured = [n for n in sizes if (task, n, method) in groups]
            if not measured:
                continue
            ys = [_mean(groups[(task, n, method)]) for n in measured]
            color = f"C{index % 10}"
            ax.plot(measured, ys, marker="o", color=color, label=method)
            seed0 = [groups[(task, n, method)][0]["accuracy"] for n in measured]
            ax.fill_between(
                measured,
                [a["low"] for a in seed0],
                [a["high"] for a in seed0],
                color=color,
                alpha=0.08,
                linewidth=0,
            )
        majority = next(c["majority"]["value"] for c in cells if c["task"] == task)
        ax.axhline(majority, color="0.4", linestyle=":", label="majority class")
        ax.set_xscale("log")
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.minorticks_off()
        ax.set_ylim(0, 1.02)
        ax.set_title(task)
        ax.set_xlabel("labelled train rows (log)")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    handles: dict[str, Any] = {}
    for ax in axes:  # one legend for all panels, below them, so it hides no point
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, handle)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=4, fontsize=8)
    fig.suptitle(f"{results['backbone']}: accuracy against train size (band: 95% interval, seed 0)")
    fig.tight_layout(rect=(0, 0.06 + 0.03 * math.ceil(len(handles) / 4), 1, 1))
    png = io.BytesIO()
    fig.savefig(png, format="png")
    atomic_write_bytes(path, png.getvalue())


def write_report(results: dict[str, Any], folder: Path) -> None:
    text = quality_markdown(results)
    atomic_write_bytes(folder / "quality.md", (text + "\n![quality](quality.png)\n").encode())
    plot_quality(results, folder / "quality.png")
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="sentiment,trec,topic")
    parser.add_argument("--sizes", default="16,64,256,1000")
    parser.add_argument(
        "--methods",
        default="peft-prompt;peft-prefix;soft-prompt;prefix;lora",
        help="method specs, separated by ; (or , when no spec has overrides)",
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
    parser.add_argument("--report", help="folder for quality.md and quality.png")
    parser.add_argument(
        "--report-only", action="store_true", help="write --report from --out without running"
    )
    args = parser.parse_args()
    if args.report_only:
        if not args.report:
            parser.error("--report-only needs --report DIR")
        write_report(json.loads(Path(args.out).read_text()), Path(args.report))
        return

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
    names = {ref: load_task(ref, seed=0).name for ref in args.tasks.split(",")}  # or a file
    plan = [
        (task, spec, size, seed)
        for task in names
        for size in sizes
        for spec in methods + (["full-ft"] if size in full_ft else [])
        for seed in seeds
    ]
    for i, (task, spec, size, seed) in enumerate(plan):
        safe = spec.replace(":", "__").replace(",", "_").replace("=", "-")
        path = cells_dir / names[task] / f"{safe}__{size}__seed{seed}.json"
        if path.is_file():
            cell = json.loads(path.read_text())
        else:
            print(f"[{i + 1}/{len(plan)}] {names[task]} {spec} size {size} seed {seed}", flush=True)
            work = cells_dir / "work" / names[task] / f"{safe}__{size}__seed{seed}"
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
    if args.report:
        write_report(results, Path(args.report))


if __name__ == "__main__":
    main()
