"""The comparison report: tables, the qualitative ranking checked against the numbers, plots.

Reads only the cells (and the run's config), so a report can be rebuilt from a finished or
interrupted comparison at any time. Writes `report.md`, `results.json` and four PNG plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

from matplotlib.figure import Figure

from frozenlm.atomic import atomic_write_bytes, atomic_write_json
from frozenlm.compare.majority import AT_MAJORITY, at_majority, majority_section

METHOD_ORDER = (
    "zero-shot",
    "few-shot",
    "soft-prompt",
    "peft-prompt",
    "peft-prefix",
    "prefix",
    "lora",
    "full-ft",
    "id-pt",
    "recursion",
    "plugin",
    "supericl",
)
"""The methods in report order, prompt design first: `compare.methods.METHODS` lists them in
this order (a test checks), but the report does not import the methods (torch, PEFT)."""

PLOTS = {
    "quality_vs_parameters": "quality_vs_parameters.png",
    "quality_vs_time": "quality_vs_time.png",
    "learning_curves": "learning_curves.png",
    "serving_memory": "serving_memory.png",
}
PROMPT_DESIGN = ("zero-shot", "few-shot")
FINE_TUNING = ("full-ft", "lora")
SERVED_TASKS = (1, 2, 5, 10, 20, 50)
Heads: TypeAlias = dict[tuple[str, str], dict[str, Any]]
"""(task, method) -> the cell with the most training data."""


def _done(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for c in cells if c.get("status") == "done"]


def _in_registry_order(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells ordered by method as `METHOD_ORDER` lists them (prompt design first)."""
    order = {name: i for i, name in enumerate(METHOD_ORDER)}
    return sorted(cells, key=lambda c: order.get(c["method"], len(order)))


def _size_key(cell: dict[str, Any]) -> float:
    size = cell["train_size"]
    return float("inf") if size == "all" else float(size)


