"""`frozenlm compare`: every method on every task, same splits and seeds, one cell at a time.

A cell is (task, method, labelled training examples). Each finished cell is written to
`OUT/cells/...json` at once, so an interrupted comparison keeps its cells and the same command
continues where it stopped. Methods that do not learn from the train split (prompt design) get
one cell per task; the others get one per train size (the learning curves). Where a task has a
domain-shift partner (`sentiment` <-> `tweets-binary`), the largest-size cells of the source
are also evaluated on the partner's test split.
"""

from __future__ import annotations

import gc
import json
import logging
import random
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from frozenlm.atomic import atomic_write_json, check_output_folder
from frozenlm.backbone import Backbone
from frozenlm.compare.domain import SHIFTS, load_compare_task, shifted
from frozenlm.compare.methods import BUDGETS, METHODS, Budget, Fitted, Method, folder_bytes
from frozenlm.errors import ConfigError
from frozenlm.evaluation.evaluate import EvalConfig, Report, evaluate
from frozenlm.measure import PeakMemory
from frozenlm.metrics import macro_f1, majority_label
from frozenlm.progress import progress
from frozenlm.tasks import Task
from frozenlm.tasks.splits import balanced_sample

log = logging.getLogger(__name__)

KEEP_ARTIFACT_BYTES = 50 * 2**20  # keep trained artefacts under OUT/work up to this size


@dataclass(frozen=True)
class CompareConfig:
    """What `frozenlm compare` runs."""

    tasks: tuple[str, ...] = ("sentiment",)
    methods: tuple[str, ...] = tuple(METHODS)
    budget: str | Budget = "quick"
    """A budget name (quick, full) or a Budget."""
    train_sizes: tuple[int | None, ...] | None = None
    """Override the budget's train sizes (None entries: the whole train split)."""
    domain_shift: bool = True
    seed: int = 0

    def resolved_budget(self) -> Budget:
        if isinstance(self.budget, Budget):
            budget = self.budget
        elif self.budget in BUDGETS:
            budget = BUDGETS[self.budget]
        else:
            raise ConfigError(f"unknown budget '{self.budget}'; expected quick or full")
        if self.train_sizes is not None:
            budget = replace(budget, train_sizes=self.train_sizes)
        return budget


def parse_methods(text: str) -> tuple[str, ...]:
    if text == "all":
        return tuple(METHODS)
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ConfigError(
            f"unknown method '{unknown[0]}'; expected 'all' or some of {', '.join(METHODS)}"
        )
    return names


def parse_train_sizes(text: str) -> tuple[int | None, ...]:
    sizes: list[int | None] = []
    for part in text.split(","):
        part = part.strip()
        if part == "all":
            sizes.append(None)
        elif part.isdigit() and int(part) > 0:
            sizes.append(int(part))
        else:
            raise ConfigError(f"train size '{part}' is neither a positive number nor 'all'")
    return tuple(sizes)


def subsample(task: Task, size: int | None, seed: int) -> Task:
    """The task with `size` training examples, seeded (all if None/larger): class-balanced for
    classification, a plain random sample for generation (whose labels are answers: balancing
    them would take one example of each of the alphabetically first answers)."""
    if size is None or size >= len(task.train):
        return task
    if task.spec.kind != "classification":
        return replace(task, train=tuple(random.Random(seed).sample(task.train, size)))
    return replace(task, train=tuple(balanced_sample(task.train, size, seed)))


def size_label(size: int | None) -> str:
    return "all" if size is None else str(size)


def _cell_path(out: Path, task: str, method: str, size: str) -> Path:
    return out / "cells" / task / f"{method}__{size}.json"


