import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from frozenlm.atomic import build_folder
from frozenlm.backbone import Backbone, TinyConfig, _is_complete
from frozenlm.engine.splice import splice
from frozenlm.errors import ConfigError


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


def test_a_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config\.json"):
        Backbone.load(tmp_path)


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
    assert not _is_complete(final)  # a folder without the completion marker is never trusted


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
    assert not _is_complete(final)
    assert not final.exists()
