"""Deep prompts: per-layer key/value prefixes, through every path a soft prompt takes."""

from pathlib import Path

import pytest
import torch

from frozenlm.backbone import Backbone
from frozenlm.codec import to_json
from frozenlm.engine.batching import BatchBudget, Row, generate_rows, score_rows
from frozenlm.engine.generation import GenerationConfig
from frozenlm.errors import CheckpointError
from frozenlm.evaluation.evaluate import EvalConfig, classification_prompter, evaluate
from frozenlm.evaluation.mixed import PluggedRow, score_plugged_rows
from frozenlm.plugins.prefix import DeepPrompt, PrefixConfig, kv_shape
from frozenlm.plugins.protocol import SoftPosition
from frozenlm.plugins.registry import load_plugin
from frozenlm.plugins.soft_prompt import PromptInit, SoftPromptConfig, SoftPromptSet, initial_ids
from frozenlm.tasks import load_task
from frozenlm.training.config import TrainConfig
from frozenlm.training.loop import train_plugin


def _prefix_text(backbone: Backbone, config: PrefixConfig, spec, seed: int = 0) -> list[int]:
    """The tokens a fresh deep prompt's keys and values are those of."""
    return initial_ids(backbone, config.init, config.length, [spec], seed, config.vocab_size)


def test_a_fresh_deep_prompt_is_its_init_tokens_as_text(tiny: Backbone) -> None:
    """Initialised from real tokens' keys and values, a deep prompt scores every row exactly as
    those tokens written before the prompt do: the prefix sits at every layer, in position."""
    task = load_task("trec")
    config = PrefixConfig(length=6)
    deep = DeepPrompt.from_config(config, tiny, [task.spec], seed=0)
    report = evaluate(tiny, task, EvalConfig(limit=6), plugin=deep)
    prompter, candidates = classification_prompter(tiny, task, EvalConfig())
    text = _prefix_text(tiny, config, task.spec)
    rows = [Row(text + prompter.render(ex).ids) for ex in task.test[:6]]
    want = score_rows(tiny, rows, [candidates] * len(rows))
    for got, alone in zip(report.predictions, want, strict=True):
        torch.testing.assert_close(torch.tensor(got["scores"]), alone.logprobs, atol=2e-4, rtol=0)


def test_generation_after_a_deep_prompt_uses_its_cache(tiny: Backbone) -> None:
    task = load_task("trec")
    config = PrefixConfig(length=5)
    deep = DeepPrompt.from_config(config, tiny, [task.spec], seed=1)
    (conditioning,) = deep.condition(task.spec, [task.test[0]])
    ids = list(tiny.tokenizer("Question: why is the sky blue?\nAnswer:")["input_ids"])
    gen = GenerationConfig(max_new_tokens=6, stop=())
    with torch.no_grad():
        got = generate_rows(tiny, [conditioning.detached().row(ids, 0)], gen)
    want = generate_rows(tiny, [Row(_prefix_text(tiny, config, task.spec, 1) + ids)], gen)
    assert got == want


