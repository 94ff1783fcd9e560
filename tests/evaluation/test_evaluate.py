import json
from dataclasses import replace
from typing import Any

import pytest
import torch

from frozenlm.backbone import Backbone
from frozenlm.engine.prefix_cache import common_prefix_length
from frozenlm.engine.scoring import ScoreRequest, score_batch
from frozenlm.errors import ConfigError, DataError
from frozenlm.evaluation.calibration import log_prior_ratio
from frozenlm.evaluation.evaluate import (
    CONTENT_FREE,
    EvalConfig,
    evaluate,
    label_candidates,
    prompt_rows,
    score_prompts,
)
from frozenlm.metrics import exact_match, macro_f1, token_f1
from frozenlm.prompts.render import Prompter
from frozenlm.tasks import Example, Task, load_task


@pytest.fixture(scope="module")
def trec() -> Task:
    return load_task("trec")


@pytest.fixture(scope="module")
def sentiment() -> Task:
    return load_task("sentiment")


def _with_train(task: Task, shares: dict[str, int]) -> Task:
    """`task` with a train split of `shares[label]` examples of each label."""
    train = [ex for label, n in shares.items() for ex in _of(task.train, label)[:n]]
    return replace(task, train=tuple(train))


def _of(examples: tuple[Example, ...], label: str) -> list[Example]:
    return [ex for ex in examples if ex.label == label]


def _relabelled(examples: tuple[Example, ...], labels: list[str]) -> tuple[Example, ...]:
    """The first len(labels) examples, each given the label of the same position."""
    return tuple(replace(ex, label=label) for ex, label in zip(examples, labels, strict=False))


def test_report_is_complete_and_json_serialisable(tiny: Backbone, trec: Task) -> None:
    report = evaluate(tiny, trec, EvalConfig(limit=40))
    data = json.loads(json.dumps(report.to_json()))
    assert data["n"] == 40 and data["task"] == "trec" and data["method"] == "zero-shot"
    accuracy = data["metrics"]["accuracy"]
    assert accuracy["low"] <= accuracy["value"] <= accuracy["high"]
    assert data["fingerprint"] == tiny.fingerprint
    matrix = data["confusion"]["matrix"]
    assert sum(map(sum, matrix)) == 40
    correct = sum(matrix[i][i] for i in range(len(matrix)))
    assert accuracy["value"] == pytest.approx(correct / 40)
    assert report.examples_per_s > 0
    gold = [p["gold"] for p in data["predictions"]]
    predicted = [p["predicted"] for p in data["predictions"]]
    f1 = data["metrics"]["macro_f1"]
    assert f1["value"] == macro_f1(gold, predicted, list(trec.spec.labels))
    assert f1["low"] <= f1["value"] <= f1["high"]
    majority = [data["confusion"]["majority_label"]] * 40
    assert data["baseline"]["macro_f1"]["value"] == macro_f1(gold, majority, list(trec.spec.labels))
    assert data["calibration"] is None and data["warnings"] == []


def test_majority_baseline_is_the_share_of_the_train_majority(tiny: Backbone, trec: Task) -> None:
    report = evaluate(tiny, trec, EvalConfig(limit=60))
    majority = report.confusion["majority_label"]  # type: ignore[index]
    share = sum(ex.label == majority for ex in trec.test[:60]) / 60
    assert report.baseline["accuracy"].value == pytest.approx(share)


def test_calibration_divides_by_content_free_probabilities(tiny: Backbone, trec: Task) -> None:
    config = EvalConfig(limit=12, calibrate=True, calibration="uniform")
    report = evaluate(tiny, trec, config)
    raw = evaluate(tiny, trec, replace(config, calibrate=False))
    assert report.method == "zero-shot-calibrated"
    assert report.metrics["uncalibrated_accuracy"] == raw.metrics["accuracy"]
    assert report.metrics["uncalibrated_macro_f1"] == raw.metrics["macro_f1"]
    assert report.calibration is not None and report.calibration["chosen"] == "uniform"
    # Recompute p_cf by hand: mean over the content-free inputs of the label softmax.
    prompter = Prompter(
        trec.spec, tiny.tokenizer, config.prompt_config(), max_tokens=2048, answer_tokens=8
    )
    candidates = [prompter.continuation_ids(v) for v in trec.spec.labels.values()]
    cf_prompts = [prompter.render_content_free([], content=c) for c in CONTENT_FREE]
    cf_scores = score_batch(tiny, [ScoreRequest([p.ids], candidates) for p in cf_prompts])
    p_cf = torch.stack([torch.softmax(s.logprobs, -1) for s in cf_scores]).mean(0)
    for cal, unc in zip(report.predictions, raw.predictions, strict=True):
        expected = torch.log_softmax(torch.tensor(unc["scores"]), -1) - torch.log(p_cf)
        torch.testing.assert_close(torch.tensor(cal["scores"]), expected, atol=1e-3, rtol=0)


