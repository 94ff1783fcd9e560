"""The ID-PT prompt generator: what it reads, shapes, masking, size, checkpoints, encoders."""

import json
from pathlib import Path

import pytest
import torch

from frozenlm.backbone import Backbone, TinyConfig
from frozenlm.codec import to_json
from frozenlm.errors import CheckpointError, ConfigError
from frozenlm.evaluation.evaluate import EvalConfig, evaluate
from frozenlm.plugins.prompt_generator import (
    BackboneEmbeddingEncoder,
    EncoderKind,
    MiniLMEncoder,
    PromptGenerator,
    PromptGeneratorConfig,
    generator_text,
)
from frozenlm.plugins.protocol import SoftPosition
from frozenlm.plugins.registry import load_plugin
from frozenlm.plugins.soft_prompt import SoftPromptConfig, SoftPromptSet
from frozenlm.tasks import load_task
from frozenlm.training.config import TrainConfig
from frozenlm.training.loop import train_plugin

SMALL = PromptGeneratorConfig(length=3, width=32, heads=2, ffn=64)


def _perturbed(backbone: Backbone, config: PromptGeneratorConfig = SMALL) -> PromptGenerator:
    """A generator whose output projection is no longer zero, so its input shows."""
    generator = PromptGenerator.from_config(config, backbone, [], seed=0).eval()
    with torch.no_grad():
        generator.write.weight.normal_(0, 0.5)
    return generator


def test_a_new_generator_writes_the_shared_soft_prompt_for_every_input(tiny: Backbone) -> None:
    specs = [load_task("sentiment").spec, load_task("trec").spec]
    generator = PromptGenerator.from_config(SMALL, tiny, specs, seed=0)
    shared = SoftPromptSet.from_config(SoftPromptConfig(length=3, shared=True), tiny, specs, 0)
    task = load_task("topic")  # any task, seen or not
    prompts = generator.soft_tokens(task.spec, list(task.test[:3]))
    assert len(prompts) == 3 and prompts[0].shape == (3, tiny.hidden_size)
    for prompt in prompts:
        torch.testing.assert_close(prompt, shared.prompt("*"), rtol=0, atol=0)


def test_the_prompt_depends_on_the_input_and_on_the_instruction(tiny: Backbone) -> None:
    generator = _perturbed(tiny)
    sentiment, tweets = load_task("sentiment"), load_task("tweets")
    a, b = generator.soft_tokens(sentiment.spec, list(sentiment.test[:2]))
    assert not torch.allclose(a, b)
    # the same input fields under another task's instruction get another prompt
    example = sentiment.test[0]
    other = generator.soft_tokens(tweets.spec, [example])[0]
    assert not torch.allclose(a, other)
    assert generator_text(sentiment.spec, example).startswith(sentiment.spec.instruction)


def test_a_prompt_does_not_depend_on_the_rows_padded_beside_it(tiny: Backbone) -> None:
    generator = _perturbed(tiny)
    task = load_task("topic")  # long articles beside short ones: much padding
    trec = load_task("trec")
    alone = generator.soft_tokens(trec.spec, [trec.test[0]])[0]
    with torch.no_grad():
        batch = generator(
            [generator_text(trec.spec, trec.test[0])]
            + [generator_text(task.spec, ex) for ex in task.test[:3]]
        )
    torch.testing.assert_close(batch[0], alone, rtol=0, atol=1e-5)


def test_encoder_reads_at_most_max_input_tokens(tiny: Backbone) -> None:
    encoder = BackboneEmbeddingEncoder(tiny, max_tokens=7)
    states, mask = encoder.encode(["one two", "a " * 50])
    assert states.shape == (2, 7, tiny.hidden_size) and mask.sum(dim=1).tolist() == [2, 7]
    ids = tiny.tokenizer.encode("one two", add_special_tokens=False)
    torch.testing.assert_close(states[0, :2], tiny.embed(torch.tensor(ids)).float())


def test_default_generator_is_under_one_percent_of_the_embedded_backbone() -> None:
    class Width576:  # the embedded SmolLM2-135M's hidden size, without loading it
        width, name = 576, "backbone-embeddings"

    generator = PromptGenerator(PromptGeneratorConfig(), Width576(), hidden_size=576)  # type: ignore[arg-type]
    share = generator.num_trainable() / 134_515_008
    assert 0.001 < share <= 0.01


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ConfigError, match="not divisible by 3 heads"):
        PromptGeneratorConfig(width=32, heads=3)
    with pytest.raises(ConfigError, match="length must be at least 1"):
        PromptGeneratorConfig(length=0)
    with pytest.raises(ValueError):
        PromptGeneratorConfig(encoder="bert")  # type: ignore[arg-type]


