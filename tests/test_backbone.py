import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

import frozenlm.backbone as backbone_module
from frozenlm.atomic import build_folder
from frozenlm.backbone import (
    Backbone,
    TinyConfig,
    resolve_backbone,
)
from frozenlm.backbones.catalog import is_complete
from frozenlm.devices import DTYPES, resolve_device, resolve_dtype
from frozenlm.engine.scoring import ScoreRequest, score_batch
from frozenlm.engine.splice import splice
from frozenlm.errors import ConfigError
from frozenlm.prompts.render import PromptConfig, Prompter
from frozenlm.tasks import load_task

TINY_FINGERPRINT = "8cab9ef0e0e9192f01147420f650efd9"
"""The tiny model's fingerprint as checkpoints and run records carry it: it must never change."""


def test_backbone_is_frozen_by_construction(tiny: Backbone) -> None:
    assert not tiny.model.training
    assert all(not p.requires_grad for p in tiny.model.parameters())


def test_fingerprint_is_stable_and_tells_weights_apart(tiny: Backbone) -> None:
    again = Backbone.tiny()
    other = Backbone.tiny(TinyConfig(seed=1))
    assert tiny.fingerprint == again.fingerprint
    assert tiny.fingerprint != other.fingerprint


def test_load_from_a_saved_folder_keeps_the_fingerprint(tiny: Backbone, tmp_path: Path) -> None:
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = Backbone.load(tmp_path)
    assert loaded.fingerprint == tiny.fingerprint
    assert loaded.source == str(tmp_path.resolve())


def test_the_fingerprint_names_the_weights_in_every_dtype(tiny: Backbone, tmp_path: Path) -> None:
    assert tiny.fingerprint == TINY_FINGERPRINT
    for dtype in ("bfloat16", "float16"):
        cast = Backbone.load("tiny", device="cpu", dtype=dtype)
        assert cast.dtype == DTYPES[dtype]
        assert cast.fingerprint == TINY_FINGERPRINT
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    folder = Backbone.load(tmp_path, dtype="bfloat16")
    assert folder.dtype == torch.bfloat16 and folder.fingerprint == TINY_FINGERPRINT


