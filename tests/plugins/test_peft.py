"""PEFT prompt-tuning and prefix-tuning adapters: PEFT loads our exports and computes what
frozenlm computes; frozenlm imports PEFT's own adapters and computes what PEFT computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from frozenlm.atomic import leftovers
from frozenlm.backbone import Backbone
from frozenlm.codec import to_json
from frozenlm.engine.batching import Row, score_rows
from frozenlm.engine.prefix_cache import PrefixCache
from frozenlm.engine.splice import splice
from frozenlm.errors import CheckpointError, ConfigError
from frozenlm.plugins.checkpoint import save_checkpoint
from frozenlm.plugins.peft import (
    export_peft,
    export_peft_plugin,
    export_peft_prefix,
    import_peft,
    import_peft_plugin,
    import_peft_prefix,
    peft_prefix_layout,
    prefix_to_peft,
)
from frozenlm.plugins.prefix import DeepPrompt, PrefixConfig, kv_shape
from frozenlm.plugins.registry import load_plugin, plugin_meta
from frozenlm.tasks import load_task

peft = pytest.importorskip("peft")

P = 4


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory, tiny: Backbone) -> Path:
    folder = tmp_path_factory.mktemp("tiny-model")
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def backbone(model_folder: Path) -> Backbone:
    return Backbone.load(model_folder)


@pytest.fixture
def prompt(backbone: Backbone) -> torch.Tensor:
    return torch.randn(P, backbone.hidden_size, generator=torch.Generator().manual_seed(0))


def _peft_save(model_folder: Path, out: Path, tokens: int) -> torch.Tensor:
    """A prompt-tuning adapter saved by PEFT itself; returns its prompt weights."""
    base = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    config = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=tokens)
    model = peft.get_peft_model(base, config)
    model.save_pretrained(out)
    return model.prompt_encoder["default"].embedding.weight.detach().clone()


def _frozenlm_logprobs(
    backbone: Backbone, soft: torch.Tensor | None, ids: list[int]
) -> torch.Tensor:
    """Log-probs of ids[1:] given the soft prompt and the ids before each."""
    pieces = [ids] if soft is None else [soft, ids]
    spliced = splice(backbone, [pieces])
    with torch.no_grad():
        hidden = backbone.forward(spliced.embeds, spliced.attention_mask, spliced.position_ids)
    offset = 0 if soft is None else soft.shape[0]
    logits = backbone.lm_logits(hidden[0, offset : offset + len(ids) - 1])  # [T-1, V]
    return F.log_softmax(logits, dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]


def test_peft_loads_the_export_and_matches_frozenlm(
    backbone: Backbone, model_folder: Path, prompt: torch.Tensor, tmp_path: Path
) -> None:
    out = tmp_path / "adapter"
    export_peft(prompt, backbone, out)
    base = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, out)
    model.eval()
    loaded = model.prompt_encoder["default"].embedding.weight
    assert torch.equal(loaded, prompt)

    ids = backbone.tokenizer("The movie was great, I loved it.")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]  # [P + T, V]
    assert logits.shape[0] == P + len(ids)  # PEFT's logits cover the virtual tokens first
    peft_lp = F.log_softmax(logits[P : P + len(ids) - 1].float(), dim=-1)
    peft_lp = peft_lp.gather(1, torch.tensor(ids[1:])[:, None])[:, 0]

    ours = _frozenlm_logprobs(backbone, prompt, ids)
    torch.testing.assert_close(ours, peft_lp, atol=1e-4, rtol=0)
    without = _frozenlm_logprobs(backbone, None, ids)
    assert (without - peft_lp).abs().max() > 1e-2  # the prompt matters: the check can fail


def test_export_then_import_is_exact(
    backbone: Backbone, prompt: torch.Tensor, tmp_path: Path
) -> None:
    export_peft(prompt, backbone, tmp_path / "a")
    assert torch.equal(import_peft(tmp_path / "a", backbone), prompt)
    # Exporting again replaces the adapter.
    export_peft(prompt * 2, backbone, tmp_path / "a")
    assert torch.equal(import_peft(tmp_path / "a", backbone), prompt * 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_config_has_the_keys_peft_writes(
    backbone: Backbone, model_folder: Path, prompt: torch.Tensor, tmp_path: Path
) -> None:
    _peft_save(model_folder, tmp_path / "theirs", P)
    export_peft(prompt, backbone, tmp_path / "ours")
    theirs = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    ours = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert sorted(ours) == sorted(theirs)
    differ = {"peft_version", "base_model_name_or_path"}
    assert {k: v for k, v in ours.items() if k not in differ} == {
        k: v for k, v in theirs.items() if k not in differ
    }
    assert Path(ours["base_model_name_or_path"]) == model_folder.resolve()


def test_imports_an_adapter_saved_by_peft(
    backbone: Backbone, model_folder: Path, tmp_path: Path
) -> None:
    weights = _peft_save(model_folder, tmp_path / "theirs", 3)
    imported = import_peft(tmp_path / "theirs", backbone)
    assert imported.shape == (3, backbone.hidden_size)
    assert torch.equal(imported, weights)


def _edit_config(folder: Path, **changes: object) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_refuses_adapters_it_cannot_use(
    backbone: Backbone, prompt: torch.Tensor, tmp_path: Path
) -> None:
    export_peft(prompt, backbone, tmp_path / "a")
    _edit_config(tmp_path / "a", token_dim=32)
    with pytest.raises(CheckpointError, match=r"token_dim 32, but backbone .* hidden size 64"):
        import_peft(tmp_path / "a", backbone)

    export_peft(prompt, backbone, tmp_path / "b")
    _edit_config(tmp_path / "b", peft_type="LORA")
    with pytest.raises(CheckpointError, match=r"is a LORA adapter; only PROMPT_TUNING"):
        import_peft(tmp_path / "b", backbone)

    export_peft(prompt, backbone, tmp_path / "c")
    weights = tmp_path / "c" / "adapter_model.safetensors"
    (tmp_path / "c" / "adapter_model.bin").write_bytes(b"not read")
    weights.unlink()
    with pytest.raises(CheckpointError, match=r"pickle-based adapter files are not loaded"):
        import_peft(tmp_path / "c", backbone)

    with pytest.raises(CheckpointError, match=r"soft prompt for .* is \[P, 64\], got \[4, 32\]"):
        export_peft(torch.zeros(P, 32), backbone, tmp_path / "d")
    with pytest.raises(CheckpointError, match=r"does not exist"):
        import_peft(tmp_path / "missing", backbone)


@pytest.mark.slow
def test_peft_loads_an_export_for_the_embedded_model(embedded: Backbone, tmp_path: Path) -> None:
    from frozenlm.backbone import embedded_model_folder

    soft = torch.randn(6, embedded.hidden_size, generator=torch.Generator().manual_seed(1)) * 0.05
    export_peft(soft, embedded, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(embedded_model_folder())
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    model = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    ids = embedded.tokenizer("Review: a gripping film.\nAnswer: positive")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, 6 : 6 + len(ids) - 1].float()
    peft_lp = F.log_softmax(logits, dim=-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    torch.testing.assert_close(_frozenlm_logprobs(embedded, soft, ids), peft_lp, atol=1e-4, rtol=0)
    assert torch.equal(import_peft(tmp_path / "adapter", embedded), soft)


# ---------------------------------------------------------------- deep prompts (PREFIX_TUNING)


def _deep_prompt(backbone: Backbone, length: int = P, seed: int = 0) -> DeepPrompt:
    """A deep prompt for trec started from real tokens' keys and values, then moved off them."""
    spec = load_task("trec").spec
    deep = DeepPrompt.from_config(PrefixConfig(length=length), backbone, [spec], seed)
    with torch.no_grad():
        noise = torch.randn(
            deep.prefixes["trec"].shape, generator=torch.Generator().manual_seed(seed)
        )
        deep.prefixes["trec"].add_(noise * 0.3)
    return deep


