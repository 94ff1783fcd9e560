"""Recursion only where it pays (Levine et al. 2022): pass 1 answers every input, and pass 2 runs
only on the inputs pass 1 is least confident about.

Given two test reports on the same examples (`frozenlm eval --out`): the one-pass model's (its
per-example confidence: the top label's probability, or a generated answer's mean token
probability) and the two-pass model's, `selective_curve` sends the least confident share s of
inputs to pass 2 for s = 0, 0.1, ..., 1 and reports the metric against the share and against
the compute per answer: backbone positions processed (prompt, soft tokens and generated tokens;
pass 2 adds its own, pass 1 is the one-pass forward itself) and the FLOPs they cost, about
2 x parameters per position.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from frozenlm.errors import DataError
from frozenlm.metrics import bootstrap, exact_match

SHARES = tuple(i / 10 for i in range(11))


def _predictions(report: Mapping[str, Any], what: str) -> dict[str, dict[str, Any]]:
    predictions = report.get("predictions")
    if not isinstance(predictions, list) or not predictions:
        raise DataError(f"the {what} report holds no per-example predictions")
    return {p["id"]: p for p in predictions}


def correct(prediction: Mapping[str, Any]) -> float:
    """1.0 when a prediction is right (the label, or an exact-match answer)."""
    if "predicted" in prediction:
        return float(prediction["predicted"] == prediction["gold"])
    return exact_match(prediction["answer"], prediction["gold"])


def confidence(prediction: Mapping[str, Any]) -> float:
    """How sure the model was: the top label's probability, or the generated answer's mean
    token probability."""
    if "scores" in prediction:
        scores = prediction["scores"]
        top = max(scores)
        return 1.0 / sum(math.exp(s - top) for s in scores)
    return math.exp(prediction.get("logprob", 0.0))


@dataclass(frozen=True)
class CurvePoint:
    share: float
    """Inputs that took two passes."""
    threshold: float
    """Pass 2 runs below this pass-1 confidence."""
    metric: float
    low: float
    high: float
    positions: float
    """Backbone positions processed per answer."""
    gflops: float
    """About 2 x parameters x positions, per answer."""


def selective_curve(
    one: Mapping[str, Any],
    two: Mapping[str, Any],
    *,
    parameters: int,
    seed: int = 0,
) -> list[CurvePoint]:
    """The metric and compute per answer when the least confident share of inputs (by the
    one-pass report) takes the two-pass report's answer, for each share in `SHARES`."""
    first, second = _predictions(one, "one-pass"), _predictions(two, "two-pass")
    ids = [i for i in first if i in second]
    if len(ids) < len(first) or len(ids) < len(second):
        raise DataError(
            f"the reports cover different examples ({len(first)} and {len(second)}, "
            f"{len(ids)} shared); evaluate both on the same split and limit"
        )
    order = sorted(ids, key=lambda i: confidence(first[i]))  # least confident first
    points = []
    for share in SHARES:
        count = round(share * len(order))
        twice = set(order[:count])
        scores = [correct(second[i] if i in twice else first[i]) for i in ids]
        positions = [
            first[i]["positions"] + (second[i]["positions"] if i in twice else 0) for i in ids
        ]
        interval = bootstrap(scores, seed=seed)
        threshold = confidence(first[order[count]]) if count < len(order) else 1.0
        mean_positions = sum(positions) / len(positions)
        points.append(
            CurvePoint(
                share=share,
                threshold=threshold,
                metric=interval.value,
                low=interval.low,
                high=interval.high,
                positions=mean_positions,
                gflops=2 * parameters * mean_positions / 1e9,
            )
        )
    return points


def curve_json(points: Sequence[CurvePoint], **about: Any) -> dict[str, Any]:
    return {**about, "points": [asdict(p) for p in points]}


def plot_curve(
    curves: Mapping[str, Sequence[CurvePoint]],
    path: str | Path,
    *,
    metric: str,
    references: Mapping[str, tuple[float, float]] | None = None,
) -> None:
    """Accuracy (or EM) against GFLOPs per answer, one line per curve, with reference points
    (name -> (gflops, metric)) such as a larger model applied once."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from frozenlm.atomic import atomic_write_bytes

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, points in curves.items():
        xs, ys = [p.gflops for p in points], [p.metric for p in points]
        axis.plot(xs, ys, marker="o", label=name)
        axis.fill_between(xs, [p.low for p in points], [p.high for p in points], alpha=0.15)
        if len(curves) == 1:  # with several, the legend says it: left end 1 pass, right end 2
            axis.annotate("1 pass", (xs[0], ys[0]), textcoords="offset points", xytext=(4, -12))
            axis.annotate("2 passes", (xs[-1], ys[-1]), textcoords="offset points", xytext=(-40, 6))
    for name, (x, y) in (references or {}).items():
        axis.scatter([x], [y], marker="*", s=120, zorder=3, label=name)
    axis.set_xlabel("GFLOPs per answer (about 2 x parameters x positions)")
    axis.set_ylabel(metric)
    title = "Selective recursion: pass 2 only below a pass-1 confidence"
    axis.set_title(
        title if len(curves) == 1 else title + "\n(each line: 1 pass at left, 2 at right)"
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())
