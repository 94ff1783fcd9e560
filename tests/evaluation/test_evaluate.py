import json
from dataclasses import replace
from typing import Any

import pytest
import torch

from frozenlm.backbone import Backbone
from frozenlm.engine.prefix_cache import common_prefix_length
from frozenlm.engine.scoring import ScoreRequest, score_batch
from frozenlm.errors import ConfigError, DataError
from frozenlm.evaluation.evaluate import (
    CONTENT_FREE,
    EvalConfig,
    evaluate,
    label_candidates,
    prompt_rows,
    score_prompts,
)
from frozenlm.metrics import exact_match, token_f1
from frozenlm.prompts.render import Prompter
from frozenlm.tasks import Task, load_task


@pytest.fixture(scope="module")
def trec() -> Task:
    return load_task("trec")


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


def test_majority_baseline_is_the_share_of_the_train_majority(tiny: Backbone, trec: Task) -> None:
    report = evaluate(tiny, trec, EvalConfig(limit=60))
    majority = report.confusion["majority_label"]  # type: ignore[index]
    share = sum(ex.label == majority for ex in trec.test[:60]) / 60
    assert report.baseline["accuracy"].value == pytest.approx(share)


def test_calibration_divides_by_content_free_probabilities(tiny: Backbone, trec: Task) -> None:
    config = EvalConfig(limit=12, calibrate=True)
    report = evaluate(tiny, trec, config)
    raw = evaluate(tiny, trec, replace(config, calibrate=False))
    assert report.method == "zero-shot-calibrated"
    assert report.metrics["uncalibrated_accuracy"] == raw.metrics["accuracy"]
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
    report = evaluate(embedded, trec, EvalConfig(limit=60, calibrate=True))
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