def headline_cells(cells: Sequence[dict[str, Any]]) -> Heads:
    """The cell with the most training data per (task, method), in registry order."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for cell in _in_registry_order(_done(cells)):
        key = (cell["task"], cell["method"])
        if key not in best or _size_key(cell) > _size_key(best[key]):
            best[key] = cell
    return best


def _fmt_metric(test: dict[str, Any]) -> str:
    return f"{test['value']:.3f} [{test['low']:.3f}, {test['high']:.3f}]"


def _fmt_f1(test: dict[str, Any]) -> str:
    """The macro-F1 interval of a test result ("" when it has none: generation, old cells)."""
    return _fmt_metric(test["macro_f1"]) if "macro_f1" in test else ""


def _has_f1(cells: Sequence[dict[str, Any]], task: str) -> bool:
    return any("macro_f1" in c.get("test", {}) for c in _done(cells) if c["task"] == task)


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def serving_bytes(cell: dict[str, Any], backbone_bytes: int, tasks: int) -> int:
    """Memory to serve `tasks` tasks with this method: one shared backbone plus a plug-in per
    task, or a fine-tuned copy per task."""
    stored = int(cell["costs"]["stored_bytes"])
    if cell["costs"]["shares_backbone"]:
        return backbone_bytes + tasks * stored
    return tasks * stored


def quality_table(cells: Sequence[dict[str, Any]], tasks: Sequence[str]) -> list[str]:
    """Each task's test metric, and its macro-F1 beside it for classification; a result at or
    below the majority class is marked `AT_MAJORITY`."""
    heads = headline_cells(cells)
    methods = list(dict.fromkeys(c["method"] for c in _in_registry_order(cells)))
    f1 = {task: _has_f1(cells, task) for task in tasks}
    columns = [name for t in tasks for name in ([t, f"{t} macro-F1"] if f1[t] else [t])]
    lines = [
        "| method | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for method in methods:
        row = []
        for task in tasks:
            cell = heads.get((task, method))
            skipped = next((c for c in cells if (c["task"], c["method"]) == (task, method)), None)
            if cell is not None:
                mark = f" {AT_MAJORITY}" if at_majority(cell["test"]) else ""
                row.append(_fmt_metric(cell["test"]) + mark)
                row += [_fmt_f1(cell["test"])] if f1[task] else []
            else:
                done = skipped is not None and skipped.get("status") == "skipped"
                row += ["skipped" if done else "not run"] * (2 if f1[task] else 1)
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    majority = {t: c["test"] for (t, _), c in heads.items() if "majority" in c["test"]}
    if majority:
        cols = []
        for task in tasks:
            test = majority.get(task, {})
            cols.append(f"{test['majority']:.3f}" if test.get("majority") is not None else "")
            if f1[task]:
                value = test.get("majority_macro_f1")
                cols.append(f"{value:.3f}" if value is not None else "")
        lines.append("| *majority class* | " + " | ".join(cols) + " |")
    return lines


def cost_table(cells: Sequence[dict[str, Any]], backbone_bytes: int) -> list[str]:
    lines = [
        "| task | method | labelled examples (train + dev) | trainable parameters | "
        "training s | peak training memory | stored per task | examples/s | "
        "context tokens per prediction | memory to serve 10 tasks |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (task, method), cell in headline_cells(cells).items():
        c = cell["costs"]
        lines.append(
            f"| {task} | {method} | {c['labelled_train']} + {c['labelled_dev']} | "
            f"{c['trainable_parameters']:,} | {c['train_seconds']:.0f} | "
            f"{c['train_peak_mb']:.0f} MB | {_fmt_bytes(c['stored_bytes'])} | "
            f"{c['inference_examples_per_s']:.1f} | {c.get('mean_prompt_tokens') or 0:.0f} | "
            f"{_fmt_bytes(serving_bytes(cell, backbone_bytes, 10))} |"
        )
    for cell in cells:
        if cell.get("status") == "skipped":
            lines.append(
                f"| {cell['task']} | {cell['method']} | skipped: {cell['reason']} | | | | | | | |"
            )
    return _unique(lines)


def _unique(lines: list[str]) -> list[str]:
    return list(dict.fromkeys(lines))


def _fmt_point(test: dict[str, Any]) -> str:
    """The value, and the macro-F1 after a slash when there is one: "0.700 / 0.650"."""
    f1 = f" / {test['macro_f1']['value']:.3f}" if "macro_f1" in test else ""
    return f"{test['value']:.3f}{f1}"


def curve_table(cells: Sequence[dict[str, Any]]) -> list[str]:
    sizes = sorted(
        {c["train_size"] for c in _done(cells)}, key=lambda s: _size_key({"train_size": s})
    )
    trained = [c for c in _in_registry_order(_done(cells)) if c["method"] not in PROMPT_DESIGN]
    if not trained:
        return ["(no trained method ran)"]
    lines = [
        "| task | method | " + " | ".join(f"n={s}" for s in sizes) + " |",
        "|---|---|" + "---|" * len(sizes),
    ]
    for task, method in dict.fromkeys((c["task"], c["method"]) for c in trained):
        by_size = {
            c["train_size"]: c for c in trained if (c["task"], c["method"]) == (task, method)
        }
        row = [_fmt_point(by_size[s]["test"]) if s in by_size else "" for s in sizes]
        lines.append(f"| {task} | {method} | " + " | ".join(row) + " |")
    return lines


def shift_table(cells: Sequence[dict[str, Any]]) -> list[str]:
    shifted = [c for c in headline_cells(cells).values() if "shift" in c]
    if not shifted:
        return []
    pairs = list(dict.fromkeys((c["task"], c["shift"]["target"]) for c in shifted))
    f1 = any("macro_f1" in c["shift"] for c in shifted)
    columns = [
        name
        for s, t in pairs
        for name in [f"{s} (in-domain)", f"{s} -> {t} (shifted)"]
        + ([f"{s} macro-F1", f"{s} -> {t} macro-F1"] if f1 else [])
    ]
    lines = [
        "| method | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for method in dict.fromkeys(c["method"] for c in shifted):
        row = []
        for source, _target in pairs:
            cell = next((c for c in shifted if (c["task"], c["method"]) == (source, method)), None)
            if cell is None:
                row += [""] * (4 if f1 else 2)
                continue
            row += [_fmt_metric(cell["test"]), _fmt_metric(cell["shift"])]
            row += [_fmt_f1(cell["test"]), _fmt_f1(cell["shift"])] if f1 else []
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return lines


def _compare(a: dict[str, Any], b: dict[str, Any]) -> str:
    """'higher', 'lower' or 'tied' (intervals overlap) for test metric a vs b."""
    ta, tb = a["test"], b["test"]
    if ta["low"] > tb["high"]:
        return "higher"
    if ta["high"] < tb["low"]:
        return "lower"
    return "tied"


def _quality_order(heads: Heads, task: str) -> list[str]:
    """Quality: fine-tuning > prompt tuning > prompt engineering."""
    ft = [heads[(task, m)] for m in FINE_TUNING if (task, m) in heads]
    pt = heads.get((task, "soft-prompt"))
    pe = [heads[(task, m)] for m in PROMPT_DESIGN if (task, m) in heads]
    if not (ft and pt and pe):
        return [f"- Quality on {task}: not enough methods ran to check."]
    best_ft = max(ft, key=lambda c: c["test"]["value"])
    best_pe = max(pe, key=lambda c: c["test"]["value"])
    first = _compare(best_ft, pt)
    second = _compare(pt, best_pe)
    verdict = {
        ("higher", "higher"): "holds",
        ("tied", "higher"): "partly holds (fine-tuning and prompt tuning tie)",
        ("higher", "tied"): "partly holds (prompt tuning and prompt design tie)",
        ("tied", "tied"): "not distinguishable at this test size (all intervals overlap)",
    }.get((first, second), "does not hold")
    return [
        f"- Quality on {task}, fine-tuning > prompt tuning > prompt engineering: {verdict} — "
        f"{best_ft['method']} {best_ft['test']['value']:.3f}, soft-prompt "
        f"{pt['test']['value']:.3f}, {best_pe['method']} {best_pe['test']['value']:.3f} "
        "(differences inside the 95% intervals count as ties)."
    ]


def _data_needed(cells: Sequence[dict[str, Any]], heads: Heads, task: str) -> list[str]:
    """Labelled data needed to beat prompt design: fine-tuning >> prompt tuning."""
    target = max(
        (heads[(task, m)]["test"]["value"] for m in PROMPT_DESIGN if (task, m) in heads),
        default=None,
    )
    if target is None:
        return []
    need = {}
    for method in ("full-ft", "lora", "soft-prompt"):
        curve = sorted(
            (c for c in _done(cells) if (c["task"], c["method"]) == (task, method)),
            key=_size_key,
        )
        if curve:
            need[method] = next(
                (c["costs"]["labelled_train"] for c in curve if c["test"]["value"] > target),
                None,
            )
    if not need:
        return []
    shown = ", ".join(
        f"{m} {'never (within the sizes run)' if n is None else f'{n} examples'}"
        for m, n in need.items()
    )
    ft_need, pt_need = need.get("full-ft"), need.get("soft-prompt")
    if all(n is None for n in need.values()):
        verdict = "cannot be checked (no trained method beat prompt design at the sizes run)"
    elif "full-ft" in need and "soft-prompt" in need:
        holds = (ft_need is None and pt_need is not None) or (
            ft_need is not None and pt_need is not None and ft_need > pt_need
        )
        verdict = "holds" if holds else "does not hold"
    else:
        verdict = "not checked (full-ft or soft-prompt missing)"
    return [
        f"- Data needed on {task} to beat the best prompt design ({target:.3f}), "
        f"fine-tuning needs more labelled data than prompt tuning: {verdict} — {shown}."
    ]


def _supericl_beats_both(heads: Heads, task: str) -> list[str]:
    """SuperICL (Xu et al. 2023): better than both the plug-in alone and in-context learning."""
    sic, alone = heads.get((task, "supericl")), heads.get((task, "plugin"))
    icl = heads.get((task, "few-shot"))
    if sic is None or alone is None or icl is None:
        return []
    first, second = _compare(sic, alone), _compare(sic, icl)
    verdict = (
        "holds"
        if (first, second) == ("higher", "higher")
        else "not distinguishable from a baseline at this test size"
        if "tied" in (first, second) and "lower" not in (first, second)
        else "does not hold"
    )
    return [
        f"- SuperICL on {task} beats both the plug-in alone and few-shot prompting: {verdict} "
        f"— supericl {sic['test']['value']:.3f}, plugin {alone['test']['value']:.3f}, "
        f"few-shot {icl['test']['value']:.3f}."
    ]


def _input_dependent_prompts(heads: Heads, task: str) -> list[str]:
    """Levine et al. 2022: a prompt written for each input beats one prompt for the task."""
    idpt, pt = heads.get((task, "id-pt")), heads.get((task, "soft-prompt"))
    if idpt is None or pt is None:
        return []
    verdict = {
        "higher": "holds",
        "tied": "not distinguishable at this test size",
        "lower": "does not hold",
    }[_compare(idpt, pt)]
    return [
        f"- Input-dependent prompts on {task} beat the task's soft prompt: {verdict} — "
        f"id-pt {idpt['test']['value']:.3f}, soft-prompt {pt['test']['value']:.3f}."
    ]


def _training_cost(heads: Heads) -> list[str]:
    """Training cost of the trained methods: the same order of magnitude."""
    times = {
        m: heads[(t, m)]["costs"]["train_seconds"]
        for (t, m) in heads
        if m in ("full-ft", "lora", "soft-prompt", "peft-prompt", "peft-prefix", "prefix", "id-pt")
    }
    if len(times) < 2 or min(times.values()) <= 0:
        return []
    ratio = max(times.values()) / min(times.values())
    verdict = "holds" if ratio <= 10 else "does not hold"
    shown = ", ".join(f"{m} {s:.0f} s" for m, s in times.items())
    return [
        f"- Training cost of the trained methods is of the same order: {verdict} "
        f"(max/min {ratio:.1f}x; {shown})."
    ]


def ranking_check(cells: Sequence[dict[str, Any]], tasks: Sequence[str]) -> list[str]:
    """The usual qualitative ranking, line by line against the measured cells: each check on
    every task in turn, then the training cost across tasks."""
    heads = headline_cells(cells)
    lines: list[str] = []
    for task in tasks:
        lines += _quality_order(heads, task)
    for task in tasks:
        lines += _data_needed(cells, heads, task)
    for task in tasks:
        lines += _supericl_beats_both(heads, task)
    for task in tasks:
        lines += _input_dependent_prompts(heads, task)
    return lines + _training_cost(heads)


def _plot_quality_vs(
    cells: Sequence[dict[str, Any]], tasks: Sequence[str], key: str, xlabel: str, path: Path
) -> None:
    heads = headline_cells(cells)
    fig = Figure(figsize=(5.2 * len(tasks), 4.2))
    axes = fig.subplots(1, len(tasks), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        placed: dict[tuple[float, float], int] = {}  # points already labelled at a position
        for (t, method), cell in heads.items():
            if t != task:
                continue
            x = float(cell["costs"][key])
            if key == "trainable_parameters":
                x = max(x, 1.0)  # prompt design trains nothing: drawn at 1
            y = cell["test"]["value"]
            err = [[y - cell["test"]["low"]], [cell["test"]["high"] - y]]
            ax.errorbar([x], [y], yerr=err, fmt="o", capsize=3, label=method)
            stacked = placed.get((x, round(y, 3)), 0)  # same point: stack the labels
            placed[(x, round(y, 3))] = stacked + 1
            ax.annotate(method, (x, y), textcoords="offset points", xytext=(5, 5 - 11 * stacked),
                        fontsize=8)  # fmt: skip
        if key == "trainable_parameters":
            ax.set_xscale("log")
        majority = next(
            (c["test"].get("majority") for (t, _), c in heads.items() if t == task), None
        )
        if majority is not None:
            ax.axhline(majority, color="grey", linestyle=":")
            ax.annotate("majority class", (0.99, majority), xycoords=("axes fraction", "data"),
                        ha="right", va="bottom", fontsize=8, color="grey")  # fmt: skip
        ax.set_title(task)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test " + next((c["test"]["metric"] for c in cells if c.get("test")), ""))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_learning_curves(
    cells: Sequence[dict[str, Any]], tasks: Sequence[str], path: Path
) -> None:
    fig = Figure(figsize=(5.2 * len(tasks), 4.2))
    axes = fig.subplots(1, len(tasks), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        done = [c for c in _done(cells) if c["task"] == task]
        for method in dict.fromkeys(c["method"] for c in done):
            curve = sorted(
                (c for c in done if c["method"] == method),
                key=lambda c: c["costs"]["labelled_train"],
            )
            if method == "zero-shot":
                ax.axhline(curve[0]["test"]["value"], linestyle="--", label=method, color="C7")
                continue
            xs = [max(c["costs"]["labelled_train"], 1) for c in curve]
            ys = [c["test"]["value"] for c in curve]
            ax.plot(xs, ys, marker="o", label=method)
        ax.set_xscale("log")
        ticks = sorted(
            {max(c["costs"]["labelled_train"], 1) for c in done if c["method"] != "zero-shot"}
        )
        kept = [t for i, t in enumerate(ticks) if i + 1 == len(ticks) or ticks[i + 1] > t * 1.15]
        ax.set_xticks(kept, [str(t) for t in kept])  # close sizes (124 beside 128) share one
        ax.minorticks_off()
        ax.set_title(task)
        ax.set_xlabel("labelled training examples (log)")
        ax.set_ylabel("test metric")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Learning curves: quality vs labelled data")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _plot_serving(cells: Sequence[dict[str, Any]], backbone_bytes: int, path: Path) -> None:
    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    seen: set[str] = set()
    for (_task, method), cell in headline_cells(cells).items():
        if method in seen:
            continue
        seen.add(method)
        ys = [serving_bytes(cell, backbone_bytes, n) / 2**30 for n in SERVED_TASKS]
        ax.plot(SERVED_TASKS, ys, marker="o", label=method)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tasks served")
    ax.set_ylabel("weights in memory (GiB, log)")
    ax.set_title("Memory to serve N tasks (measured artefact sizes)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _main_tasks(cells: Sequence[dict[str, Any]], config: dict[str, Any]) -> list[str]:
    """The tasks asked for, in order (not the domain-shift partners run only for the shift)."""
    tasks = list(dict.fromkeys([*config["tasks"], *(c["task"] for c in cells)]))
    return [t for t in tasks if t in config["tasks"]]


def _wall_line(cells: Sequence[dict[str, Any]], wall_seconds: float | None) -> str:
    if wall_seconds is not None:
        return (
            f"Wall time of this run: {wall_seconds / 60:.1f} min (cells reused from an earlier "
            "run are not counted)."
        )
    fits = sum(c.get("costs", {}).get("fit_seconds", 0.0) for c in cells)
    return (
        f"Assembled from cells run apart (`--shard`): fitting them took {fits / 60:.1f} min in "
        "all, evaluation not counted."
    )


def _summary_lines(
    cells: Sequence[dict[str, Any]], config: dict[str, Any], wall_seconds: float | None
) -> list[str]:
    main_tasks = _main_tasks(cells, config)
    main_cells = [c for c in cells if c["task"] in main_tasks]
    backbone = config["backbone"]
    return [
        "# frozenlm compare",
        "",
        f"Backbone **{backbone['name']}** ({backbone['parameters']:,} parameters, fingerprint "
        f"`{backbone['fingerprint'][:12]}`), seed {config['seed']}.",
        f"Budget {config['budget_detail']}.",
        _wall_line(cells, wall_seconds),
        "",
        "## Quality (test metric with bootstrap 95% interval, most training data)",
        "",
        *quality_table(main_cells, main_tasks),
        *majority_section(
            [c for (t, _), c in headline_cells(main_cells).items() if t in main_tasks]
        ),
    ]


def report_summary(
    cells: Sequence[dict[str, Any]], config: dict[str, Any], wall_seconds: float | None
) -> str:
    """The report's opening, up to the cost table: the backbone, seed, budget and wall time,
    and the quality table (what `frozenlm compare` prints)."""
    return "\n".join(_summary_lines(cells, config, wall_seconds))


def write_report(
    out: Path,
    cells: Sequence[dict[str, Any]],
    config: dict[str, Any],
    backbone_bytes: int,
    wall_seconds: float | None,
) -> Path:
    """Write report.md, results.json and the plots into `out`; returns the report's path."""
    main_tasks = _main_tasks(cells, config)
    _plot_quality_vs(
        cells,
        main_tasks,
        "trainable_parameters",
        "trainable parameters (log; 0 drawn at 1)",
        out / PLOTS["quality_vs_parameters"],
    )
    _plot_quality_vs(
        cells,
        main_tasks,
        "train_seconds",
        "training seconds",
        out / PLOTS["quality_vs_time"],
    )
    _plot_learning_curves(cells, main_tasks, out / PLOTS["learning_curves"])
    _plot_serving(cells, backbone_bytes, out / PLOTS["serving_memory"])

    main_cells = [c for c in cells if c["task"] in main_tasks]
    md = [
        *_summary_lines(cells, config, wall_seconds),
        "",
        "## Costs",
        "",
        *cost_table(main_cells, backbone_bytes),
        "",
        "Memory to serve N tasks counts weights only: the shared backbone "
        f"({_fmt_bytes(backbone_bytes)}) plus each task's stored artefact, or one fine-tuned "
        "copy per task for full fine-tuning.",
        "",
        "## Learning curves (test metric / macro-F1 by labelled training examples)",
        "",
        *curve_table(main_cells),
        "",
    ]
    shift = shift_table(cells)
    if shift:
        md += [
            "## Domain shift (trained on one domain, evaluated on the other with the same prompt)",
            "",
            *shift,
            "",
        ]
    md += [
        "## The usual ranking, checked",
        "",
        *ranking_check(main_cells, main_tasks),
        "",
        "## Plots",
        "",
        *[f"![{name}]({file})" for name, file in PLOTS.items()],
        "",
    ]
    text = "\n".join(md)
    atomic_write_bytes(out / "report.md", text.encode("utf-8"))
    atomic_write_json(out / "results.json", {"config": config, "cells": list(cells)})
    return out / "report.md"