def test_prior_calibration_is_uniform_calibration_on_a_balanced_train_split(
    tiny: Backbone, sentiment: Task
) -> None:
    task = _with_train(sentiment, {"fresh": 20, "rotten": 20})
    config = EvalConfig(limit=16, calibrate=True, calibration="uniform")
    uniform = evaluate(tiny, task, config)
    prior = evaluate(tiny, task, replace(config, calibration="prior"))
    assert prior.predictions == uniform.predictions  # the scores too, exactly
    assert prior.metrics == uniform.metrics
    assert prior.calibration == uniform.calibration | {"mode": "prior", "chosen": "prior"}
    assert uniform.calibration is not None
    assert uniform.calibration["prior"] == {"fresh": 0.5, "rotten": 0.5}


def test_prior_calibration_favours_the_frequent_label_of_an_imbalanced_train_split(
    tiny: Backbone, sentiment: Task
) -> None:
    task = _with_train(sentiment, {"fresh": 90, "rotten": 10})
    config = EvalConfig(limit=40, calibrate=True, calibration="uniform")
    uniform = evaluate(tiny, task, config)
    prior = evaluate(tiny, task, replace(config, calibration="prior"))
    shift = log_prior_ratio([ex.label for ex in task.train], ["fresh", "rotten"])  # [2]
    assert shift[0] > 0 > shift[1]
    for u, p in zip(uniform.predictions, prior.predictions, strict=True):
        expected = torch.tensor(u["scores"]) + shift
        torch.testing.assert_close(torch.tensor(p["scores"]), expected, atol=2e-4, rtol=0)
    fresh = [sum(p["predicted"] == "fresh" for p in r.predictions) for r in (uniform, prior)]
    assert fresh[0] < fresh[1]


@pytest.mark.parametrize("target", ["none", "uniform", "prior"])
def test_the_dev_choice_is_the_calibration_whose_predictions_the_dev_labels_are(
    tiny: Backbone, sentiment: Task, target: str
) -> None:
    # Relabel dev with what one calibration predicts: that one scores macro-F1 1 there. The
    # tiny model's calibrated label scores differ by < 0.1 nats, so a slight skew (103:99 after
    # smoothing) is what keeps the prior's predictions apart from the other two.
    task = _with_train(sentiment, {"fresh": 102, "rotten": 98})
    alone = {
        "none": EvalConfig(limit=8),
        "uniform": EvalConfig(limit=8, calibrate=True, calibration="uniform"),
        "prior": EvalConfig(limit=8, calibrate=True, calibration="prior"),
    }
    labels = {
        name: [p["predicted"] for p in evaluate(tiny, task, on_dev).predictions]
        for name, config in alone.items()
        for on_dev in [replace(config, split="dev", limit=24)]
    }
    assert len({tuple(v) for v in labels.values()}) == 3  # the three choices differ on dev
    task = replace(task, dev=_relabelled(task.dev, labels[target]))
    config = EvalConfig(limit=8, calibrate=True, calibration="dev", dev_limit=24)
    report = evaluate(tiny, task, config)
    assert report.calibration is not None
    assert report.calibration["chosen"] == target and report.calibration["dev_n"] == 24
    assert report.calibration["dev_macro_f1"][target] == 1.0
    applied = evaluate(tiny, task, alone[target])
    assert report.predictions == applied.predictions  # on test: what dev chose, applied alone


def test_calibration_at_the_majority_class_is_a_warning_in_the_report(
    tiny: Backbone, sentiment: Task
) -> None:
    # Every test input is of train's majority label, so nothing can beat the majority class.
    task = _with_train(sentiment, {"fresh": 21, "rotten": 20})
    task = replace(task, test=tuple(_of(sentiment.test, "fresh")))
    config = EvalConfig(limit=20, calibrate=True, calibration="uniform")
    report = evaluate(tiny, task, config)
    accuracy = report.metrics["accuracy"].value
    assert report.to_json()["warnings"] == [
        f"sentiment zero-shot-calibrated (uniform): accuracy {accuracy:.3f} is at or below the "
        "majority class's 1.000 ('fresh' for every input)"
        + (
            f" and below the uncalibrated {report.metrics['uncalibrated_accuracy'].value:.3f}."
            if accuracy < report.metrics["uncalibrated_accuracy"].value
            else "."
        )
    ]
    assert report.headline().splitlines()[-2] == "  warning: " + report.warnings[0]
    # Gold labels that are the calibrated predictions: above the majority class, no warning.
    labels = [p["predicted"] for p in report.predictions]
    assert len(set(labels)) == 2
    right = replace(task, test=_relabelled(task.test, labels))
    perfect = evaluate(tiny, right, config)
    assert perfect.metrics["accuracy"].value == 1.0 and perfect.warnings == []


