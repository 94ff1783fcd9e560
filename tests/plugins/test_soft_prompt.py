import re
from pathlib import Path

import pytest
import torch

from frozenlm.backbone import Backbone
from frozenlm.codec import from_json, to_json
from frozenlm.engine.generation import GenerationConfig, generate
from frozenlm.engine.scoring import ScoreRequest, score_batch
from frozenlm.errors import CheckpointError, ConfigError
from frozenlm.plugins.checkpoint import save_checkpoint
from frozenlm.plugins.protocol import SoftPosition
from frozenlm.plugins.registry import load_plugin
from frozenlm.plugins.soft_prompt import (
    PromptInit,
    SoftPromptConfig,
    SoftPromptSet,
    common_token_ids,
    initial_prompt,
)
from frozenlm.tasks import load_task


def _rows_of(backbone: Backbone, weights: torch.Tensor, ids: list[int]) -> bool:
    table = backbone.embed(torch.tensor(ids))  # [N, D]
    return all(bool((table == w).all(dim=1).any()) for w in weights)


def test_class_label_init_starts_with_the_verbalizer_embeddings(tiny: Backbone) -> None:
    spec = load_task("sentiment").spec
    weights = initial_prompt(tiny, SoftPromptConfig(length=6), [spec], seed=0)
    label_ids = [
        i
        for word in spec.labels.values()
        for i in tiny.tokenizer.encode(" " + word, add_special_tokens=False)
    ]
    assert weights.dtype == torch.float32 and weights.shape == (6, tiny.hidden_size)
    torch.testing.assert_close(weights[: len(label_ids)], tiny.embed(torch.tensor(label_ids)))
    assert _rows_of(tiny, weights[len(label_ids) :], common_token_ids(tiny, 5000))


def test_vocab_init_samples_common_tokens_and_is_seeded(tiny: Backbone) -> None:
    spec = load_task("trec").spec
    config = SoftPromptConfig(length=8, init=PromptInit.VOCAB)
    first = initial_prompt(tiny, config, [spec], seed=3)
    assert torch.equal(first, initial_prompt(tiny, config, [spec], seed=3))
    assert not torch.equal(first, initial_prompt(tiny, config, [spec], seed=4))
    common = common_token_ids(tiny, 5000)
    assert len(common) == 5000 and not set(common) & set(tiny.tokenizer.all_special_ids)
    assert _rows_of(tiny, first, common)


def test_random_init_is_uniform_in_range(tiny: Backbone) -> None:
    config = SoftPromptConfig(length=50, init="random")  # type: ignore[arg-type]
    weights = initial_prompt(tiny, config, [load_task("trec").spec], seed=0)
    assert weights.abs().max() <= 0.5 and weights.std() > 0.2


def test_generation_tasks_fall_back_to_vocab_init(tiny: Backbone) -> None:
    weights = initial_prompt(tiny, SoftPromptConfig(length=4), [load_task("trivia").spec], seed=0)
    assert _rows_of(tiny, weights, common_token_ids(tiny, 5000))


def test_unknown_task_is_refused(tiny: Backbone) -> None:
    prompts = SoftPromptSet.from_config(
        SoftPromptConfig(length=3), tiny, [load_task("trec").spec], 0
    )
    with pytest.raises(ConfigError, match="no prompt for task 'topic'"):
        prompts.prompt("topic")


def test_mixed_task_batch_scores_equal_per_task_batches(tiny: Backbone) -> None:
    torch.manual_seed(0)
    config = SoftPromptConfig(length=4)
    prompts = SoftPromptSet(
        {"a": torch.randn(3, tiny.hidden_size), "b": torch.randn(7, tiny.hidden_size)}, config
    )
    tok = tiny.tokenizer
    texts = {"a": ["first review", "a second, longer review text"], "b": ["what is it?", "who?"]}
    labels = {"a": [[5], [6, 7]], "b": [[8], [9], [10, 11, 12]]}

    def requests(task: str) -> list[ScoreRequest]:
        prompt = prompts.prompt(task)
        return [
            ScoreRequest([prompt, tok.encode(t, add_special_tokens=False)], labels[task])
            for t in texts[task]
        ]

    with torch.no_grad():
        mixed = score_batch(
            tiny, [requests("a")[0], requests("b")[0], requests("a")[1], requests("b")[1]]
        )
        alone = score_batch(tiny, requests("a")) + score_batch(tiny, requests("b"))
    for got, want in zip([mixed[0], mixed[2], mixed[1], mixed[3]], alone, strict=True):
        torch.testing.assert_close(got.logprobs, want.logprobs, atol=1e-4, rtol=0)


