"""The catalog: every packaged backbone pinned and hashed, names resolved, local folders
registered under a name and loaded like any other backbone."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from frozenlm.backbone import Backbone, resolve_backbone
from frozenlm.backbones import catalog
from frozenlm.errors import ConfigError


def test_every_packaged_backbone_is_pinned_hashed_and_sized() -> None:
    assert catalog.known("default") is catalog.KNOWN[catalog.DEFAULT_NAME]
    for b in catalog.KNOWN.values():
        assert all(re.fullmatch(r"[a-z0-9-]+==[\w.]+", p) for p in b.packages), b.name
        assert len(b.chunks) >= len(b.packages) >= 1
        assert re.fullmatch(r"[0-9a-f]{64}", b.sha256)
        assert b.gguf_bytes > 0 and b.parameters > 0
        assert b.disk_bytes > 4 * b.parameters and b.memory_bytes > 4 * b.parameters
    sizes = [b.parameters for b in catalog.KNOWN.values()]
    assert sizes == sorted(sizes)


def test_register_and_load_a_local_folder_by_name(
    tiny: Backbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FROZENLM_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "my-model"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    assert catalog.register("mine", folder) == folder.resolve()
    assert "mine" in catalog.names()
    assert [r.present for r in catalog.listing() if r.name == "mine"] == [True]
    loaded = resolve_backbone("mine", device="cpu")
    assert loaded.fingerprint == tiny.fingerprint
    catalog.unregister("mine")
    with pytest.raises(ConfigError, match="backbone 'mine' is not an existing folder nor"):
        resolve_backbone("mine")


@pytest.mark.parametrize(
    "name, message",
    [
        ("Has Spaces", "must be lowercase letters"),
        ("tiny", "is a built-in backbone"),
        ("default", "is a built-in backbone"),
        ("qwen2.5-coder-0.5b", "is a built-in backbone"),
    ],
)
def test_bad_registrations_are_refused(
    name: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FROZENLM_CACHE", str(tmp_path))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=message):
        catalog.register(name, tmp_path)


def test_a_folder_without_config_and_an_unknown_name_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FROZENLM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"is not a model folder: it has no config\.json"):
        catalog.register("empty", tmp_path)
    with pytest.raises(ConfigError, match="no backbone is registered as 'ghost'"):
        catalog.unregister("ghost")


def test_an_unreadable_registry_is_one_sentence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FROZENLM_CACHE", str(tmp_path))
    (tmp_path / catalog.REGISTRY_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match=r"registry .* is unreadable .*; fix or delete it"):
        catalog.registered()