def test_a_dev_choice_is_not_scored_on_dev_and_needs_a_known_mode(
    tiny: Backbone, sentiment: Task
) -> None:
    with pytest.raises(ConfigError, match="calibration 'dev' chooses on the dev split"):
        evaluate(tiny, sentiment, EvalConfig(split="dev", calibrate=True, calibration="dev"))
    with pytest.raises(ConfigError, match="unknown calibration 'zhao'; expected one of uniform"):
        EvalConfig(calibration="zhao")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="has no dev examples to choose its calibration on"):
        empty = replace(sentiment, dev=())
        evaluate(tiny, empty, EvalConfig(limit=2, calibrate=True, calibration="dev"))


def test_few_shot_prompts_are_longer_and_counted(tiny: Backbone, trec: Task) -> None:
    zero = evaluate(tiny, trec, EvalConfig(limit=10))
    few = evaluate(tiny, trec, EvalConfig(method="few-shot", shots=3, limit=10))
    assert few.method == "few-shot-3"
    assert few.prompt_stats["mean_prompt_tokens"] > zero.prompt_stats["mean_prompt_tokens"] + 30


def test_generation_metrics_match_the_predictions(tiny: Backbone) -> None:
    trivia = load_task("trivia")
    report = evaluate(tiny, trivia, EvalConfig(limit=6, max_new_tokens=5))
    assert set(report.metrics) == {"exact_match", "f1"}
    em = [exact_match(p["answer"], p["gold"]) for p in report.predictions]
    f1 = [token_f1(p["answer"], p["gold"]) for p in report.predictions]
    assert report.metrics["exact_match"].value == pytest.approx(sum(em) / 6)
    assert report.metrics["f1"].value == pytest.approx(sum(f1) / 6)
    assert report.baseline == {}


def test_verbalizers_with_identical_tokens_are_refused(tiny: Backbone, trec: Task) -> None:
    labels = dict(trec.spec.labels)
    labels["LOC"] = labels["HUM"]
    task = replace(trec, spec=replace(trec.spec, labels=labels))
    with pytest.raises(DataError, match="'HUM' and 'LOC' are the same tokens"):
        evaluate(tiny, task, EvalConfig(limit=2))


def test_calibration_is_for_classification_only(tiny: Backbone) -> None:
    with pytest.raises(ConfigError, match="classification"):
        evaluate(tiny, load_task("trivia"), EvalConfig(calibrate=True, limit=2))


@pytest.mark.slow
def test_embedded_model_beats_chance_on_trec_with_calibration(
    embedded: Backbone, trec: Task
) -> None:
    report = evaluate(embedded, trec, EvalConfig(limit=60, calibrate=True, calibration="uniform"))
    assert report.metrics["accuracy"].value > 1 / 6 + 0.1


def test_chain_of_thought_is_named_in_the_method(tiny: Backbone) -> None:
    config = EvalConfig(limit=2, chain_of_thought=True, max_new_tokens=4)
    assert evaluate(tiny, load_task("trivia"), config).method == "zero-shot-cot"


def test_the_shared_text_prefix_is_computed_once_with_equal_scores(
    tiny: Backbone, trec: Task
) -> None:
    config = EvalConfig(method="few-shot", shots=3, limit=10)
    prompter = Prompter(
        trec.spec, tiny.tokenizer, config.prompt_config(), max_tokens=2048, answer_tokens=8
    )
    demos = list(trec.train[:3])
    prompts = [prompter.render(ex, demos) for ex in trec.test[:10]]
    assert common_prefix_length([p.ids for p in prompts]) > 50  # template + demonstrations
    candidates = label_candidates(trec, prompter)
    rows = prompt_rows(prompts)
    shared = score_prompts(tiny, rows, candidates, config, "shared")
    alone = score_prompts(tiny, rows, candidates, config, "alone", share_text=False)
    torch.testing.assert_close(shared, alone, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"limit": -3}, "limit must be a positive number of examples, got -3"),
        ({"limit": 0}, "limit must be a positive number of examples, got 0"),
        ({"shots": -1}, "shots must be 0 or more demonstrations, got -1"),
        ({"batch_rows": 0}, "batch_rows must be a positive number, got 0"),
        ({"batch_tokens": -5}, "batch_tokens must be a positive number, got -5"),
        ({"max_new_tokens": 0}, "max_new_tokens must be a positive number, got 0"),
        ({"max_prompt_tokens": 0}, "max_prompt_tokens must be a positive number, got 0"),
    ],
)
def test_a_non_positive_count_is_refused_in_one_sentence(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        EvalConfig(**fields)


def test_positive_counts_and_no_limit_are_accepted() -> None:
    assert EvalConfig(limit=1, shots=0).limit == 1
    assert EvalConfig().limit is None