def test_generation_with_a_soft_prompt_is_the_same_with_and_without_cache(tiny: Backbone) -> None:
    torch.manual_seed(1)
    soft = torch.randn(5, tiny.hidden_size)
    tok = tiny.tokenizer
    prefixes = [[soft, tok.encode("Question: why?", add_special_tokens=False)], [soft, [42]]]
    cached = generate(tiny, prefixes, GenerationConfig(max_new_tokens=10, stop=()))
    plain = generate(tiny, prefixes, GenerationConfig(max_new_tokens=10, stop=(), use_cache=False))
    assert cached == plain


def test_a_shared_prompt_serves_every_task_and_starts_from_all_their_labels(
    tiny: Backbone,
) -> None:
    specs = [load_task("sentiment").spec, load_task("tweets").spec]
    config = SoftPromptConfig(length=6, shared=True)
    shared = SoftPromptSet.from_config(config, tiny, specs, 0)
    assert shared.task_names == ["*"] and shared.prompt("topic") is shared.prompt("sentiment")
    # positive, negative (sentiment), then neutral: tweets' words already seen are not repeated
    words = ["positive", "negative", "neutral"]
    ids = [i for w in words for i in tiny.tokenizer.encode(" " + w, add_special_tokens=False)]
    torch.testing.assert_close(shared.prompt("*")[: len(ids)], tiny.embed(torch.tensor(ids)))
    assert from_json(SoftPromptConfig, to_json(config)).shared


def _save_soft_prompt(
    folder: Path, backbone: Backbone, prompt: torch.Tensor, config: dict | None = None
) -> Path:
    """A checkpoint whose JSON matches its tensor, as a hand edit that also fixed the JSON
    (its tensor list and sha256 are recomputed by save_checkpoint) would leave it."""
    meta = {
        "kind": "soft-prompt",
        "plugin_config": to_json(SoftPromptConfig()) if config is None else config,  # length 20
        "backbone": {
            "name": backbone.name,
            "fingerprint": backbone.fingerprint,
            "hidden_size": backbone.hidden_size,
        },
    }
    save_checkpoint(folder, {"prompt.sentiment": prompt}, meta)
    return folder


def test_a_prompt_of_another_hidden_size_is_refused_at_load(tiny: Backbone, tmp_path: Path) -> None:
    folder = _save_soft_prompt(tmp_path / "ckpt", tiny, torch.zeros(20, 32))
    expected = (
        f"checkpoint '{folder}': soft prompt tensor 'prompt.sentiment' is [20, 32], but the "
        "backbone has hidden size 64; expected [20, 64]"
    )
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        load_plugin(folder, tiny)


def test_a_prompt_shorter_than_its_config_is_refused(tiny: Backbone, tmp_path: Path) -> None:
    folder = _save_soft_prompt(tmp_path / "ckpt", tiny, torch.zeros(15, 64))
    with pytest.raises(
        CheckpointError,
        match=re.escape(
            "soft prompt tensor 'prompt.sentiment' has 15 vectors, but its config says length 20"
        ),
    ):
        load_plugin(folder, tiny)


def test_a_prompt_matching_config_and_backbone_loads(tiny: Backbone, tmp_path: Path) -> None:
    prompt = torch.randn(20, 64, generator=torch.Generator().manual_seed(0))
    plugin, _ = load_plugin(_save_soft_prompt(tmp_path / "ckpt", tiny, prompt), tiny)
    assert isinstance(plugin, SoftPromptSet)
    torch.testing.assert_close(plugin.prompt("sentiment").detach().cpu(), prompt, rtol=0, atol=0)


def test_a_prompt_saved_before_positions_existed_loads_where_it_was_trained(
    tiny: Backbone, tmp_path: Path
) -> None:
    prompt = torch.randn(20, 64, generator=torch.Generator().manual_seed(0))
    legacy = {k: v for k, v in to_json(SoftPromptConfig()).items() if k != "position"}
    old, _ = load_plugin(_save_soft_prompt(tmp_path / "old", tiny, prompt, legacy), tiny)
    new, _ = load_plugin(_save_soft_prompt(tmp_path / "new", tiny, prompt), tiny)
    task = load_task("sentiment")
    assert isinstance(old, SoftPromptSet) and isinstance(new, SoftPromptSet)
    assert old.condition(task.spec, [task.test[0]])[0].position is SoftPosition.START
    assert new.condition(task.spec, [task.test[0]])[0].position is SoftPosition.INPUT