def _metric_json(report: Report, metric: str, task: Task) -> dict[str, Any]:
    """The cell's test metric (and macro-F1, for classification) with the majority class's on
    the same examples, and how often each label was predicted. The majority class is that of
    `task`'s whole train split: a class-balanced subsample of it ties, and its tie-break would
    pick a label the test split may hardly hold."""
    value = report.metrics[metric]
    data: dict[str, Any] = {"metric": metric, **value.to_json(), "n": report.n}
    if "macro_f1" in report.metrics and metric != "macro_f1":
        data["macro_f1"] = report.metrics["macro_f1"].to_json()
    if metric in report.baseline:
        data["majority"] = report.baseline[metric].value
        if "macro_f1" in report.baseline:
            data["majority_macro_f1"] = report.baseline["macro_f1"].value
        gold = [p["gold"] for p in report.predictions if "gold" in p]
        if gold and len(gold) == len(report.predictions):
            label = majority_label([ex.label for ex in task.train])
            data["majority"] = sum(g == label for g in gold) / len(gold)
            data["majority_label"] = label
            if "macro_f1" in data:
                majority = macro_f1(gold, [label] * len(gold), list(task.spec.labels))
                data["majority_macro_f1"] = majority
        predicted = [p.get("predicted") for p in report.predictions]
        if predicted and all(isinstance(p, str | None) for p in predicted):
            counts = Counter("(no label)" if p is None else p for p in predicted)
            data["predicted"] = dict(counts.most_common())
    return data


def _evaluate(fitted: Fitted, task: Task, config: EvalConfig) -> Report:
    if fitted.evaluator is not None:
        return fitted.evaluator(task, config)
    return evaluate(fitted.backbone, task, config, plugin=fitted.plugin)


def run_cell(
    backbone: Backbone,
    method: Method,
    task: Task,
    size: int | None,
    budget: Budget,
    seed: int,
    out: Path,
    shift_target: Task | None,
) -> dict[str, Any]:
    """Fit `method` on `task` (train subsampled to `size`), evaluate it on test (and on the
    domain-shift target), and return the cell's JSON."""
    cell: dict[str, Any] = {
        "task": task.name,
        "method": method.name,
        "train_size": size_label(size),
        "split_hash": task.split_hash(),
    }
    reason = method.unavailable(task)
    if reason is not None:
        return cell | {"status": "skipped", "reason": reason}
    work = out / "work" / task.name / f"{method.name}__{size_label(size)}"
    shutil.rmtree(work, ignore_errors=True)  # a cell interrupted earlier starts afresh
    work.mkdir(parents=True)
    data = subsample(task, size, seed)
    start = time.perf_counter()
    with PeakMemory() as peak:
        fitted: Fitted = method.fit(backbone, data, budget, seed, work)
    fit_seconds = time.perf_counter() - start
    test_config = replace(fitted.eval_config, split="test", limit=budget.test_limit)
    report = _evaluate(fitted, data, test_config)
    metric = task.spec.metric
    cell |= {
        "status": "done",
        "test": _metric_json(report, metric, task),
        "costs": {
            "trainable_parameters": fitted.trainable_parameters,
            "labelled_train": fitted.labelled_train,
            "labelled_dev": fitted.labelled_dev,
            "labelled_total": fitted.labelled_train + fitted.labelled_dev,
            "train_seconds": fitted.train_seconds,
            "fit_seconds": fit_seconds,
            "train_peak_mb": peak.mb,
            "peak_exact": peak.exact,
            "stored_bytes": fitted.stored_bytes,
            "shares_backbone": fitted.shares_backbone,
            "inference_examples_per_s": report.examples_per_s,
            "mean_prompt_tokens": report.prompt_stats.get("mean_prompt_tokens"),
        },
        "best_step": fitted.best_step,
        "eval_config": report.config,
        "calibration": report.calibration,
        "warnings": list(report.warnings),
    }
    if shift_target is not None:
        shift_task = shifted(data, shift_target)
        shift_config = replace(test_config, limit=budget.test_limit)
        shift_report = _evaluate(fitted, shift_task, shift_config)
        shift_json = _metric_json(shift_report, metric, task)
        cell["shift"] = {"target": shift_target.name, **shift_json}
        cell["warnings"] += [f"shifted to {shift_target.name}, {w}" for w in shift_report.warnings]
    keep = folder_bytes(work) <= KEEP_ARTIFACT_BYTES
    cell["artifact"] = str(work / "best") if keep and (work / "best").exists() else None
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return cell


@dataclass(frozen=True)
class Shard:
    """The K-th of N disjoint sets of a comparison's cells (`--shard K/N`): cell i of the plan
    belongs to shard i mod N + 1, so the costly methods spread over the shards."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`K/N` with 1 <= K <= N."""
        head, _, tail = text.partition("/")
        if not (head.isdigit() and tail.isdigit()) or not 1 <= int(head) <= int(tail):
            raise ConfigError(f"--shard takes K/N with 1 <= K <= N (e.g. 2/4), not '{text}'")
        return cls(int(head), int(tail))

    def takes(self, position: int) -> bool:
        return position % self.count == self.index - 1


