"""Saved plug-ins evaluated as they were trained, alone and as a prompt ensemble."""

from pathlib import Path

import pytest
import torch

from conftest import write_toy_task
from frozenlm.backbone import Backbone
from frozenlm.codec import to_json
from frozenlm.errors import ConfigError
from frozenlm.evaluation.ensemble import combine
from frozenlm.evaluation.evaluate import EvalConfig, evaluate
from frozenlm.evaluation.saved import evaluate_saved, evaluate_saved_ensemble
from frozenlm.metrics import bootstrap
from frozenlm.plugins.registry import load_plugin
from frozenlm.plugins.soft_prompt import SoftPromptConfig
from frozenlm.tasks import load_task
from frozenlm.training.config import TrainConfig
from frozenlm.training.loop import train_plugin


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny: Backbone) -> tuple[Path, Path, Path]:
    """Two soft prompts for the toy task and trec (seeds 0 and 1), trained without the chat
    template; and the toy task file."""
    folder = tmp_path_factory.mktemp("saved")
    task = write_toy_task(folder)
    for seed in (0, 1):
        config = TrainConfig(steps=2, batch_size=4, eval_every=2, eval_limit=4, seed=seed,
                             chat_template=False)  # fmt: skip
        plugin = to_json(SoftPromptConfig(length=3))
        train_plugin(tiny, [str(task), "trec"], "soft-prompt", plugin, config, folder / f"{seed}")
    return folder / "0", folder / "1", task


def test_a_saved_plugin_is_evaluated_on_its_tasks_as_it_was_trained(
    tiny: Backbone, runs: tuple[Path, Path, Path]
) -> None:
    first, _, task_file = runs
    result = evaluate_saved(tiny, first, limit=6)
    assert [r.task for r in result.reports] == ["toy", "trec"]
    assert [t.name for t in result.tasks] == ["toy", "trec"]
    plugin, _ = load_plugin(first, tiny)
    config = EvalConfig(limit=6, chat_template=False)  # as trained
    for source, report in zip([str(task_file), "trec"], result.reports, strict=True):
        reference = evaluate(tiny, load_task(source), config, plugin=plugin)
        assert report.predictions == reference.predictions
        assert report.metrics == reference.metrics
    assert result.to_json() == {"reports": [r.to_json() for r in result.reports]}


def test_one_task_gives_its_report_and_uses_the_training_split_seed(
    tiny: Backbone, runs: tuple[Path, Path, Path]
) -> None:
    _, second, _ = runs
    result = evaluate_saved(tiny, second, ["trec"], limit=4)
    (report,) = result.reports
    assert result.to_json() == report.to_json()
    assert result.tasks[0].split_hash() == load_task("trec", seed=1).split_hash()


def test_a_task_the_plugin_was_not_trained_for_is_refused(
    tiny: Backbone, runs: tuple[Path, Path, Path]
) -> None:
    first, _, _ = runs
    with pytest.raises(ConfigError, match="was trained for toy, trec, not 'sentiment'"):
        evaluate_saved(tiny, first, ["sentiment"])


def test_an_ensemble_combines_what_each_prompt_scores_alone(
    tiny: Backbone, runs: tuple[Path, Path, Path]
) -> None:
    first, second, _ = runs
    result = evaluate_saved_ensemble(tiny, [first, second], "trec", limit=8)
    task = load_task("trec")  # the ensemble's splits: seed 0
    assert result.task.split_hash() == task.split_hash()
    config = EvalConfig(limit=8, chat_template=False)
    alone = [evaluate(tiny, task, config, plugin=load_plugin(f, tiny)[0]) for f in runs[:2]]
    assert result.report.singles == [r.metrics["accuracy"] for r in alone]
    scores = torch.tensor([[p["scores"] for p in r.predictions] for r in alone])  # [N, n, K]
    labels = alone[0].confusion["labels"] if alone[0].confusion else []
    gold = torch.tensor([labels.index(p["gold"]) for p in alone[0].predictions])
    by_vote, by_mean = combine(scores)
    assert result.report.mean_logprob == bootstrap((by_mean == gold).float().tolist(), seed=0)
    assert result.report.majority_vote == bootstrap((by_vote == gold).float().tolist(), seed=0)
    assert result.report.names == [str(first), str(second)]


def test_an_ensemble_needs_every_prompt_for_the_task(
    tiny: Backbone, runs: tuple[Path, Path, Path]
) -> None:
    first, second, _ = runs
    with pytest.raises(ConfigError, match=f"'{first}' has no prompt for task 'sentiment'"):
        evaluate_saved_ensemble(tiny, [first, second], "sentiment")
