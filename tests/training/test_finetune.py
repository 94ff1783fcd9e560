from pathlib import Path

import torch

from frozenlm.backbone import Backbone
from frozenlm.evaluation.evaluate import EvalConfig, evaluate
from frozenlm.plugins.checkpoint import load_checkpoint
from frozenlm.tasks import load_task
from frozenlm.training.config import TrainConfig
from frozenlm.training.finetune import LoraSettings, full_copy, lora_copy
from frozenlm.training.loop import train


def _snapshot(backbone: Backbone) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in backbone.model.named_parameters()}


def test_lora_trains_the_adapters_of_a_copy_only(tiny: Backbone, tmp_path: Path) -> None:
    task = load_task("sentiment")
    frozen = _snapshot(tiny)
    tuned, adapters = lora_copy(tiny, LoraSettings(r=4))
    names = list(adapters.tensors())
    assert names and all("lora_" in n for n in names)
    # r x in + out x r per projection, 4 projections per layer
    assert adapters.num_trainable() < 0.2 * tiny.num_parameters
    before = {n: t.clone() for n, t in adapters.tensors().items()}
    config = TrainConfig(
        steps=3,
        batch_size=4,
        optimizer="adamw",
        lr=1e-2,
        eval_every=3,
        eval_limit=4,
        recover=False,  # the random model may sit below zero-shot: a recovery would undo
    )
    train(tuned, adapters, [task], config, tmp_path / "run", meta={"kind": "lora"})
    after = adapters.tensors()
    assert any(not torch.equal(before[n], after[n]) for n in names)
    for name, value in _snapshot(tiny).items():  # the frozen backbone is untouched
        assert torch.equal(value, frozen[name]) and tiny.model.get_parameter(name).grad is None
    stored = load_checkpoint(tmp_path / "run" / "best").tensors
    assert set(stored) == set(names)


def test_full_fine_tuning_changes_the_copy_and_scores_with_it(
    tiny: Backbone, tmp_path: Path
) -> None:
    task = load_task("sentiment")
    tuned, weights = full_copy(tiny)
    assert weights.num_trainable() == tiny.num_parameters
    config = TrainConfig(
        steps=2,
        batch_size=4,
        optimizer="adamw",
        lr=1e-3,
        eval_every=2,
        eval_limit=4,
        recover=False,  # the random model may sit below zero-shot: a recovery would undo
    )
    train(tuned, weights, [task], config, tmp_path / "run", meta={"kind": "full-ft"})
    changed = [
        n
        for n, p in tuned.model.named_parameters()
        if not torch.equal(p, tiny.model.get_parameter(n))
    ]
    assert changed
    report = evaluate(tuned, task, EvalConfig(split="test", limit=6), plugin=weights)
    assert report.method == "full-ft" and report.n == 6