def plan(config: CompareConfig) -> list[tuple[str, str, int | None, bool]]:
    """Every cell as (task, method, train size, evaluate domain shift), in run order."""
    budget = config.resolved_budget()
    largest = _largest(budget.train_sizes)
    cells: list[tuple[str, str, int | None, bool]] = []
    tasks = list(config.tasks)
    if config.domain_shift:
        for source, target in SHIFTS.items():
            if source in tasks and target not in tasks:
                tasks.append(target)  # the reverse direction needs the partner trained too
    for task in tasks:
        extra = task not in config.tasks  # only for the domain-shift table
        shift = config.domain_shift and task in SHIFTS
        for name in config.methods:
            if extra and name not in budget.partner_methods:
                continue
            method = METHODS[name]
            sizes: Sequence[int | None] = budget.train_sizes if method.trains else [None]
            if extra and method.trains:
                sizes = [largest]
            for size in sizes:
                cells.append((task, name, size, shift and (size == largest or not method.trains)))
    return cells


def _largest(sizes: Sequence[int | None]) -> int | None:
    return None if None in sizes else max(s for s in sizes if s is not None)


def run_compare(
    backbone: Backbone, config: CompareConfig, out: str | Path, shard: Shard | None = None
) -> list[dict[str, Any]]:
    """Run (or continue) a comparison into `out`; returns every cell run or found (with
    `shard`, only that shard's cells run: other shards' finished cells are read)."""
    out = check_output_folder(out, "out")
    budget = config.resolved_budget()
    tasks: dict[str, Task] = {}
    every = plan(config)
    cells = [c for i, c in enumerate(every) if shard is None or shard.takes(i)]
    for task_name, *_ in cells:
        if task_name not in tasks:
            tasks[task_name] = load_compare_task(task_name, seed=config.seed)
    for name in {n for n, *_ in cells}:
        if name in SHIFTS and SHIFTS[name] not in tasks:
            tasks[SHIFTS[name]] = load_compare_task(SHIFTS[name], seed=config.seed)
    out.mkdir(parents=True, exist_ok=True)
    identity = {
        "budget": budget.describe(),
        "seed": config.seed,
        "fingerprint": backbone.fingerprint,
    }
    _check_same_comparison(out, identity)
    atomic_write_json(
        out / "config.json",
        {
            "identity": identity,
            "tasks": list(config.tasks),
            "methods": list(config.methods),
            "budget": budget.name,
            "budget_detail": budget.describe(),
            "train_sizes": [size_label(s) for s in budget.train_sizes],
            "domain_shift": config.domain_shift,
            "seed": config.seed,
            "backbone": {
                "name": backbone.name,
                "fingerprint": backbone.fingerprint,
                "parameters": backbone.num_parameters,
                "bytes": backbone_bytes(backbone),
            },
            # every cell of the comparison, whichever shard runs it (the report checks them)
            "plan": [[t, m, size_label(s), shift] for t, m, s, shift in every],
        },
    )
    results: list[dict[str, Any]] = []
    desc = "compare" if shard is None else f"compare {shard.index}/{shard.count}"
    bar = progress(cells, desc=desc, unit="cell")
    for task_name, method_name, size, shift in bar:
        path = _cell_path(out, task_name, method_name, size_label(size))
        if path.exists():
            results.append(json.loads(path.read_text()))
            continue
        bar.set_postfix_str(f"{task_name} {method_name} n={size_label(size)}")
        target = tasks[SHIFTS[task_name]] if shift else None
        cell = run_cell(
            backbone,
            METHODS[method_name],
            tasks[task_name],
            size,
            budget,
            config.seed,
            out,
            target,
        )
        cell["backbone"] = backbone.name
        atomic_write_json(path, cell)
        results.append(cell)
        gc.collect()
    if shard is not None:  # the others' cells finished so far
        mine = {_cell_path(out, t, m, size_label(s)) for t, m, s, _ in cells}
        results += [json.loads(p.read_text()) for p in planned_cells(out) if p not in mine]
    return results


