"""The plug-in classifier: training learns (fine-tuned or a head over the frozen encoder),
out-of-fold exclusion, save/load, label mapping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from conftest import write_toy_task
from frozenlm.errors import CheckpointError, ConfigError
from frozenlm.supericl.small_classifier import (
    HEAD_TENSORS,
    MARKER,
    ClassifierTrainConfig,
    EncoderTraining,
    SmallClassifier,
)
from frozenlm.tasks import load_task
from frozenlm.tasks.spec import Task


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Task:
    return load_task(str(write_toy_task(tmp_path_factory.mktemp("toy"), 120)))


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory, toy: Task) -> Path:
    """A tiny random BERT saved as a Hugging Face folder: the encoder the unit tests train."""
    folder = tmp_path_factory.mktemp("enc") / "tiny"
    SmallClassifier.tiny(toy).save(folder)
    return folder


def test_training_learns_the_toy_task_and_leaves_out_the_excluded(
    toy: Task, tiny_encoder: Path
) -> None:
    excluded = [ex.id for ex in toy.train[:4]]
    config = ClassifierTrainConfig(epochs=6, batch_size=8, lr=3e-3, seed=0)
    plugin = SmallClassifier.train(toy, config, exclude=excluded, encoder=str(tiny_encoder))
    assert plugin.info["train_examples"] == len(toy.train) - 4
    assert plugin.info["excluded_ids"] == sorted(excluded)
    assert plugin.accuracy(toy.test) >= 0.9
    best = max(h["dev_accuracy"] for h in plugin.info["history"])
    assert plugin.info["dev_accuracy"] == best


FROZEN = ClassifierTrainConfig(
    encoder_training=EncoderTraining.FROZEN, epochs=40, batch_size=200, lr=3e-2, dev_limit=8
)


def test_frozen_training_changes_only_the_head_and_keeps_the_last_epoch(
    toy: Task, tiny_encoder: Path
) -> None:
    plugin = SmallClassifier.train(toy, FROZEN, encoder=str(tiny_encoder))
    encoder = AutoModel.from_pretrained(tiny_encoder).state_dict()
    for name, value in plugin.model.encoder.state_dict().items():
        assert torch.equal(value, encoder[name]), name
    assert plugin.num_trained == 32 * 2 + 2  # hidden 32 -> 2 labels, and the biases
    assert plugin.info["best_epoch"] == FROZEN.epochs and not plugin.info["dev_selects"]
    losses = plugin.info["losses"]
    assert len(losses) == FROZEN.epochs and losses[-1] < losses[0] / 2
    assert plugin.accuracy(toy.test) >= 0.9


def test_a_frozen_plugin_saves_its_head_only_and_checks_its_encoder(
    toy: Task, tiny_encoder: Path, tmp_path: Path
) -> None:
    plugin = SmallClassifier.train(toy, FROZEN, encoder=str(tiny_encoder))
    plugin.save(tmp_path / "p")
    assert sorted(f.name for f in (tmp_path / "p").iterdir()) == sorted([MARKER, HEAD_TENSORS])
    loaded = SmallClassifier.load(tmp_path / "p", toy.spec)
    assert torch.equal(plugin.probabilities(toy.test), loaded.probabilities(toy.test))
    SmallClassifier.tiny(toy, seed=5).save(tmp_path / "other")  # same shapes, other weights
    marker = json.loads((tmp_path / "p" / MARKER).read_text())
    (tmp_path / "p" / MARKER).write_text(json.dumps({**marker, "encoder": str(tmp_path / "other")}))
    with pytest.raises(CheckpointError, match="was trained over encoder weights"):
        SmallClassifier.load(tmp_path / "p", toy.spec)
    (tmp_path / "p" / MARKER).write_text(json.dumps({**marker, "encoder": str(tmp_path / "no")}))
    with pytest.raises(CheckpointError, match="which is not a model folder here"):
        SmallClassifier.load(tmp_path / "p", toy.spec)


def test_a_config_without_epochs_or_rows_is_refused() -> None:
    with pytest.raises(ConfigError, match="plug-in epochs must be >= 1, got 0"):
        ClassifierTrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="plug-in batch_size must be >= 1, got 0"):
        ClassifierTrainConfig(batch_size=0)


def test_seeded_training_and_init_leave_the_callers_rng_untouched(
    toy: Task, tiny_encoder: Path
) -> None:
    torch.manual_seed(11)
    before = torch.random.get_rng_state()
    first = SmallClassifier.tiny(toy, seed=3)
    config = ClassifierTrainConfig(epochs=1, max_train=16, batch_size=8, dev_limit=8, seed=2)
    trained = SmallClassifier.train(toy, config, encoder=str(tiny_encoder))
    assert torch.equal(torch.random.get_rng_state(), before)
    torch.manual_seed(12)  # another caller state: the same seeds give the same weights
    again = SmallClassifier.train(toy, config, encoder=str(tiny_encoder))
    for name, value in SmallClassifier.tiny(toy, seed=3).model.state_dict().items():
        assert torch.equal(value, first.model.state_dict()[name])
    for name, value in again.model.state_dict().items():
        assert torch.equal(value, trained.model.state_dict()[name])


def test_predictions_carry_the_softmax_confidence(toy: Task) -> None:
    plugin = SmallClassifier.tiny(toy)
    probs = plugin.probabilities(toy.test[:5])
    assert probs.shape == (5, 2)
    assert torch.allclose(probs.sum(dim=-1), torch.ones(5))
    for p, row in zip(plugin.predict(toy.test[:5]), probs, strict=True):
        assert p.confidence == pytest.approx(float(row.max()))
        assert p.label == plugin.labels[int(row.argmax())]


def test_save_and_load_give_the_same_probabilities(toy: Task, tmp_path: Path) -> None:
    plugin = SmallClassifier.tiny(toy, seed=3)
    plugin.save(tmp_path / "p")
    loaded = SmallClassifier.load(tmp_path / "p", toy.spec)
    assert torch.allclose(plugin.probabilities(toy.test), loaded.probabilities(toy.test))
    assert not list(tmp_path.glob("*.tmp*"))


def test_load_refuses_another_tasks_plugin_and_a_non_model_folder(
    toy: Task, tmp_path: Path
) -> None:
    SmallClassifier.tiny(toy).save(tmp_path / "p")
    other = load_task("sentiment")
    with pytest.raises(CheckpointError, match="trained on task 'toy', not 'sentiment'"):
        SmallClassifier.load(tmp_path / "p", other.spec)
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        SmallClassifier.load(tmp_path, toy.spec)


def test_label_names_map_by_name_verbalizer_or_position(toy: Task) -> None:
    plugin = SmallClassifier.tiny(toy)
    config = plugin.model.config
    config.id2label = {0: "NO", 1: "yes"}  # verbalizers, any case, in another order
    assert SmallClassifier(plugin.model, plugin.tokenizer, toy.spec, {}).labels == ["neg", "pos"]
    config.id2label = {0: "LABEL_0", 1: "LABEL_1"}  # unnamed: the task's order
    assert SmallClassifier(plugin.model, plugin.tokenizer, toy.spec, {}).labels == ["pos", "neg"]
    config.id2label = {0: "cat", 1: "dog"}
    with pytest.raises(CheckpointError, match=r"labels \(cat, dog\) are not the labels"):
        SmallClassifier(plugin.model, plugin.tokenizer, toy.spec, {})
    sentiment3 = load_task("trec").spec
    with pytest.raises(CheckpointError, match="has 2 outputs but task 'trec' has 6 labels"):
        SmallClassifier(plugin.model, plugin.tokenizer, sentiment3, {})
