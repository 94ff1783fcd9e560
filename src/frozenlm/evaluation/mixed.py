"""Rows of many tasks and many plug-ins in one forward: each row brings its own soft tokens.

A row is (plug-in, task, example): a task's soft prompt, an ID-PT generator's prompt written for
that input, or no plug-in at all (prompt design). Their prompts are rendered per task, their
soft tokens are asked of each plug-in once per (plug-in, task) group, and the rows are scored
together in length-sorted batches: `splice` pads them, each row keeps its own label candidates.
This is what a multi-task server does with a queue of requests; evaluation and training batch
the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from frozenlm.backbone import Backbone
from frozenlm.engine.scoring import ScoreRequest, score_batch, token_budget_batches
from frozenlm.engine.splice import Piece
from frozenlm.errors import ConfigError
from frozenlm.evaluation.evaluate import EvalConfig, classification_prompter
from frozenlm.plugins.protocol import Plugin, soft_tokens_by_row
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


def _soft_tokens(rows: Sequence[PluggedRow]) -> list[torch.Tensor | None]:
    """Each row's soft tokens (None for rows without a plug-in)."""
    plugged = [i for i, row in enumerate(rows) if row.plugin is not None]
    with torch.no_grad():
        tokens = soft_tokens_by_row(
            [(rows[i].plugin, rows[i].task.spec, rows[i].example) for i in plugged]
        )
    out: list[torch.Tensor | None] = [None] * len(rows)
    for i, row_tokens in zip(plugged, tokens, strict=True):
        out[i] = row_tokens.detach()
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
    soft = _soft_tokens(rows)
    prefixes: list[list[Piece]] = []
    for row, tokens in zip(rows, soft, strict=True):
        ids = prompters[row.task.name][0].render(row.example).ids
        prefixes.append([tokens, ids] if tokens is not None else [ids])
    lengths = [
        sum(len(p) for p in prefix) + max(len(c) for c in prompters[row.task.name][1])
        for prefix, row in zip(prefixes, rows, strict=True)
    ]
    scores: list[torch.Tensor | None] = [None] * len(rows)
    batches = token_budget_batches(lengths, config.batch_tokens, config.batch_rows)
    with tqdm(total=len(rows), desc=desc, unit="row", disable=None, leave=False) as bar:
        for batch in batches:
            requests = [ScoreRequest(prefixes[i], prompters[rows[i].task.name][1]) for i in batch]
            for i, result in zip(batch, score_batch(backbone, requests), strict=True):
                scores[i] = result.normalized() if config.length_normalize else result.logprobs
            bar.update(len(batch))
    return [
        RowScores(list(row.task.spec.labels), s)
        for row, s in zip(rows, scores, strict=True)
        if s is not None
    ]