def backbone_bytes(backbone: Backbone) -> int:
    """Bytes of the backbone's weights (the report's serving-memory plot)."""
    return sum(p.numel() * p.element_size() for p in backbone.model.parameters())


def planned_cells(out: Path, *, missing: bool = False) -> list[Path]:
    """The cell files of the comparison in `out` (its config's plan) that exist, or with
    `missing` those that do not yet (a half-written cell is never seen: writes are atomic)."""
    saved = json.loads((out / "config.json").read_text())
    paths = [_cell_path(out, t, m, size) for t, m, size, _ in saved.get("plan", [])]
    return [p for p in paths if p.exists() != missing]


def _check_same_comparison(out: Path, identity: dict[str, Any]) -> None:
    """Cells are reused only by a run with the same budget, seed and backbone weights."""
    path = out / "config.json"
    if not path.exists():
        return
    try:
        saved = json.loads(path.read_text()).get("identity", {})
    except (json.JSONDecodeError, AttributeError) as err:
        raise ConfigError(
            f"'{path}' is not a compare config ({err}); choose another --out"
        ) from err
    for key, value in identity.items():
        if saved.get(key) != value:
            raise ConfigError(
                f"'{out}' holds a comparison with another {key} ({saved.get(key)} vs {value}); "
                "choose another --out to keep both"
            )


@dataclass(frozen=True)
class CompareResult:
    """A finished (or continued) comparison: where its report is, every cell, and the report's
    summary (the run's header and the quality table) for printing."""

    report: Path | None
    """`report.md`; `results.json` and the plots are beside it (None: a shard ran while
    other shards' cells are still missing)."""
    cells: list[dict[str, Any]]
    """Every cell's JSON, as in `results.json`."""
    summary: str
    """The report's markdown up to the cost table."""
    seconds: float
    """Wall time of this run (cells reused from an earlier run are not counted)."""
    missing: int = 0
    """Cells of other shards not finished yet (then no report is written)."""


def compare(
    backbone: Backbone, config: CompareConfig, out: str | Path, shard: Shard | None = None
) -> CompareResult:
    """`frozenlm compare`: run (or continue) the comparison into `out` and write its report.
    With `shard`, run only that shard's cells; the shard that finds every cell done writes the
    report (or `report_only` does, once all shards have finished)."""
    from frozenlm.compare.report import report_summary, write_report

    out = Path(out)
    start = time.perf_counter()
    cells = run_compare(backbone, config, out, shard)
    saved = json.loads((out / "config.json").read_text())
    seconds = time.perf_counter() - start
    missing = len(planned_cells(out, missing=True))
    if missing:
        return CompareResult(None, cells, "", seconds, missing)
    order = {tuple(c[:3]): i for i, c in enumerate(saved["plan"])}
    cells.sort(key=lambda c: order.get((c["task"], c["method"], c["train_size"]), len(order)))
    wall = seconds if shard is None else None
    report = write_report(out, cells, saved, backbone_bytes(backbone), wall)
    return CompareResult(report, cells, report_summary(cells, saved, wall), seconds)


def report_only(out: str | Path) -> CompareResult:
    """The report of the comparison in `out` from its finished cells, without a backbone
    (`frozenlm compare --report-only`): refused while any planned cell is missing."""
    from frozenlm.compare.report import report_summary, write_report

    out = Path(out)
    if not (out / "config.json").is_file():
        raise ConfigError(f"'{out}' holds no comparison (no config.json): run compare first")
    saved = json.loads((out / "config.json").read_text())
    if "plan" not in saved:
        raise ConfigError(f"'{out}' was written before --shard existed; rerun compare on it")
    missing = planned_cells(out, missing=True)
    if missing:
        names = ", ".join(f"{p.parent.name}/{p.stem}" for p in missing[:5])
        raise ConfigError(
            f"{len(missing)} of {len(saved['plan'])} cells are not finished yet ({names}"
            f"{', ...' if len(missing) > 5 else ''}): run the shards that hold them"
        )
    cells = [json.loads(p.read_text()) for p in planned_cells(out)]
    size = saved["backbone"].get("bytes") or 4 * saved["backbone"]["parameters"]
    report = write_report(out, cells, saved, int(size), None)
    return CompareResult(report, cells, report_summary(cells, saved, None), 0.0)
