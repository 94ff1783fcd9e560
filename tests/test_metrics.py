import math
from collections.abc import Sequence

from frozenlm.metrics import (
    bootstrap,
    bootstrap_pairs,
    confusion_matrix,
    exact_match,
    macro_f1,
    macro_f1_interval,
    majority_label,
    normalize_answer,
    token_f1,
)


def test_squad_normalisation_and_exact_match() -> None:
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert exact_match("the eiffel tower.", ["Eiffel Tower"]) == 1.0
    assert exact_match("Tower", ["Eiffel Tower"]) == 0.0


def test_token_f1_partial_overlap() -> None:
    # pred {eiffel}, gold {eiffel, tower}: precision 1, recall 0.5
    assert math.isclose(token_f1("Eiffel", ["Eiffel Tower"]), 2 / 3)
    assert token_f1("Louvre", ["Eiffel Tower"]) == 0.0
    assert token_f1("x", ["nope", "x"]) == 1.0


def test_bootstrap_interval_is_seeded_and_brackets_the_mean() -> None:
    scores = [1.0] * 70 + [0.0] * 30
    first, second = bootstrap(scores, seed=3), bootstrap(scores, seed=3)
    assert first == second
    assert first.value == 0.7
    assert first.low < 0.7 < first.high
    assert first.low > 0.55 and first.high < 0.85
    assert bootstrap([1.0] * 10).low == 1.0


def test_confusion_macro_f1_and_majority() -> None:
    gold = ["a", "a", "b", "c"]
    pred = ["a", "b", "b", "a"]
    assert confusion_matrix(gold, pred, ["a", "b", "c"]) == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    # F1: a = 2*1/(2+1+1) = 0.5, b = 2/(2+1) = 2/3, c = 0
    assert math.isclose(macro_f1(gold, pred, ["a", "b", "c"]), (0.5 + 2 / 3) / 3)
    assert majority_label(["b", "a", "b", "a"]) == "a"
    assert majority_label(["b", "b", "a"]) == "b"


def test_macro_f1_leaves_out_a_label_in_neither_gold_nor_predictions() -> None:
    gold, pred = ["a", "a", "b"], ["a", "b", "b"]
    # F1: a = 2/(2+0+1) = 2/3, b = 2/(2+1+0) = 2/3; c occurs nowhere: no F1, not 0
    assert math.isclose(macro_f1(gold, pred, ["a", "b", "c"]), 2 / 3)
    # predicted but never gold: F1 0, and it counts (a 2/3, b 2/2 = 1, c 0)
    assert math.isclose(macro_f1(gold, ["a", "c", "b"], ["a", "b", "c"]), (2 / 3 + 1 + 0) / 3)


def test_bootstrap_pairs_draws_the_resamples_of_bootstrap() -> None:
    gold = ["a"] * 30 + ["b"] * 20
    pred = ["a"] * 25 + ["b"] * 5 + ["a"] * 8 + ["b"] * 12

    def accuracy(g: Sequence[str], p: Sequence[str]) -> float:
        return sum(x == y for x, y in zip(g, p, strict=True)) / len(g)

    pairs = bootstrap_pairs(gold, pred, accuracy, seed=7)
    means = bootstrap([float(g == p) for g, p in zip(gold, pred, strict=True)], seed=7)
    assert pairs.value == means.value == 37 / 50
    assert math.isclose(pairs.low, means.low) and math.isclose(pairs.high, means.high)


def test_macro_f1_interval_is_seeded_and_contains_its_value() -> None:
    gold = ["a"] * 60 + ["b"] * 30 + ["c"] * 10
    pred = ["a"] * 50 + ["b"] * 10 + ["b"] * 25 + ["a"] * 5 + ["c"] * 4 + ["a"] * 6
    interval = macro_f1_interval(gold, pred, ["a", "b", "c"], seed=1)
    assert interval.value == macro_f1(gold, pred, ["a", "b", "c"])
    assert interval.low < interval.value < interval.high
    assert interval == macro_f1_interval(gold, pred, ["a", "b", "c"], seed=1)
    assert interval != macro_f1_interval(gold, pred, ["a", "b", "c"], seed=2)
    perfect = macro_f1_interval(gold, gold, ["a", "b", "c"])
    assert (perfect.low, perfect.value, perfect.high) == (1.0, 1.0, 1.0)
