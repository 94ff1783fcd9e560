"""Selective recursion's curve: its ends are the one-pass and two-pass results, compute grows
with the share sent to pass 2, and the least confident inputs go first."""

import math

import pytest

from frozenlm.errors import DataError
from frozenlm.recursion.selective import confidence, correct, selective_curve


def _classification(right: list[bool], sure: list[float]) -> dict[str, object]:
    return {
        "predictions": [
            {
                "id": str(i),
                "gold": "a",
                "predicted": "a" if ok else "b",
                "scores": [math.log(p), math.log(1 - p)],
                "positions": 10,
            }
            for i, (ok, p) in enumerate(zip(right, sure, strict=True))
        ]
    }


def test_ends_are_one_pass_and_two_passes_and_unsure_inputs_go_first() -> None:
    one = _classification([False, False, True, True], [0.55, 0.6, 0.9, 0.95])
    two = _classification([True, True, False, True], [0.9, 0.9, 0.9, 0.9])
    for p in two["predictions"]:  # type: ignore[attr-defined]
        p["positions"] = 15
    points = selective_curve(one, two, parameters=1000)
    assert points[0].share == 0 and points[0].metric == 0.5
    assert points[-1].share == 1 and points[-1].metric == 0.75
    at_half = next(p for p in points if p.share == 0.5)
    assert at_half.metric == 1.0  # the two unsure, wrong inputs were sent to pass 2
    assert [p.positions for p in points] == sorted(p.positions for p in points)
    assert points[0].positions == 10 and points[-1].positions == 25
    assert points[-1].gflops == pytest.approx(2 * 1000 * 25 / 1e9)


def test_generation_confidence_and_correctness() -> None:
    prediction = {"answer": "Paris", "gold": ["paris"], "logprob": math.log(0.5)}
    assert correct(prediction) == 1.0 and confidence(prediction) == pytest.approx(0.5)


def test_reports_on_other_examples_are_refused() -> None:
    one = _classification([True, False], [0.6, 0.7])
    two = _classification([True], [0.6])
    with pytest.raises(DataError, match="different examples"):
        selective_curve(one, two, parameters=1)
    with pytest.raises(DataError, match="no per-example predictions"):
        selective_curve({"predictions": []}, two, parameters=1)
