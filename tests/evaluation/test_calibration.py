import pytest
import torch

from frozenlm.evaluation.calibration import (
    calibrate,
    calibration_warning,
    choose_on_dev,
    label_prior,
    log_prior_ratio,
)


def test_the_prior_is_add_one_smoothed_and_exactly_uniform_on_equal_counts() -> None:
    prior = label_prior(["a"] * 8 + ["b"], ["a", "b", "c"])
    assert prior == {"a": 9 / 12, "b": 2 / 12, "c": 1 / 12}
    for k in (2, 3, 5, 6, 7):
        labels = [f"l{i}" for i in range(k)]
        assert torch.equal(log_prior_ratio(labels * 13, labels), torch.zeros(k))
    ratio = log_prior_ratio(["a"] * 87 + ["b"] * 13, ["a", "b"])
    torch.testing.assert_close(ratio, torch.log(torch.tensor([2 * 88 / 102, 2 * 14 / 102])))


def test_prior_calibration_moves_scores_toward_the_frequent_label() -> None:
    scores = torch.log(torch.tensor([[0.5, 0.5], [0.7, 0.3], [0.2, 0.8]]))  # [N, K]
    content_free = torch.log(torch.tensor([0.6, 0.4])).expand(3, 2)
    uniform = calibrate(scores, content_free)
    torch.testing.assert_close(uniform, scores - content_free)
    prior = calibrate(scores, content_free, log_prior_ratio(["a"] * 9 + ["b"], ["a", "b"]))
    shift = prior - uniform
    assert torch.all(shift[:, 0] > 0) and torch.all(shift[:, 1] < 0)
    assert uniform.argmax(-1).tolist() == [1, 0, 1] and prior.argmax(-1).tolist() == [0, 0, 1]


def test_the_dev_choice_is_the_best_macro_f1_not_the_best_accuracy() -> None:
    gold = ["a"] * 18 + ["b"] * 2
    predicted = {
        "none": ["a"] * 20,  # accuracy 0.90, macro-F1 0.474
        "uniform": ["a"] * 10 + ["b"] * 10,  # accuracy 0.60, both b found
        "prior": ["a"] * 16 + ["b"] * 4,  # accuracy 0.90, both b found
    }
    chosen, scores = choose_on_dev(gold, predicted, ["a", "b"])
    assert chosen == "prior"
    assert scores["none"] == pytest.approx((2 * 18 / 38 + 0) / 2)
    assert scores["prior"] > scores["uniform"] > scores["none"]
    predicted["uniform"] = predicted["prior"]
    assert choose_on_dev(gold, predicted, ["a", "b"])[0] == "uniform"  # ties: simpler first
    predicted["none"] = predicted["prior"]
    assert choose_on_dev(gold, predicted, ["a", "b"])[0] == "none"


def test_the_warning_says_why_in_one_sentence() -> None:
    assert calibration_warning("t zero-shot", 0.80, 0.70, 0.60, "a") is None
    below = calibration_warning("t zero-shot (uniform)", 0.417, 0.808, 0.908, "pos")
    assert below == (
        "t zero-shot (uniform): accuracy 0.417 is at or below the majority class's 0.908 "
        "('pos' for every input) and below the uncalibrated 0.808."
    )
    at = calibration_warning("t", 0.5, 0.5, 0.5, "pos")
    assert at is not None and "below the uncalibrated" not in at
    worse = calibration_warning("t", 0.7, 0.8, 0.5, "pos")
    assert worse == "t: accuracy 0.700 is below the uncalibrated 0.800."
