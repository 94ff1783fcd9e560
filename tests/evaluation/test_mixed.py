"""Rows of several plug-ins and tasks in one batch score as each would alone."""

import pytest
import torch

from frozenlm.backbone import Backbone
from frozenlm.errors import ConfigError
from frozenlm.evaluation.evaluate import EvalConfig, evaluate
from frozenlm.evaluation.mixed import PluggedRow, score_plugged_rows
from frozenlm.plugins.prompt_generator import PromptGenerator, PromptGeneratorConfig
from frozenlm.plugins.soft_prompt import SoftPromptConfig, SoftPromptSet
from frozenlm.tasks import load_task


def test_soft_prompt_id_pt_and_plain_rows_in_one_batch_equal_their_own_evaluations(
    tiny: Backbone,
) -> None:
    sentiment, trec = load_task("sentiment"), load_task("trec")
    prompts = SoftPromptSet.from_config(SoftPromptConfig(length=5), tiny, [sentiment.spec], 0)
    small = PromptGeneratorConfig(length=3, width=32, heads=2, ffn=64)
    generator = PromptGenerator.from_config(small, tiny, [trec.spec], seed=0).eval()
    with torch.no_grad():
        generator.write.weight.normal_(0, 0.5)  # make its prompts differ per input
    n = 4
    rows = []
    for i in range(n):  # interleaved: every batch mixes plug-ins, tasks and prompt lengths
        rows.append(PluggedRow(prompts, sentiment, sentiment.test[i]))
        rows.append(PluggedRow(generator, trec, trec.test[i]))
        rows.append(PluggedRow(generator, sentiment, sentiment.test[i]))
        rows.append(PluggedRow(None, trec, trec.test[i]))
    mixed = score_plugged_rows(tiny, rows, EvalConfig(batch_rows=16))

    config = EvalConfig(limit=n)
    alone = {
        ("soft", "sentiment"): evaluate(tiny, sentiment, config, plugin=prompts),
        ("gen", "trec"): evaluate(tiny, trec, config, plugin=generator),
        ("gen", "sentiment"): evaluate(tiny, sentiment, config, plugin=generator),
        ("none", "trec"): evaluate(tiny, trec, config),
    }
    keys = [("soft", "sentiment"), ("gen", "trec"), ("gen", "sentiment"), ("none", "trec")]
    for j, got in enumerate(mixed):
        report = alone[keys[j % 4]]
        want = report.predictions[j // 4]
        assert got.labels == list(report.confusion["labels"])  # type: ignore[index]
        torch.testing.assert_close(got.logprobs, torch.tensor(want["scores"]), atol=2e-4, rtol=0)
        assert got.predicted == want["predicted"]


def test_generation_rows_and_few_shot_are_refused(tiny: Backbone) -> None:
    trivia = load_task("trivia")
    with pytest.raises(ConfigError, match="'trivia' is not classification"):
        score_plugged_rows(tiny, [PluggedRow(None, trivia, trivia.test[0])])
    trec = load_task("trec")
    with pytest.raises(ConfigError, match="zero-shot prompts"):
        score_plugged_rows(
            tiny, [PluggedRow(None, trec, trec.test[0])], EvalConfig(method="few-shot")
        )
