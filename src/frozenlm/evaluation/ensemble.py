"""Prompt ensembling (Lester et al. 2021, section 6): N plug-ins for one task, one batch.

Every example is scored once per plug-in (soft prompts, deep prompts, generators, or a mix); all
N x n rows go through the same mixed batches (each row carries its own conditioning).
Predictions are combined by majority vote (ties broken by the mean log-probability) and by the
mean log-probability over members; each member's accuracy alone is reported beside them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from frozenlm.backbone import Backbone
from frozenlm.errors import ConfigError
from frozenlm.evaluation.evaluate import (
    EvalConfig,
    classification_prompter,
    prompt_rows,
    score_prompts,
)
from frozenlm.metrics import Interval, bootstrap
from frozenlm.plugins.protocol import Plugin, inference_conditioning
from frozenlm.tasks import Task


@dataclass
class EnsembleReport:
    """Accuracy of each prompt alone and of the two ways of combining them."""

    task: str
    split: str
    n: int
    prompts: int
    singles: list[Interval]
    majority_vote: Interval
    mean_logprob: Interval
    seconds: float
    names: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "method": "soft-prompt-ensemble",
            "split": self.split,
            "n": self.n,
            "prompts": self.prompts,
            "names": self.names,
            "metrics": {
                "accuracy": self.mean_logprob.to_json(),
                "majority_vote_accuracy": self.majority_vote.to_json(),
                "mean_logprob_accuracy": self.mean_logprob.to_json(),
                "single_accuracies": [s.to_json() for s in self.singles],
            },
            "seconds": self.seconds,
        }

    def headline(self) -> str:
        lines = [f"{self.task} · ensemble of {self.prompts} prompts · {self.split} (n={self.n})"]
        for name, single in zip(self.names, self.singles, strict=True):
            lines.append(f"  {name}: {single}")
        lines.append(f"  majority vote: {self.majority_vote}")
        lines.append(f"  mean log-prob: {self.mean_logprob}")
        return "\n".join(lines)


def combine(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions [n] by majority vote and by mean log-probability from scores [N, n, K]."""
    mean = torch.log_softmax(scores, dim=-1).mean(dim=0)  # [n, K]
    by_mean = mean.argmax(dim=-1)
    votes = F.one_hot(scores.argmax(dim=-1), scores.shape[-1]).sum(dim=0)  # [n, K]
    # ties between vote counts go to the label with the higher mean log-probability
    by_vote = (votes.float() + torch.softmax(mean, dim=-1) * 0.5).argmax(dim=-1)
    return by_vote, by_mean


def evaluate_ensemble(
    backbone: Backbone,
    task: Task,
    plugins: Sequence[Plugin],
    config: EvalConfig = EvalConfig(),
    names: Sequence[str] = (),
) -> EnsembleReport:
    """Score `task` with each plug-in in shared mixed batches and combine them."""
    if task.spec.kind != "classification":
        raise ConfigError("prompt ensembling applies to classification tasks")
    if len(plugins) < 2:
        raise ConfigError("an ensemble needs at least two prompts")
    start = time.perf_counter()
    examples = list(task.split(config.split))[: config.limit]
    prompter, candidates = classification_prompter(backbone, task, config)
    rendered = [prompter.render(ex) for ex in examples]
    rows = []  # plug-in-major: N x n rows
    for plugin in plugins:
        conditioning = inference_conditioning([(plugin, task.spec, ex) for ex in examples])
        rows += prompt_rows(rendered, conditioning)
    scores = score_prompts(backbone, rows, candidates, config, f"{task.name} ensemble")
    scores = scores.view(len(plugins), len(examples), -1)  # [N, n, K]

    labels = list(task.spec.labels)
    gold = torch.tensor([labels.index(ex.label) for ex in examples])

    def accuracy(predicted: torch.Tensor) -> Interval:
        return bootstrap((predicted == gold).float().tolist(), seed=config.seed)

    by_vote, by_mean = combine(scores)
    return EnsembleReport(
        task=task.name,
        split=config.split,
        n=len(examples),
        prompts=len(plugins),
        singles=[accuracy(s.argmax(dim=-1)) for s in scores],
        majority_vote=accuracy(by_vote),
        mean_logprob=accuracy(by_mean),
        seconds=time.perf_counter() - start,
        names=list(names) or [f"prompt {i + 1}" for i in range(len(plugins))],
    )
