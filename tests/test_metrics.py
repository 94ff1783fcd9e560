import math

from frozenlm.metrics import (
    bootstrap,
    confusion_matrix,
    exact_match,
    macro_f1,
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