def test_checkpoint_round_trip_and_wrong_shapes(tiny: Backbone, tmp_path: Path) -> None:
    config = TrainConfig(steps=2, batch_size=4, eval_every=2, eval_limit=4, lr=1e-2, task_cap=16,
                         optimizer="adamw")  # fmt: skip
    at_input = to_json(PromptGeneratorConfig(**{**to_json(SMALL), "position": "input"}))
    train_plugin(tiny, ["sentiment", "trec"], "id-pt", at_input, config, tmp_path / "g")
    loaded, checkpoint = load_plugin(tmp_path / "g", tiny)
    assert isinstance(loaded, PromptGenerator) and checkpoint.meta["kind"] == "id-pt"
    task = load_task("topic")  # a task it never saw: it reads the instruction
    again, _ = load_plugin(tmp_path / "g", tiny)
    first = loaded.soft_tokens(task.spec, list(task.test[:2]))
    torch.testing.assert_close(first, again.soft_tokens(task.spec, list(task.test[:2])))
    assert not torch.allclose(first[0], loaded.base)  # training moved it off the base prompt

    example = task.test[0]
    assert loaded.condition(task.spec, [example])[0].position is SoftPosition.INPUT
    # saved before the option existed: trained before everything, so loaded there
    plugin_json = tmp_path / "g" / "best" / "plugin.json"
    saved = json.loads(plugin_json.read_text())
    del saved["plugin_config"]["position"]
    plugin_json.write_text(json.dumps(saved))
    legacy, _ = load_plugin(tmp_path / "g", tiny)
    assert legacy.condition(task.spec, [example])[0].position is SoftPosition.START

    other = Backbone.tiny(TinyConfig(seed=1))  # same shapes, other weights
    with pytest.raises(CheckpointError, match="pass --allow-other-backbone"):
        load_plugin(tmp_path / "g", other)
    wider = PromptGeneratorConfig(**{**to_json(SMALL), "width": 64})
    with pytest.raises(CheckpointError, match=r"tensor '.*' is .* in the checkpoint but"):
        PromptGenerator.from_tensors(checkpoint.tensors, wider, tiny)


def test_minilm_encoder_caches_states_per_text() -> None:
    encoder = MiniLMEncoder(max_tokens=16, cache_size=2)
    states, mask = encoder.encode(["a short text", "another, somewhat longer text here"])
    assert states.shape[0] == 2 and states.shape[2] == 384 and mask[0].sum() < mask[1].sum()
    again, _ = encoder.encode(["a short text"])
    torch.testing.assert_close(again[0, : int(mask[0].sum())], states[0, : int(mask[0].sum())])
    encoder.encode(["third", "fourth"])
    assert len(encoder._cache) == 2 and "a short text" not in encoder._cache
    assert EncoderKind(encoder.name) is EncoderKind.MINILM


@pytest.mark.slow
def test_on_the_embedded_model_an_untrained_generator_scores_as_the_shared_prompt(
    embedded: Backbone,
) -> None:
    tasks = [load_task("sentiment"), load_task("trec")]
    specs = [t.spec for t in tasks]
    generator = PromptGenerator.from_config(PromptGeneratorConfig(), embedded, specs, seed=0)
    assert generator.num_trainable() / embedded.num_parameters <= 0.01
    # at start: where the generator puts the prompts it writes by default
    shared_config = SoftPromptConfig(shared=True, position=SoftPosition.START)
    shared = SoftPromptSet.from_config(shared_config, embedded, specs, 0)
    config = EvalConfig(limit=6)
    for task in tasks:
        by_generator = evaluate(embedded, task, config, plugin=generator.eval())
        by_prompt = evaluate(embedded, task, config, plugin=shared)
        for a, b in zip(by_generator.predictions, by_prompt.predictions, strict=True):
            assert a["predicted"] == b["predicted"]
            torch.testing.assert_close(torch.tensor(a["scores"]), torch.tensor(b["scores"]),
                                       atol=2e-3, rtol=0)  # fmt: skip