def test_a_folder_fingerprint_is_cached_by_file_stamps(
    tiny: Backbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FROZENLM_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    assert Backbone.load(folder).fingerprint == TINY_FINGERPRINT
    (cached,) = (tmp_path / "cache" / "fingerprints").iterdir()
    cached.write_text('{"fingerprint": "from-the-cache"}')
    assert Backbone.load(folder).fingerprint == "from-the-cache"  # read, not recomputed
    tiny.model.save_pretrained(folder)  # new files, new stamps: computed again
    assert Backbone.load(folder).fingerprint == TINY_FINGERPRINT


def test_bfloat16_scores_agree_with_float32(tiny: Backbone) -> None:
    half = Backbone.load("tiny", device="cpu", dtype="bfloat16")
    assert half.model.get_input_embeddings().weight.dtype == torch.bfloat16
    tok = tiny.tokenizer
    texts = [f"Review {i}: the film was {w}. Sentiment:" for i, w in enumerate(
        ["great", "dull", "fine", "awful", "a long, winding and surprisingly tender story"]
    )]  # fmt: skip
    labels = [" positive", " negative", " neutral", " mixed feelings"]
    candidates = [tok.encode(c, add_special_tokens=False) for c in labels]
    requests = [ScoreRequest([tok.encode(t, add_special_tokens=False)], candidates) for t in texts]
    full = torch.stack([s.logprobs for s in score_batch(tiny, requests)])  # [N, K]
    low = torch.stack([s.logprobs for s in score_batch(half, requests)])  # [N, K]
    assert low.dtype == torch.float32  # lm_logits are fp32 on every dtype
    assert not torch.equal(low, full)  # bf16 really ran
    # Measured: at most 0.0021 nats apart on this model (torch 2.13, CPU). The tolerance, 0.05
    # nats per label log-prob, keeps any two labels more than 0.1 nats apart in fp32 in order.
    torch.testing.assert_close(low, full, atol=0.05, rtol=0)
    assert torch.equal(low.argmax(dim=1), full.argmax(dim=1))


@pytest.mark.slow
def test_embedded_bfloat16_ranks_labels_as_float32_does(embedded: Backbone) -> None:
    half = Backbone.load(device="cpu", dtype="bfloat16")
    assert half.fingerprint == embedded.fingerprint
    task = load_task("sentiment")
    config = PromptConfig(shots=0, chat_template=True, seed=0)
    prompter = Prompter(task.spec, embedded.tokenizer, config, max_tokens=1024, answer_tokens=32)
    candidates = [prompter.continuation_ids(v) for v in task.spec.labels.values()]
    requests = [ScoreRequest([prompter.render(ex).ids], candidates) for ex in task.test[:32]]
    full = torch.stack([s.logprobs for s in score_batch(embedded, requests)])  # [32, K]
    low = torch.stack([s.logprobs for s in score_batch(half, requests)])  # [32, K]
    # Measured (torch 2.13, CPU): at most 0.25 nats apart, 0.10 on average, 30 of 32 argmax equal.
    gap = (low - full).abs()
    assert gap.max() < 0.5 and gap.mean() < 0.2
    assert (low.argmax(dim=1) == full.argmax(dim=1)).sum() >= 28


def test_a_bad_device_or_dtype_is_one_clear_sentence() -> None:
    expected = {
        ("auto", "fp8"): "dtype 'fp8' is not one of auto, float32, bfloat16, float16",
        ("tpu", "auto"): "device 'tpu' is not one of auto, cpu, cuda, cuda:N, mps",
        ("cuda:x", "auto"): "device 'cuda:x' is not one of auto, cpu, cuda, cuda:N, mps",
    }
    if not torch.cuda.is_available():
        expected[("cuda", "auto")] = "device 'cuda' needs CUDA, which this machine does not have"
    for (device, dtype), message in expected.items():
        with pytest.raises(ConfigError) as err:
            resolve_backbone("tiny", device=device, dtype=dtype)
        assert str(err.value) == message


def test_auto_picks_the_gpu_and_bfloat16_when_there_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32  # CPU numbers unchanged
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cuda")) == torch.float16
    with pytest.raises(ConfigError, match=r"^device 'cuda:2' does not exist: this machine has 2"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float32


def test_an_explicit_device_goes_through_the_placement_a_gpu_takes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    placed: list[tuple[torch.device, torch.dtype]] = []
    real = backbone_module._placed

    def spy(model: Any, device: torch.device, dtype: torch.dtype) -> Any:
        placed.append((device, dtype))
        return real(model, device, dtype)

    monkeypatch.setattr(backbone_module, "_placed", spy)
    loaded = Backbone.load("tiny", device="cpu", dtype="bfloat16")
    assert placed == [(torch.device("cpu"), torch.bfloat16)]
    assert loaded.device == torch.device("cpu") and loaded.dtype == torch.bfloat16
    ids = torch.tensor([[5, 6, 7]], dtype=torch.int32)
    hidden = loaded.forward(loaded.embed(ids), torch.ones(1, 3), torch.arange(3)[None])
    assert hidden.dtype == torch.bfloat16 and loaded.lm_logits(hidden).dtype == torch.float32


def test_a_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config\.json"):
        Backbone.load(tmp_path)


def test_a_folder_whose_config_is_not_json_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama",')
    with pytest.raises(ConfigError, match=r"config\.json is not valid JSON \(line 1") as err:
        Backbone.load(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_a_folder_without_weights_is_one_sentence(tiny: Backbone, tmp_path: Path) -> None:
    tiny.model.config.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"has no weights: expected model\.safetensors") as err:
        resolve_backbone(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_pickled_weights_are_refused_unless_allowed(tiny: Backbone, tmp_path: Path) -> None:
    # transformers 5 ignores save_pretrained(safe_serialization=False): write the pickle as
    # older transformers did, beside the config.
    tiny.model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(tiny.model.state_dict(), tmp_path / "pytorch_model.bin")
    tiny.tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "pytorch_model.bin").is_file()
    assert not list(tmp_path.glob("*.safetensors"))
    with pytest.raises(ConfigError, match=r"'pytorch_model\.bin'.*--allow-pickle-weights"):
        resolve_backbone(tmp_path)
    loaded = resolve_backbone(tmp_path, device="cpu", allow_pickle=True)
    assert loaded.fingerprint == tiny.fingerprint


def test_safetensors_are_preferred_over_pickled_weights(
    tiny: Backbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    torch.save({"not": "weights"}, tmp_path / "pytorch_model.bin")

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("torch.load must not run for a folder with safetensors")

    monkeypatch.setattr(torch, "load", refuse)
    assert Backbone.load(tmp_path, device="cpu").fingerprint == tiny.fingerprint


def _parity(backbone: Backbone, texts: list[str]) -> None:
    tok = backbone.tokenizer
    rows = [tok.encode(t, add_special_tokens=False) for t in texts]
    batch = splice(backbone, [[r] for r in rows])
    hidden = backbone.forward(batch.embeds, batch.attention_mask, batch.position_ids)
    for b, ids in enumerate(rows):
        reference = backbone.model(input_ids=torch.tensor([ids])).logits[0]  # [T, V]
        ours = backbone.lm_logits(hidden[b, -len(ids) :])
        torch.testing.assert_close(ours, reference.float(), atol=1e-4, rtol=1e-4)


def test_logits_equal_plain_transformers_with_left_padding(tiny: Backbone) -> None:
    _parity(tiny, ["a short one", "a considerably longer sentence that forces left padding here"])


@pytest.mark.slow
def test_embedded_logits_equal_plain_transformers(embedded: Backbone) -> None:
    assert embedded.num_parameters == 134_515_008
    _parity(embedded, ["The capital of France is", "Review: a dull, lifeless film.\nAnswer:"])


def test_kv_cache_continuation_equals_one_forward(tiny: Backbone) -> None:
    ids = torch.tensor(
        [tiny.tokenizer.encode("one two three four five six", add_special_tokens=False)]
    )
    full = tiny.forward(tiny.embed(ids), torch.ones_like(ids), torch.arange(ids.shape[1])[None])
    cache = tiny.new_cache()
    head, tail = ids[:, :3], ids[:, 3:]
    tiny.forward(tiny.embed(head), torch.ones_like(head), torch.arange(3)[None], cache)
    rest = tiny.forward(
        tiny.embed(tail), torch.ones_like(ids), torch.arange(3, ids.shape[1])[None], cache
    )
    torch.testing.assert_close(rest, full[:, 3:], atol=1e-5, rtol=1e-5)


def test_a_failed_conversion_leaves_nothing_trusted(tmp_path: Path) -> None:
    final = tmp_path / "model"

    def build(tmp: Path) -> None:
        (tmp / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        build_folder(final, build, marker="frozenlm.json")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    final.mkdir()
    (final / "config.json").write_text("{}")
    assert not is_complete(final)  # a folder without the completion marker is never trusted


@pytest.mark.slow
def test_kill_during_embedded_conversion_leaves_no_trusted_cache(tmp_path: Path) -> None:
    env = {**os.environ, "FROZENLM_CACHE": str(tmp_path)}
    code = "from frozenlm.backbone import embedded_model_folder; embedded_model_folder()"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".smollm2-135m-instruct.tmp-*")):
        time.sleep(0.2)
    time.sleep(3)  # well inside the ~30 s conversion
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    final = tmp_path / "smollm2-135m-instruct"
    assert not is_complete(final)
    assert not final.exists()
