"""Checkpoints: round trips, refusals with clear messages, atomic saves, resumable state."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from transformers.optimization import Adafactor

from frozenlm import __version__, atomic
from frozenlm.backbone import Backbone, TinyConfig
from frozenlm.errors import CheckpointError, ConfigError
from frozenlm.plugins.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    load_training_state,
    optimizer_state_from_tensors,
    optimizer_state_to_tensors,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)


def _meta(backbone: Backbone) -> dict[str, Any]:
    return {
        "kind": "soft-prompt",
        "plugin_config": {"length": 4},
        "tasks": {"sentiment": {"labels": ["negative", "positive"]}},
        "backbone": {
            "name": backbone.name,
            "fingerprint": backbone.fingerprint,
            "hidden_size": backbone.hidden_size,
        },
        "train_config": {"lr": 0.3},
        "metrics": {"dev": 0.75},
    }


def _tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "prompt.sentiment": torch.randn(4, 64, generator=g),  # [P, D]
        "prompt.topic": torch.randn(2, 64, generator=g, dtype=torch.float64),
    }


@pytest.fixture
def saved(tmp_path: Path, tiny: Backbone) -> Path:
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, _tensors(), _meta(tiny))
    return folder


def _rewrite_json(folder: Path, **changes: Any) -> None:
    meta = json.loads((folder / "plugin.json").read_text())
    meta.update(changes)
    (folder / "plugin.json").write_text(json.dumps(meta))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_round_trip_keeps_tensors_and_meta(saved: Path, tiny: Backbone) -> None:
    loaded = load_checkpoint(saved, backbone=tiny)
    expected = _tensors()
    assert sorted(loaded.tensors) == sorted(expected)
    for name, tensor in expected.items():
        assert loaded.tensors[name].dtype == torch.float32
        assert torch.equal(loaded.tensors[name], tensor.float())
    for key, value in _meta(tiny).items():
        assert loaded.meta[key] == value
    assert loaded.meta["format"] == FORMAT_VERSION
    assert loaded.meta["frozenlm_version"] == __version__
    assert loaded.meta["tensors"]["prompt.topic"] == {"shape": [2, 64], "dtype": "float32"}
    assert loaded.meta["sha256"] == _sha(saved / "plugin.safetensors")
    assert loaded.folder == saved
    assert sorted(p.name for p in saved.iterdir()) == ["plugin.json", "plugin.safetensors"]
    assert load_training_state(saved) is None


def test_other_backbone_is_refused_unless_allowed(
    saved: Path, tiny: Backbone, caplog: pytest.LogCaptureFixture
) -> None:
    other = Backbone.tiny(TinyConfig(seed=1))
    assert other.fingerprint != tiny.fingerprint
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(saved, backbone=other)
    message = str(err.value)
    for part in (tiny.name, tiny.fingerprint, other.name, other.fingerprint, str(saved)):
        assert part in message
    assert "pass --allow-other-backbone to load it anyway" in message
    with caplog.at_level(logging.WARNING, logger="frozenlm.plugins.checkpoint"):
        loaded = load_checkpoint(saved, backbone=other, allow_other_backbone=True)
    assert torch.equal(loaded.tensors["prompt.sentiment"], _tensors()["prompt.sentiment"])
    assert any(other.fingerprint in r.getMessage() for r in caplog.records)


def test_hidden_size_mismatch_is_refused_even_when_allowed(saved: Path, tiny: Backbone) -> None:
    meta = json.loads((saved / "plugin.json").read_text())
    _rewrite_json(saved, backbone={**meta["backbone"], "hidden_size": 32})
    with pytest.raises(CheckpointError, match=r"hidden size 32.*hidden size 64"):
        load_checkpoint(saved, backbone=tiny, allow_other_backbone=True)


def test_truncated_file_is_refused(saved: Path) -> None:
    path = saved / "plugin.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"plugin\.safetensors' is corrupted or truncated"):
        load_checkpoint(saved)
    # Even with a matching sha256 (e.g. a hand-edited plugin.json) it cannot be parsed.
    _rewrite_json(saved, sha256=_sha(path))
    with pytest.raises(CheckpointError, match=r"cannot be parsed as safetensors"):
        load_checkpoint(saved)


def test_flipped_byte_is_refused(saved: Path) -> None:
    path = saved / "plugin.safetensors"
    data = bytearray(path.read_bytes())
    data[-7] ^= 0x01  # inside the tensor data: still parses, but the values changed
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"corrupted or truncated"):
        load_checkpoint(saved)


def test_shapes_must_match_expected_and_json(saved: Path) -> None:
    ok = {"prompt.sentiment": [4, 64], "prompt.topic": (2, 64)}
    assert load_checkpoint(saved, expected_shapes=ok).tensors["prompt.topic"].shape == (2, 64)
    with pytest.raises(CheckpointError, match=r"'prompt.sentiment' has shape \[4, 64\], expected"):
        load_checkpoint(saved, expected_shapes={**ok, "prompt.sentiment": [5, 64]})
    with pytest.raises(CheckpointError, match=r"expected .*prompt\.other"):
        load_checkpoint(saved, expected_shapes={**ok, "prompt.other": [4, 64]})
    meta = json.loads((saved / "plugin.json").read_text())
    meta["tensors"]["prompt.topic"]["shape"] = [3, 64]
    (saved / "plugin.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"'prompt.topic' is float32 \[2, 64\] but its JSON"):
        load_checkpoint(saved)


def test_nan_is_refused_at_save_and_at_load(saved: Path, tmp_path: Path) -> None:
    bad = _tensors()
    bad["prompt.topic"][1, 3] = float("nan")
    with pytest.raises(CheckpointError, match=r"tensor 'prompt\.topic' holds NaN or inf"):
        save_checkpoint(tmp_path / "nan", bad, {})
    assert not (tmp_path / "nan").exists()
    # A file written by other means (with a consistent sha256) is refused at load.
    path = saved / "plugin.safetensors"
    bad["prompt.sentiment"][0, 0] = float("inf")
    save_file({k: v.float() for k, v in bad.items()}, path)
    _rewrite_json(saved, sha256=_sha(path))
    with pytest.raises(
        CheckpointError, match=r"tensor '(prompt\.topic|prompt\.sentiment)' holds NaN"
    ):
        load_checkpoint(saved)


def test_missing_or_malformed_files_are_refused(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"'.*nowhere' does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    data = (saved / "plugin.json").read_text()
    (saved / "plugin.json").write_text(data[:-20])
    with pytest.raises(CheckpointError, match=r"plugin\.json' is not valid JSON"):
        load_checkpoint(saved)
    (saved / "plugin.json").write_text(data.replace('"format": 1', '"format": 2'))
    with pytest.raises(
        CheckpointError, match=r"has format 2, newer than the 1 this frozenlm reads"
    ):
        load_checkpoint(saved)
    (saved / "plugin.json").unlink()
    with pytest.raises(CheckpointError, match=r"plugin\.json' is missing"):
        load_checkpoint(saved)
    (saved / "plugin.json").write_text(data)
    (saved / "plugin.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"plugin\.safetensors' is missing"):
        load_checkpoint(saved)


def test_interrupted_save_leaves_the_previous_checkpoint(
    saved: Path, tiny: Backbone, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _snapshot(saved)
    write_file = atomic._write_file

    def dies_at_the_json(path: Path, data: bytes) -> None:
        if path.name == "plugin.json":
            write_file(path, data[: len(data) // 2])
            raise KeyboardInterrupt  # the process is stopped half-way through writing it
        write_file(path, data)

    monkeypatch.setattr(atomic, "_write_file", dies_at_the_json)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(saved, _tensors(seed=1), _meta(tiny))
    assert _snapshot(saved) == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["ckpt"]  # temp folder removed
    monkeypatch.setattr(atomic, "_write_file", write_file)

    rename = os.rename

    def fails_to_rename_in(src: Any, dst: Any) -> None:
        if ".ckpt.tmp-" in str(src):
            raise OSError("disk full")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", fails_to_rename_in)
    with pytest.raises(OSError, match=r"disk full"):
        save_checkpoint(saved, _tensors(seed=1), _meta(tiny))
    monkeypatch.setattr(os, "rename", rename)
    assert _snapshot(saved) == before
    assert sorted(p.name for p in saved.parent.iterdir()) == ["ckpt"]
    assert torch.equal(
        load_checkpoint(saved).tensors["prompt.topic"], _tensors()["prompt.topic"].float()
    )


def test_killed_save_is_recovered(saved: Path, tiny: Backbone) -> None:
    before = _snapshot(saved)
    # State after a kill between the two renames: old checkpoint aside, new one in a temp folder.
    saved.rename(saved.parent / ".ckpt.old-0123abcd")
    save_checkpoint(saved.parent / "elsewhere", _tensors(seed=1), _meta(tiny))
    (saved.parent / "elsewhere").rename(saved.parent / ".ckpt.tmp-89abcdef")
    assert torch.equal(
        load_checkpoint(saved).tensors["prompt.topic"], _tensors()["prompt.topic"].float()
    )
    assert load_training_state(saved) is None
    # A temp folder of a write killed earlier on, without plugin.json, is never read.
    partial = saved.parent / ".ckpt.tmp-deadbeef"
    partial.mkdir()
    (partial / "plugin.safetensors").write_bytes(b"garbage")

    save_checkpoint(saved, _tensors(seed=2), _meta(tiny))
    assert sorted(p.name for p in saved.parent.iterdir()) == ["ckpt"]
    assert _snapshot(saved) != before
    assert torch.equal(
        load_checkpoint(saved).tensors["prompt.topic"], _tensors(2)["prompt.topic"].float()
    )


def test_never_replaces_a_folder_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=r"is not a folder holding plugin\.json"):
        save_checkpoint(tmp_path / "mine", _tensors(), {})
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    save_checkpoint(tmp_path / "empty", _tensors(), {})
    assert load_checkpoint(tmp_path / "empty").meta["tensors"]["prompt.sentiment"]["shape"] == [
        4,
        64,
    ]


def _adafactor(param: torch.nn.Parameter) -> Adafactor:
    return Adafactor([param], lr=0.3, scale_parameter=False, relative_step=False, weight_decay=1e-5)


def _step(param: torch.nn.Parameter, optimizer: torch.optim.Optimizer, seed: int) -> None:
    target = torch.randn(5, 8, generator=torch.Generator().manual_seed(seed))
    loss = ((param - target) ** 2).sum()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_optimizer_state_survives_a_checkpoint(tmp_path: Path, tiny: Backbone) -> None:
    param = torch.nn.Parameter(torch.randn(5, 8, generator=torch.Generator().manual_seed(0)))
    optimizer = _adafactor(param)
    for seed in range(3):
        _step(param, optimizer, seed)
    tensors, meta = optimizer_state_to_tensors(optimizer.state_dict())
    assert {"state.0.exp_avg_sq_row", "state.0.exp_avg_sq_col"} <= set(tensors)
    save_checkpoint(
        tmp_path / "last",
        {"param": param},
        _meta(tiny),
        training_tensors={f"opt.{k}": v for k, v in tensors.items()},
        training_meta={"optimizer": meta, "loop": {"step": 3, "best": float("-inf")}},
    )

    saved = load_training_state(tmp_path / "last")
    assert saved is not None
    saved_tensors, saved_meta = saved
    assert saved_meta["loop"] == {"step": 3, "best": float("-inf")}
    assert "sha256" not in saved_meta
    fresh = torch.nn.Parameter(load_checkpoint(tmp_path / "last").tensors["param"].clone())
    restored = _adafactor(fresh)
    opt_tensors = {k[4:]: v for k, v in saved_tensors.items() if k.startswith("opt.")}
    restored.load_state_dict(optimizer_state_from_tensors(opt_tensors, saved_meta["optimizer"]))
    assert restored.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
    for seed in (3, 4):
        _step(param, optimizer, seed)
        _step(fresh, restored, seed)
    assert torch.equal(param, fresh)


def test_adamw_state_with_tensor_steps_and_tuples_round_trips() -> None:
    param = torch.nn.Parameter(torch.ones(5, 8))
    optimizer = torch.optim.AdamW([param], lr=0.1, betas=(0.8, 0.9))
    _step(param, optimizer, 0)
    tensors, meta = optimizer_state_to_tensors(optimizer.state_dict())
    json.dumps(meta)  # JSON as it is
    back = optimizer_state_from_tensors(tensors, json.loads(json.dumps(meta)))
    original = optimizer.state_dict()
    assert back["param_groups"] == original["param_groups"]
    assert isinstance(back["param_groups"][0]["betas"], tuple)
    assert list(back["state"]) == [0]
    for key, value in original["state"][0].items():
        assert torch.equal(back["state"][0][key], value), key


def test_rng_state_round_trip(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(7)
    torch.manual_seed(1)
    random.seed(2)
    torch.rand(3)  # advance away from the seeds
    tensors, meta = rng_state(generator)
    assert tensors["torch"].dtype == torch.uint8
    save_checkpoint(tmp_path / "c", {}, {}, training_tensors=tensors, training_meta={"rng": meta})
    expected = (torch.rand(4), random.random(), torch.rand(2, generator=generator))

    torch.manual_seed(99)
    random.seed(99)
    generator.manual_seed(99)
    saved = load_training_state(tmp_path / "c")
    assert saved is not None
    assert saved[0]["torch"].dtype == torch.uint8  # training tensors keep their dtype
    restore_rng_state(saved[0], saved[1]["rng"], generator)
    assert torch.equal(torch.rand(4), expected[0])
    assert random.random() == expected[1]
    assert torch.equal(torch.rand(2, generator=generator), expected[2])


def test_corrupted_training_state_is_refused(tmp_path: Path) -> None:
    tensors, meta = rng_state()
    save_checkpoint(tmp_path / "c", {}, {}, training_tensors=tensors, training_meta={"rng": meta})
    path = tmp_path / "c" / "training_state.safetensors"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(CheckpointError, match=r"training_state\.safetensors' is corrupted"):
        load_training_state(tmp_path / "c")
    assert load_training_state(tmp_path / "absent") is None
