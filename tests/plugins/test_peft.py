"""PEFT prompt-tuning adapters: PEFT loads our exports and computes what frozenlm computes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from frozenlm.backbone import Backbone
from frozenlm.engine.splice import splice
from frozenlm.errors import CheckpointError
from frozenlm.plugins.peft import export_peft, import_peft

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