def _kv(prefix: torch.Tensor) -> PrefixCache:
    """A deep prompt [L, 2, H, P, d] as the engine's single-row prefix."""
    return PrefixCache.from_tensors(
        [layer[0].unsqueeze(0) for layer in prefix], [layer[1].unsqueeze(0) for layer in prefix]
    )


def _frozenlm_logits(
    backbone: Backbone, prefix: torch.Tensor | None, ids: list[int]
) -> torch.Tensor:
    """Logits [T, V] of `ids` continuing after the deep prompt `prefix`, through the engine."""
    batch = splice(backbone, [[ids]])
    cache = None
    if prefix is not None:
        kv = _kv(prefix)
        batch, cache = kv.after(batch), kv.expand(backbone, 1)
    with torch.no_grad():
        hidden = backbone.forward(batch.embeds, batch.attention_mask, batch.position_ids, cache)
    return backbone.lm_logits(hidden[0])


def _peft_logits(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """PEFT's logits [T, V] of `ids` (a prefix adapter adds no positions to the logits)."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def _assert_same_scores(backbone: Backbone, prefix: torch.Tensor, model: torch.nn.Module) -> None:
    """PEFT's model and frozenlm after `prefix` give the same log-probs, position by position
    and as rank-classification scores of the last tokens (which the prefix changes)."""
    ids = backbone.tokenizer("Question: what is the capital of France?\nAnswer: Paris")["input_ids"]
    theirs = F.log_softmax(_peft_logits(model, ids), dim=-1)  # [T, V]
    assert theirs.shape[0] == len(ids)
    ours = F.log_softmax(_frozenlm_logits(backbone, prefix, ids), dim=-1)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    plain = F.log_softmax(_frozenlm_logits(backbone, None, ids), dim=-1)
    assert (plain - theirs).abs().max() > 1e-2  # the prefix matters: the check can fail
    # frozenlm's scorer: the last two tokens as a candidate after the rest, behind the prefix
    (scored,) = score_rows(backbone, [Row(ids[:-2], kv=_kv(prefix))], [[ids[-2:]]])
    want = theirs[-3, ids[-2]] + theirs[-2, ids[-1]]
    torch.testing.assert_close(scored.logprobs[0], want, atol=1e-4, rtol=0)


def test_peft_loads_an_exported_deep_prompt_and_matches_frozenlm(
    backbone: Backbone, model_folder: Path, tmp_path: Path
) -> None:
    prefix = _deep_prompt(backbone).prefix("trec").detach()
    layers, heads, width = kv_shape(backbone)
    assert heads < backbone.model.config.num_attention_heads  # grouped-query attention
    export_peft_prefix(prefix, backbone, tmp_path / "adapter")
    base = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    loaded = model.prompt_encoder["default"].embedding.weight
    assert list(loaded.shape) == [P, layers * 2 * heads * width]
    assert torch.equal(loaded, prefix_to_peft(prefix))
    _assert_same_scores(backbone, prefix, model)


def test_deep_prompt_export_then_import_is_exact(backbone: Backbone, tmp_path: Path) -> None:
    prefix = _deep_prompt(backbone).prefix("trec").detach()
    export_peft_prefix(prefix, backbone, tmp_path / "a")
    assert torch.equal(import_peft_prefix(tmp_path / "a", backbone), prefix)
    export_peft_prefix(prefix * 2, backbone, tmp_path / "a")  # replaces the adapter
    assert torch.equal(import_peft_prefix(tmp_path / "a", backbone), prefix * 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def _peft_prefix_save(
    model_folder: Path, out: Path, tokens: int, projection: bool
) -> torch.nn.Module:
    """A prefix-tuning adapter saved by PEFT itself, its weights moved off their init; returns
    the PEFT model (eval mode) that saved it."""
    base = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    config = peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=tokens, prefix_projection=projection
    )
    model = peft.get_peft_model(base, config)
    with torch.no_grad():
        for param in model.prompt_encoder["default"].parameters():
            param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(3)) * 0.5)
    model.save_pretrained(out)
    return model.eval()


def test_prefix_config_has_the_keys_peft_writes(
    backbone: Backbone, model_folder: Path, tmp_path: Path
) -> None:
    _peft_prefix_save(model_folder, tmp_path / "theirs", P, projection=False)
    export_peft_prefix(_deep_prompt(backbone).prefix("trec").detach(), backbone, tmp_path / "ours")
    theirs = json.loads((tmp_path / "theirs" / "adapter_config.json").read_text())
    ours = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    differ = {"peft_version", "base_model_name_or_path"}
    assert {k: v for k, v in ours.items() if k not in differ} == {
        k: v for k, v in theirs.items() if k not in differ
    }
    assert sorted(ours) == sorted(theirs)
    assert Path(ours["base_model_name_or_path"]) == model_folder.resolve()


@pytest.mark.parametrize("projection", [False, True])
def test_imports_a_prefix_adapter_saved_by_peft_and_scores_as_peft_does(
    backbone: Backbone, model_folder: Path, tmp_path: Path, projection: bool
) -> None:
    """With `prefix_projection` PEFT saves what its MLP writes; either way frozenlm's deep
    prompt gives PEFT's logits."""
    model = _peft_prefix_save(model_folder, tmp_path / "theirs", 3, projection)
    prefix = import_peft_prefix(tmp_path / "theirs", backbone)
    layers, heads, width = kv_shape(backbone)
    assert list(prefix.shape) == [layers, 2, heads, 3, width] and prefix.dtype == torch.float32
    _assert_same_scores(backbone, prefix, model)


def _saved_deep_prompt(backbone: Backbone, folder: Path) -> DeepPrompt:
    deep = _deep_prompt(backbone)
    task = load_task("trec")
    meta = plugin_meta("prefix", to_json(deep.config), backbone, [task], ["trec"])
    save_checkpoint(folder, deep.tensors(), meta)
    return deep


def test_a_saved_deep_prompt_goes_to_peft_and_back(backbone: Backbone, tmp_path: Path) -> None:
    deep = _saved_deep_prompt(backbone, tmp_path / "run")
    assert export_peft_plugin(tmp_path / "run", tmp_path / "adapter", backbone) == "trec"
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "PREFIX_TUNING"
    assert import_peft_plugin(tmp_path / "adapter", tmp_path / "back", backbone, "trec") == "prefix"
    back, checkpoint = load_plugin(tmp_path / "back", backbone)
    assert isinstance(back, DeepPrompt) and checkpoint.meta["kind"] == "prefix"
    assert torch.equal(back.prefix("trec"), deep.prefix("trec"))


def test_refuses_prefix_adapters_it_cannot_use(backbone: Backbone, tmp_path: Path) -> None:
    prefix = _deep_prompt(backbone).prefix("trec").detach()
    layers, heads, width = kv_shape(backbone)

    export_peft(torch.zeros(P, backbone.hidden_size), backbone, tmp_path / "prompt")
    with pytest.raises(CheckpointError, match=r"is a PROMPT_TUNING adapter; only PREFIX_TUNING"):
        import_peft_prefix(tmp_path / "prompt", backbone)
    export_peft_prefix(prefix, backbone, tmp_path / "lora")
    _edit_config(tmp_path / "lora", peft_type="LORA")
    with pytest.raises(CheckpointError, match=r"is a LORA adapter; only PROMPT_TUNING \(a soft "):
        import_peft_plugin(tmp_path / "lora", tmp_path / "out", backbone, "trec")
    assert not (tmp_path / "out").exists()
    export_peft_prefix(prefix, backbone, tmp_path / "prefix")
    with pytest.raises(CheckpointError, match=r"is a PREFIX_TUNING adapter; only PROMPT_TUNING"):
        import_peft(tmp_path / "prefix", backbone)

    # Made for another base model: 3 layers of 4 heads (an older PEFT sized GQA models by
    # query heads: token_dim = hidden size).
    export_peft_prefix(prefix, backbone, tmp_path / "other")
    _edit_config(tmp_path / "other", num_layers=3)
    with pytest.raises(
        CheckpointError, match=rf"made for a model of 3 layers .* has {layers} layers"
    ):
        import_peft_prefix(tmp_path / "other", backbone)
    export_peft_prefix(prefix, backbone, tmp_path / "mha")
    _edit_config(tmp_path / "mha", num_attention_heads=4, token_dim=backbone.hidden_size)
    with pytest.raises(
        CheckpointError,
        match=rf"4 key/value heads with token_dim 64, but .* and {heads} key/value heads",
    ):
        import_peft_prefix(tmp_path / "mha", backbone)

    # Weights that are not what the config says.
    export_peft_prefix(prefix, backbone, tmp_path / "short")
    _edit_config(tmp_path / "short", num_virtual_tokens=P + 1)
    with pytest.raises(CheckpointError, match=r"'prompt_embeddings' has shape \[4, 128\], but"):
        import_peft_prefix(tmp_path / "short", backbone)

    # Export: a tensor of another shape, nothing written, an adapter already there untouched.
    export_peft_prefix(prefix, backbone, tmp_path / "kept")
    wrong = torch.zeros(layers, 2, heads + 1, P, width)
    with pytest.raises(
        CheckpointError, match=rf"deep prompt for .* is \[{layers}, 2, {heads}, P, "
    ):
        export_peft_prefix(wrong, backbone, tmp_path / "kept")
    with pytest.raises(CheckpointError, match=r"holds NaN or inf"):
        export_peft_prefix(prefix * float("nan"), backbone, tmp_path / "new")
    assert not (tmp_path / "new").exists() and not leftovers(tmp_path / "new")
    assert torch.equal(import_peft_prefix(tmp_path / "kept", backbone), prefix)
    assert not leftovers(tmp_path / "kept")


@pytest.mark.parametrize("change", [{"head_dim": 8}, {"global_head_dim": 32}])
def test_a_backbone_peft_lays_out_otherwise_is_refused(
    model_folder: Path, tmp_path: Path, change: dict[str, int]
) -> None:
    """PEFT reads the prefix's heads and width from the model config; where that disagrees
    with the attention cache, a PEFT adapter cannot hold the deep prompt and export says so."""
    backbone = Backbone.load(model_folder)
    prefix = _deep_prompt(backbone).prefix("trec").detach()
    for key, value in change.items():
        setattr(backbone.model.config, key, value)
    with pytest.raises(ConfigError, match=r"cannot export to .*(PEFT|largest layer)"):
        export_peft_prefix(prefix, backbone, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_the_layout_is_the_one_peft_derives(backbone: Backbone, model_folder: Path) -> None:
    """`peft_prefix_layout` reads the config as PEFT does: the same layers, key/value heads
    and width PEFT's own `get_peft_model` derives."""
    base = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    model = peft.get_peft_model(
        base, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2)
    )
    derived = model.peft_config["default"]
    width = derived.token_dim // derived.num_attention_heads
    assert peft_prefix_layout(backbone) == (derived.num_layers, derived.num_attention_heads, width)
    assert peft_prefix_layout(backbone) == kv_shape(backbone)


@pytest.mark.slow
def test_peft_loads_a_deep_prompt_export_for_the_embedded_model(
    embedded: Backbone, tmp_path: Path
) -> None:
    prefix = _deep_prompt(embedded, length=6, seed=1).prefix("trec").detach()
    export_peft_prefix(prefix, embedded, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["num_attention_heads"], config["token_dim"]) == (3, 3 * 64)  # SmolLM2: GQA
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    model = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    _assert_same_scores(embedded, prefix, model)
    assert torch.equal(import_peft_prefix(tmp_path / "adapter", embedded), prefix)
