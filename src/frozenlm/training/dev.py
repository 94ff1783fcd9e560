"""Dev-split measurements a training run is steered by: its plug-in's dev metric, and the two
references it is watched against (calibrated zero-shot prompting and the majority class)."""

from __future__ import annotations

from collections.abc import Sequence

from frozenlm.backbone import Backbone
from frozenlm.evaluation.evaluate import EvalConfig, evaluate
from frozenlm.metrics import majority_label
from frozenlm.plugins.protocol import Plugin
from frozenlm.tasks import Task
from frozenlm.training.config import TrainConfig


def dev_metric(
    backbone: Backbone, plugin: Plugin | None, tasks: Sequence[Task], config: TrainConfig
) -> tuple[float, dict[str, float]]:
    """Mean over tasks of each task's headline dev metric (with `plugin`, or of calibrated
    zero-shot prompting without one)."""
    per_task = {}
    for task in tasks:
        eval_config = EvalConfig(
            split="dev",
            limit=config.eval_limit,
            chat_template=config.chat_template,
            calibrate=plugin is None and task.spec.kind == "classification",
            calibration="uniform",  # Zhao et al.'s; "dev" would choose on the split it scores
        )
        report = evaluate(backbone, task, eval_config, plugin=plugin)
        per_task[task.name] = report.metrics[task.spec.metric].value
    return sum(per_task.values()) / len(per_task), per_task


def dev_majority(tasks: Sequence[Task], config: TrainConfig) -> float | None:
    """Mean dev accuracy of predicting each task's train majority class (None: a task is not
    classification)."""
    if any(t.spec.kind != "classification" for t in tasks):
        return None
    shares = []
    for task in tasks:
        majority = majority_label([ex.label for ex in task.train])
        dev = list(task.dev)[: config.eval_limit]
        shares.append(sum(ex.label == majority for ex in dev) / max(len(dev), 1))
    return sum(shares) / len(shares)


_FLOORS: dict[tuple[str, ...], float] = {}
"""Calibrated zero-shot dev metrics already measured in this process (compare trains several
methods on the same task and backbone)."""


def zero_shot_floor(backbone: Backbone, tasks: Sequence[Task], config: TrainConfig) -> float:
    """The dev metric of calibrated zero-shot prompting on `tasks`: what a trained plug-in must
    stay above (computed once per backbone weights, tasks' splits and dev budget; a fine-tuned
    copy starts as its base, whose fingerprint it keeps)."""
    key = (
        backbone.fingerprint,
        str(config.eval_limit),
        str(config.chat_template),
        *(f"{t.name}:{t.split_hash()}" for t in tasks),
    )
    if key not in _FLOORS:
        _FLOORS[key] = dev_metric(backbone, None, tasks, config)[0]
    return _FLOORS[key]
