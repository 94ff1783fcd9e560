"""Contextual calibration (Zhao et al. 2021) toward a uniform or the train split's label prior,
the per-task choice between them on dev, and the warning when calibration does not pay.

Calibration divides the label probabilities p(y|x) by those on content-free inputs p_cf(y).
Read alone, that assumes every label is equally likely: on a task where one class holds 90% of
the rows it pushes predictions away from that class. Prior calibration puts the train split's
label shares back:

    score(y) = log p(y|x) - log p_cf(y) + log(K * prior(y))

`K * prior` (1 for every label when the shares are equal) rather than `prior` keeps the uniform
scores exactly when the train split is balanced; a constant does not change any prediction.
Nothing here touches the backbone: the scores come from `evaluate`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Literal

import torch

from frozenlm.metrics import macro_f1

Calibration = Literal["uniform", "prior", "dev"]
CALIBRATIONS: tuple[Calibration, ...] = ("uniform", "prior", "dev")
"""uniform: divide by p_cf (Zhao et al.); prior: then multiply by the train label shares;
dev: whichever of `CHOICES` scores the best macro-F1 on the dev split."""
Choice = Literal["none", "uniform", "prior"]
CHOICES: tuple[Choice, ...] = ("none", "uniform", "prior")
"""What the dev choice picks from, in tie-break order (the simpler correction first)."""


def _smoothed_counts(train_labels: Sequence[str], labels: Sequence[str]) -> list[int]:
    """Each label's count in `train_labels` plus one (add-one smoothing: a label absent from
    train keeps a small share instead of log 0), in the order of `labels`."""
    counts = Counter(train_labels)
    return [counts[label] + 1 for label in labels]


def label_prior(train_labels: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """The smoothed share of each label in `train_labels`, in the order of `labels`."""
    counts = _smoothed_counts(train_labels, labels)
    return {label: c / sum(counts) for label, c in zip(labels, counts, strict=True)}


def log_prior_ratio(train_labels: Sequence[str], labels: Sequence[str]) -> torch.Tensor:
    """log(K * prior(y)) [K]: exactly 0 for every label when train's label counts are equal."""
    counts = _smoothed_counts(train_labels, labels)
    # c * K / total from integers, so equal counts give exactly 1.0 (log 0.0)
    ratios = [c * len(labels) / sum(counts) for c in counts]
    return torch.log(torch.tensor(ratios, dtype=torch.float64)).float()


def calibrate(
    scores: torch.Tensor, content_free: torch.Tensor, prior: torch.Tensor | None = None
) -> torch.Tensor:
    """Calibrated label scores [N, K] from log-probability scores [N, K], log p_cf per row
    [N, K] and, for prior calibration, `log_prior_ratio` [K]."""
    calibrated = torch.log_softmax(scores, dim=-1) - content_free  # [N, K]
    return calibrated if prior is None else calibrated + prior


def choose_on_dev(
    gold: Sequence[str], predicted: Mapping[Choice, Sequence[str]], labels: Sequence[str]
) -> tuple[Choice, dict[Choice, float]]:
    """The choice whose dev predictions have the highest macro-F1, and every choice's macro-F1.

    Macro-F1, not accuracy: on a skewed task, accuracy rewards putting every input in the
    majority class (0.90 on a 90/10 split), the very collapse calibration is meant to undo, so
    choosing by accuracy would keep it. Macro-F1 weighs each class alike (that collapse scores
    about 0.47 on two classes), so a choice wins only by getting the rare classes right too.
    Ties go to the earlier entry of `CHOICES`: uniform and prior tie on a balanced task.
    """
    scores = {choice: macro_f1(gold, predicted[choice], labels) for choice in CHOICES}
    best = max(CHOICES, key=lambda choice: (scores[choice], -CHOICES.index(choice)))
    return best, scores


def calibration_warning(
    what: str,
    accuracy: float,
    uncalibrated: float,
    majority: float,
    majority_label: str,
) -> str | None:
    """One sentence when the calibrated accuracy is at or below the majority class's or below
    the uncalibrated accuracy (None otherwise). `what` names the run and its calibration."""
    reasons = []
    if accuracy <= majority:
        reasons.append(
            f"at or below the majority class's {majority:.3f} ('{majority_label}' for every input)"
        )
    if accuracy < uncalibrated:
        reasons.append(f"below the uncalibrated {uncalibrated:.3f}")
    if not reasons:
        return None
    return f"{what}: accuracy {accuracy:.3f} is {' and '.join(reasons)}."
