"""Metrics with bootstrap confidence intervals: accuracy, macro-F1, exact match, token F1,
confusion."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A metric value with its bootstrap 95% interval."""

    value: float
    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap(per_example: Sequence[float], *, resamples: int = 1000, seed: int = 0) -> Interval:
    """Mean of per-example scores with a percentile bootstrap 95% interval (seeded)."""
    scores = np.asarray(per_example, dtype=np.float64)
    if scores.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, scores.size, size=(resamples, scores.size))
    means = scores[picks].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Interval(float(scores.mean()), float(low), float(high))


def bootstrap_pairs(
    gold: Sequence[str],
    predicted: Sequence[str],
    statistic: Callable[[Sequence[str], Sequence[str]], float],
    *,
    resamples: int = 1000,
    seed: int = 0,
) -> Interval:
    """`statistic(gold, predicted)` with a percentile bootstrap 95% interval over resampled
    (gold, predicted) pairs: for a statistic that is not a mean of per-example scores (macro-F1).
    For the same seed and size it draws the same resamples as `bootstrap`."""
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold labels but {len(predicted)} predictions")
    if not gold:
        return Interval(float("nan"), float("nan"), float("nan"))
    gold_array = np.asarray(gold, dtype=object)
    predicted_array = np.asarray(predicted, dtype=object)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(gold), size=(resamples, len(gold)))
    values = [statistic(gold_array[row].tolist(), predicted_array[row].tolist()) for row in picks]
    low, high = np.percentile(values, [2.5, 97.5])
    return Interval(float(statistic(gold, predicted)), float(low), float(high))


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def token_f1(prediction: str, answers: Sequence[str]) -> float:
    """Best token-overlap F1 of the prediction against the answers (SQuAD definition)."""
    pred_tokens = normalize_answer(prediction).split()
    best = 0.0
    for answer in answers:
        gold_tokens = normalize_answer(answer).split()
        if not pred_tokens or not gold_tokens:
            best = max(best, float(pred_tokens == gold_tokens))
            continue
        common = Counter(pred_tokens) & Counter(gold_tokens)
        overlap = sum(common.values())
        if overlap == 0:
            continue
        precision = overlap / len(pred_tokens)
        recall = overlap / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def confusion_matrix(
    gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]
) -> list[list[int]]:
    """Counts [gold label][predicted label] in the order of `labels`."""
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, predicted, strict=True):
        matrix[index[g]][index[p]] += 1
    return matrix


def macro_f1(gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> float:
    """Unweighted mean of per-label F1 over those of `labels` that occur in `gold` or
    `predicted` (a label in neither has no F1: 0/0; scikit-learn's default label set)."""
    pairs = Counter(zip(gold, predicted, strict=True))
    gold_counts, predicted_counts = Counter(gold), Counter(predicted)
    f1s = []
    for label in labels:
        if not gold_counts[label] and not predicted_counts[label]:
            continue
        tp = pairs[(label, label)]
        fp, fn = predicted_counts[label] - tp, gold_counts[label] - tp
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(np.mean(f1s)) if f1s else float("nan")


def macro_f1_interval(
    gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str], *, seed: int = 0
) -> Interval:
    """Macro-F1 over `labels` with its bootstrap 95% interval (`bootstrap_pairs`)."""
    return bootstrap_pairs(gold, predicted, lambda g, p: macro_f1(g, p, labels), seed=seed)


def majority_label(train_labels: Sequence[str]) -> str:
    """The most frequent training label (ties broken alphabetically, deterministic)."""
    counts = Counter(train_labels)
    return min(counts, key=lambda label: (-counts[label], label))