def test_prefix_rows_soft_prompt_rows_and_plain_rows_share_batches(tiny: Backbone) -> None:
    sentiment, trec = load_task("sentiment"), load_task("trec")
    deep = DeepPrompt.from_config(PrefixConfig(length=4), tiny, [trec.spec], seed=0)
    with torch.no_grad():
        deep.prefixes["trec"].add_(torch.randn_like(deep.prefixes["trec"]) * 0.3)
    soft_config = SoftPromptConfig(length=3, position=SoftPosition.INPUT)
    soft = SoftPromptSet.from_config(soft_config, tiny, [sentiment.spec], 0)
    rows = []
    for i in range(3):
        rows += [
            PluggedRow(deep, trec, trec.test[i]),
            PluggedRow(soft, sentiment, sentiment.test[i]),
            PluggedRow(None, trec, trec.test[i]),
        ]
    mixed = score_plugged_rows(tiny, rows, EvalConfig(batch_rows=16))
    config = EvalConfig(limit=3)
    alone = [
        evaluate(tiny, trec, config, plugin=deep),
        evaluate(tiny, sentiment, config, plugin=soft),
        evaluate(tiny, trec, config),
    ]
    for j, got in enumerate(mixed):
        want = alone[j % 3].predictions[j // 3]["scores"]
        torch.testing.assert_close(got.logprobs, torch.tensor(want), atol=2e-4, rtol=0)


@pytest.mark.parametrize("reparameterize", [0, 16])
def test_training_moves_the_prefix_only_and_saves_what_it_wrote(
    tiny: Backbone, tmp_path: Path, reparameterize: int
) -> None:
    from conftest import write_toy_task

    task_file = write_toy_task(tmp_path, 32)
    prefix = to_json(PrefixConfig(length=4, reparameterize=reparameterize))
    config = TrainConfig(steps=6, batch_size=4, eval_every=3, eval_limit=8, patience=0,
                         optimizer="adamw", lr=1e-2)  # fmt: skip
    result = train_plugin(tiny, [str(task_file)], "prefix", prefix, config, tmp_path / "run")
    assert result.steps_done == 6
    assert all(p.grad is None for p in tiny.model.parameters())
    loaded, checkpoint = load_plugin(tmp_path / "run", tiny)
    assert isinstance(loaded, DeepPrompt) and not loaded.mlps  # the network is not stored
    layers, heads, width = kv_shape(tiny)
    assert list(checkpoint.tensors["prefix.toy"].shape) == [layers, 2, heads, 4, width]
    fresh = DeepPrompt.from_config(
        PrefixConfig(length=4), tiny, [load_task(str(task_file)).spec], 0
    )
    assert not torch.equal(fresh.prefixes["toy"], loaded.prefixes["toy"])  # it learnt
    toy = load_task(str(task_file))
    report = evaluate(tiny, toy, EvalConfig(split="dev", limit=8), plugin=loaded)
    assert report.metrics["accuracy"].value == pytest.approx(
        checkpoint.meta["metrics"]["dev"], abs=1e-9
    )


def test_a_prefix_of_the_wrong_shape_is_refused_in_one_sentence(tiny: Backbone) -> None:
    layers, heads, width = kv_shape(tiny)
    wrong = {"prefix.trec": torch.zeros(layers, 2, heads, 5, width + 1)}
    with pytest.raises(CheckpointError, match=r"deep prompt tensor 'prefix.trec' is .* needs"):
        DeepPrompt.from_tensors(wrong, PrefixConfig(length=5), tiny)
    with pytest.raises(CheckpointError, match="not a deep prompt"):
        DeepPrompt.from_tensors({"prompt.trec": torch.zeros(2, 2)}, PrefixConfig(), tiny)


def test_random_init_is_small_noise_and_seeded(tiny: Backbone) -> None:
    spec = load_task("trec").spec
    config = PrefixConfig(length=3, init=PromptInit.RANDOM)
    a = DeepPrompt.from_config(config, tiny, [spec], seed=2).prefixes["trec"]
    b = DeepPrompt.from_config(config, tiny, [spec], seed=2).prefixes["trec"]
    assert torch.equal(a, b) and float(a.abs().max()) < 0.2


def test_soft_prompt_positions_put_the_prompt_where_they_say(tiny: Backbone) -> None:
    """start: before the first token; after-first: after it; input: before the input, after
    the text every prompt of the task starts with."""
    task = load_task("sentiment")
    prompter, _ = classification_prompter(tiny, task, EvalConfig())
    a, b = (prompter.render(ex) for ex in task.test[:2])
    assert 0 < a.input_start == b.input_start < len(a.ids)
    assert a.ids[: a.input_start] == b.ids[: b.input_start]
    for position, at in [("start", 0), ("after-first", 1), ("input", a.input_start)]:
        config = SoftPromptConfig(length=2, position=position)
        soft = SoftPromptSet.from_config(config, tiny, [task.spec], 0)
        (conditioning,) = soft.condition(task.spec, [task.test[0]])
        assert conditioning.row(a.ids, a.input_start).soft_at == at


def test_residual_reparameterization_starts_at_the_init_and_stores_the_prompt(
    tiny: Backbone,
) -> None:
    spec = load_task("trec").spec
    plain = SoftPromptSet.from_config(SoftPromptConfig(length=4), tiny, [spec], 0)
    residual = SoftPromptSet.from_config(SoftPromptConfig(length=4, residual=8), tiny, [spec], 0)
    assert len(residual.residual) == 1 and residual.num_trainable() > plain.num_trainable()
    torch.testing.assert_close(residual.prompt("trec"), plain.prompt("trec"))
    with torch.no_grad():
        residual.residual["trec"].up.weight.normal_()
    stored = residual.tensors()["prompt.trec"]
    torch.testing.assert_close(stored, residual.prompt("trec").detach())
    assert not torch.allclose(stored, plain.prompt("trec"))


def test_a_batch_budget_does_not_change_prefix_scores(tiny: Backbone) -> None:
    task = load_task("trec")
    deep = DeepPrompt.from_config(PrefixConfig(length=3), tiny, [task.spec], seed=0)
    small = evaluate(tiny, task, EvalConfig(limit=8, batch_rows=3), plugin=deep)
    large = evaluate(tiny, task, EvalConfig(limit=8, batch_rows=16), plugin=deep)
    for x, y in zip(small.predictions, large.predictions, strict=True):
        torch.testing.assert_close(
            torch.tensor(x["scores"]), torch.tensor(y["scores"]), atol=2e-4, rtol=0
        )
    assert BatchBudget().rows == 16
