import pytest
import torch

from frozenlm.backbone import Backbone
from frozenlm.errors import ConfigError
from frozenlm.evaluation.ensemble import combine, evaluate_ensemble
from frozenlm.evaluation.evaluate import EvalConfig, evaluate
from frozenlm.plugins.soft_prompt import SoftPromptConfig, SoftPromptSet
from frozenlm.tasks import load_task


def test_combine_by_vote_and_by_mean_logprob() -> None:
    # 3 prompts, 2 examples, 2 labels (log-probabilities)
    scores = torch.log(
        torch.tensor(
            [
                [[0.6, 0.4], [0.9, 0.1]],
                [[0.6, 0.4], [0.45, 0.55]],
                [[0.01, 0.99], [0.45, 0.55]],
            ]
        )
    )
    by_vote, by_mean = combine(scores)
    assert by_vote.tolist() == [0, 1]  # two of three prompts vote 0, then 1
    assert by_mean.tolist() == [1, 0]  # the confident prompt wins on mean log-probability


def test_vote_ties_go_to_the_higher_mean() -> None:
    scores = torch.log(torch.tensor([[[0.9, 0.1]], [[0.45, 0.55]]]))
    by_vote, _ = combine(scores)
    assert by_vote.tolist() == [0]


def test_singles_equal_separate_evaluations(tiny: Backbone) -> None:
    task = load_task("trec")
    torch.manual_seed(0)
    weights = [torch.randn(3, tiny.hidden_size), torch.randn(5, tiny.hidden_size)]
    config = EvalConfig(limit=24)
    plugins = [SoftPromptSet({"trec": w}, SoftPromptConfig(length=len(w))) for w in weights]
    report = evaluate_ensemble(tiny, task, plugins, config)
    for plugin, single in zip(plugins, report.singles, strict=True):
        alone = evaluate(tiny, task, config, plugin=plugin)
        assert alone.metrics["accuracy"] == single
    assert report.n == 24 and report.prompts == 2


def test_an_ensemble_needs_two_prompts(tiny: Backbone) -> None:
    with pytest.raises(ConfigError, match="at least two"):
        one = SoftPromptSet({"trec": torch.zeros(2, tiny.hidden_size)}, SoftPromptConfig(length=2))
        evaluate_ensemble(tiny, load_task("trec"), [one])
