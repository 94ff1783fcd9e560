"""Rows of many tasks and many plug-ins in one forward: each row brings its own conditioning.

A row is (plug-in, task, example): a task's soft prompt or deep prompt, an ID-PT generator's
prompt written for that input, or no plug-in at all (prompt design). Their prompts are rendered
per task, their conditioning is asked of each plug-in once per (plug-in, task) group, and the
rows are scored together in length-sorted batches: `splice` pads them, key/value prefixes are
stacked (an empty one for rows without), each row keeps its own label candidates.
This is what a multi-task server does with a queue of requests; evaluation and training batch
the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from frozenlm.backbone import Backbone
from frozenlm.engine.batching import score_rows
from frozenlm.errors import ConfigError
from frozenlm.evaluation.evaluate import EvalConfig, classification_prompter, prompt_rows
from frozenlm.plugins.protocol import NONE, Conditioning, Plugin, inference_conditioning
from frozenlm.prompts.render import Prompter
from frozenlm.tasks import Example, Task


@dataclass(frozen=True)
class PluggedRow:
    """One input to classify: its task, and the plug-in (or None) that conditions it."""

    plugin: Plugin | None
    task: Task
    example: Example


@dataclass(frozen=True)
class RowScores:
    """Log-probability of each label of the row's task, and the label predicted."""

    labels: list[str]
    logprobs: torch.Tensor  # [K]

    @property
    def predicted(self) -> str:
        return self.labels[int(self.logprobs.argmax())]


def _conditioning(rows: Sequence[PluggedRow]) -> list[Conditioning]:
    """Each row's conditioning (none for rows without a plug-in)."""
    plugged = [(i, row.plugin) for i, row in enumerate(rows) if row.plugin is not None]
    made = inference_conditioning(
        [(plugin, rows[i].task.spec, rows[i].example) for i, plugin in plugged]
    )
    out = [NONE] * len(rows)
    for (i, _), conditioning in zip(plugged, made, strict=True):
        out[i] = conditioning
    return out


def score_plugged_rows(
    backbone: Backbone,
    rows: Sequence[PluggedRow],
    config: EvalConfig = EvalConfig(),
    desc: str = "mixed",
) -> list[RowScores]:
    """Label scores of every row, rows of any task and plug-in sharing batches.

    Equal (to float tolerance) to evaluating each row with its own plug-in and task alone.
    `config` gives the prompt format (zero-shot, chat template) and the batch budget.
    """
    if config.method != "zero-shot":
        raise ConfigError("mixed plug-in batches use zero-shot prompts (the plug-ins' format)")
    prompters: dict[str, tuple[Prompter, list[list[int]]]] = {}
    for row in rows:
        if row.task.spec.kind != "classification":
            raise ConfigError(f"task '{row.task.name}' is not classification; rows are scored")
        if row.task.name not in prompters:
            prompters[row.task.name] = classification_prompter(backbone, row.task, config)
    rendered = [prompters[row.task.name][0].render(row.example) for row in rows]
    engine_rows = prompt_rows(rendered, _conditioning(rows))
    candidates = [prompters[row.task.name][1] for row in rows]
    scores = score_rows(backbone, engine_rows, candidates, config.budget(), desc=desc)
    return [
        RowScores(list(row.task.spec.labels), s.values(config.length_normalize))
        for row, s in zip(rows, scores, strict=True)
    ]
