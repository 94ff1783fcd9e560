"""Evaluating saved plug-ins (`frozenlm eval --plugin DIR[,DIR...]`).

A checkpoint knows its tasks (`task_sources`: the name or file each was loaded from) and its
training config, so a saved plug-in is evaluated as it was trained: same task files, same split
seed, chat template on or off as in training. Several soft-prompt checkpoints of one task are
evaluated as a prompt ensemble.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frozenlm.backbone import Backbone
from frozenlm.errors import ConfigError
from frozenlm.evaluation.ensemble import EnsembleReport, evaluate_ensemble
from frozenlm.evaluation.evaluate import EvalConfig, Report, evaluate
from frozenlm.plugins.protocol import Plugin
from frozenlm.plugins.registry import load_plugin
from frozenlm.tasks import BUILTIN_TASKS, Task, load_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SavedReports:
    """One report per task a saved plug-in was evaluated on, with the tasks themselves (a run
    record keeps their split hashes)."""

    reports: list[Report]
    tasks: list[Task]

    def headline(self) -> str:
        return "\n".join(r.headline() for r in self.reports)

    def to_json(self) -> dict[str, Any]:
        """One task: its report's JSON; several: {"reports": [...]}."""
        if len(self.reports) == 1:
            return self.reports[0].to_json()
        return {"reports": [r.to_json() for r in self.reports]}


@dataclass(frozen=True)
class SavedEnsembleReport:
    """A prompt ensemble's report, with the task it was evaluated on."""

    report: EnsembleReport
    task: Task

    def headline(self) -> str:
        return self.report.headline()

    def to_json(self) -> dict[str, Any]:
        return self.report.to_json()


def evaluate_saved(
    backbone: Backbone,
    folder: str | Path,
    tasks: Sequence[str] | None = None,
    *,
    split: str = EvalConfig.split,
    limit: int | None = EvalConfig.limit,
    max_new_tokens: int = EvalConfig.max_new_tokens,
    seed: int = EvalConfig.seed,
    allow_other_backbone: bool = False,
    loader: Callable[[str, int], Task] = load_task,
) -> SavedReports:
    """Evaluate the plug-in saved in `folder` on `tasks` (default: every task it was trained
    for). A plug-in that serves any task (an ID-PT generator, a shared soft prompt) may also be
    given tasks it was not trained for; `seed` is the evaluation's, the split seed is the
    training run's. `loader` (reference, split seed) -> task loads the tasks (the CLI's also
    knows the QA text tasks)."""
    plugin, checkpoint = load_plugin(folder, backbone, allow_other_backbone=allow_other_backbone)
    sources: dict[str, str] = checkpoint.meta["task_sources"]
    train_config = checkpoint.meta.get("train_config", {})
    refs = list(tasks) if tasks else list(sources)
    config = EvalConfig(
        split=split,
        limit=limit,
        chat_template=train_config.get("chat_template", True),
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    for ref in refs:
        if ref not in sources and not Path(ref).is_file() and not plugin.serves_any_task:
            raise ConfigError(
                f"the plug-in in '{folder}' was trained for {', '.join(sources)}, not '{ref}'"
            )
    loaded = []
    for ref in refs:
        task = loader(sources.get(ref, ref), train_config.get("seed", 0))
        if task.name not in sources and not plugin.serves_any_task:
            raise ConfigError(
                f"the plug-in in '{folder}' was trained for {', '.join(sources)}, not "
                f"'{task.name}' (the task in '{ref}')"
            )
        _check_same_splits(task, ref, folder, checkpoint.meta)
        loaded.append(task)
    reports = [evaluate(backbone, task, config, plugin=plugin) for task in loaded]
    return SavedReports(reports, loaded)


def evaluate_saved_ensemble(
    backbone: Backbone,
    folders: Sequence[str | Path],
    task: str,
    *,
    split: str = EvalConfig.split,
    limit: int | None = EvalConfig.limit,
    seed: int = EvalConfig.seed,
    allow_other_backbone: bool = False,
) -> SavedEnsembleReport:
    """Evaluate the plug-ins for `task` saved in `folders` (soft prompts, deep prompts,
    generators, in any mix) as one ensemble (each alone, their majority vote and their mean
    log-probability)."""
    plugins: list[Plugin] = []
    name, source, chat = task, task, True
    by_file = task not in BUILTIN_TASKS and Path(task).is_file()
    given: dict[int, Task] = {}  # a task file's task, by split seed
    trained_on: dict[str, str] = {}  # folder -> split hash of the task it was trained on
    for folder in folders:
        plugin, checkpoint = load_plugin(
            folder, backbone, allow_other_backbone=allow_other_backbone
        )
        sources: dict[str, str] = checkpoint.meta["task_sources"]
        train_config = checkpoint.meta.get("train_config", {})
        if by_file and task not in sources:  # a task file: the task it holds, by its name
            seed_trained = train_config.get("seed", 0)
            if seed_trained not in given:
                given[seed_trained] = load_task(task, seed=seed_trained)
            name = given[seed_trained].name
            _check_same_splits(given[seed_trained], task, folder, checkpoint.meta)
        if name not in sources:
            raise ConfigError(f"the plug-in in '{folder}' has no prompt for task '{task}'")
        plugins.append(plugin)
        source = sources[name] if name == task else task
        chat = train_config.get("chat_template", True)
        trained_on[str(folder)] = checkpoint.meta.get("split_hashes", {}).get(name, "")
    config = EvalConfig(split=split, limit=limit, chat_template=chat, seed=seed)
    loaded = load_task(source)  # the splits of seed 0, whatever seed each prompt trained with
    for folder, split_hash in trained_on.items():
        if split_hash != loaded.split_hash():
            log.warning(
                "the prompt in '%s' was trained on other splits of '%s' than the ensemble is "
                "evaluated on (another seed?): its %s examples may include some it trained on",
                folder,
                task,
                split,
            )
    names = [str(f) for f in folders]
    report = evaluate_ensemble(backbone, loaded, plugins, config, names=names)
    return SavedEnsembleReport(report, loaded)


def _check_same_splits(task: Task, ref: str, folder: str | Path, meta: dict[str, Any]) -> None:
    """Refuse `task` (loaded from `ref` with the training seed) when its splits are not those
    the plug-in in `folder` was trained on: its data changed since."""
    expected = meta.get("split_hashes", {}).get(task.name)
    if expected and task.split_hash() != expected:
        raise ConfigError(
            f"'{ref}' gives task '{task.name}' other splits than the plug-in in '{folder}' was "
            "trained on (its data changed since training); evaluate on the data it was trained "
            "on, or train again"
        )
