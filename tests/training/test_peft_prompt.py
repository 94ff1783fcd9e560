from pathlib import Path

import pytest
import torch

from frozenlm.backbone import Backbone
from frozenlm.engine.loss import batch_loss
from frozenlm.evaluation.evaluate import EvalConfig, evaluate
from frozenlm.plugins.prefix import kv_shape
from frozenlm.plugins.protocol import Plugin
from frozenlm.tasks import Task, load_task
from frozenlm.training.config import TrainConfig
from frozenlm.training.peft_prompt import (
    PeftPrefixConfig,
    PeftPromptConfig,
    train_peft_prefix,
    train_peft_prompt,
)
from frozenlm.training.rows import DataOrder, training_rows


def test_peft_reference_trains_and_leaves_the_backbone_untouched(tiny: Backbone) -> None:
    fingerprint = tiny.fingerprint
    weights_before = tiny.model.get_input_embeddings().weight.clone()
    task = load_task("trec")
    rng_before = torch.random.get_rng_state()
    result = train_peft_prompt(tiny, task, PeftPromptConfig(prompt_length=4, steps=3, batch_size=4))
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # seeded inside, caller untouched
    assert len(result.losses) == 3 and result.seconds > 0
    prompt = result.plugin.prompts["trec"]
    assert prompt.shape == (4, tiny.hidden_size) and prompt.dtype == torch.float32
    assert torch.equal(tiny.model.get_input_embeddings().weight, weights_before)
    assert not tiny.model.training
    assert all(not p.requires_grad for p in tiny.model.parameters())
    tiny.__dict__.pop("fingerprint", None)  # recompute from the weights
    assert tiny.fingerprint == fingerprint
    report = evaluate(tiny, task, EvalConfig(limit=8), plugin=result.plugin)
    assert report.method == "soft-prompt" and report.n == 8


def assert_losses_are_frozenlms(
    tiny: Backbone, task: Task, plugin: Plugin, losses: list[float]
) -> None:
    """Each of PEFT's step losses (3 steps of batch 4, seed 2, learning rate 0) equals
    frozenlm's loss, behind the converted `plugin`, of the rows frozenlm's loop would give that
    step (`training_rows`, `DataOrder`): the same rows, order, positions and layout."""
    rows = training_rows(tiny, [task], TrainConfig(seed=2))
    order = DataOrder(len(rows), 2)
    (conditioning,) = plugin.condition(task.spec, [task.train[0]])
    conditioning = conditioning.detached()
    for step, loss in enumerate(losses):
        batch = [rows[order[p]] for p in range(4 * step, 4 * step + 4)]
        with torch.no_grad():
            ours = batch_loss(
                tiny, [conditioning.row(r.prefix, r.input_start) for r in batch],
                [r.target for r in batch],
            )  # fmt: skip
        assert float(ours) == pytest.approx(loss, abs=1e-5)
    assert len(set(losses)) == 3  # different rows each step: the check can fail


def test_peft_prompt_sees_the_loops_rows_in_order_and_converts_exactly(tiny: Backbone) -> None:
    """At learning rate 0 each step's PEFT loss must equal frozenlm's loss of the same rows
    behind the converted soft prompt: same rows, order and place of the prompt (PEFT's virtual
    tokens go before everything, whatever frozenlm's default position is)."""
    task = load_task("trec")
    config = PeftPromptConfig(prompt_length=3, steps=3, batch_size=4, lr=0.0, seed=2)
    result = train_peft_prompt(tiny, task, config)
    assert_losses_are_frozenlms(tiny, task, result.plugin, result.losses)


def test_peft_prefix_sees_the_loops_rows_in_order_and_converts_exactly(tiny: Backbone) -> None:
    """At learning rate 0 the prefix stays at PEFT's init, so each step's PEFT loss must equal
    frozenlm's loss, behind the converted deep prompt, of the rows frozenlm's loop would give
    that step (`training_rows`, `DataOrder`): the same rows, order, positions and layout."""
    task = load_task("trec")
    fingerprint = tiny.fingerprint
    rng_before = torch.random.get_rng_state()
    config = PeftPrefixConfig(num_virtual_tokens=3, steps=3, batch_size=4, lr=0.0, seed=2)
    result = train_peft_prefix(tiny, task, config)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # seeded inside, caller untouched
    layers, heads, width = kv_shape(tiny)
    prefix = result.plugin.prefixes["trec"]
    assert list(prefix.shape) == [layers, 2, heads, 3, width] and prefix.dtype == torch.float32
    assert not tiny.model.training
    assert all(not p.requires_grad for p in tiny.model.parameters())
    tiny.__dict__.pop("fingerprint", None)  # recompute from the weights
    assert tiny.fingerprint == fingerprint

    assert_losses_are_frozenlms(tiny, task, result.plugin, result.losses)


def test_peft_prefix_learns_with_its_examples_recipe(tiny: Backbone, tmp_path: Path) -> None:
    from conftest import write_toy_task

    toy = load_task(str(write_toy_task(tmp_path, 8)))  # 4 training rows: every step sees them
    result = train_peft_prefix(tiny, toy, PeftPrefixConfig(num_virtual_tokens=4, steps=6,
                                                           batch_size=4))  # fmt: skip
    assert len(result.losses) == 6 and result.seconds > 0
    assert result.losses[-1] < result.losses[0] - 0.05
    report = evaluate(tiny, toy, EvalConfig(split="dev"), plugin=result.plugin)
    assert report.method == "prefix" and report.n == len(toy.dev)
