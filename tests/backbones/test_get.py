"""`models get`'s assembly on small fake chunk packages: joined in order, size and sha256
checked, a wrong one refused in one sentence, and no interrupted join ever trusted."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from frozenlm.backbones import catalog, get
from frozenlm.backbones.catalog import Chunk, KnownBackbone, is_complete
from frozenlm.errors import AssetError

PIECES = [b"GGUF" + bytes(range(256)) * 40, b"middle" * 1000, b"the end"]


def fake_backbone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pieces=PIECES) -> KnownBackbone:
    """Chunk packages frozenlm_fake_partN/data/partNN.bin on sys.path, and their catalog entry
    with a cache under tmp_path/cache."""
    site = tmp_path / "site"
    for i, piece in enumerate(pieces, 1):
        data = site / f"frozenlm_fake_part{i}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("")
        (data / f"part{i:02d}.bin").write_bytes(piece)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("FROZENLM_CACHE", str(tmp_path / "cache"))
    joined = b"".join(pieces)
    return KnownBackbone(
        name="fake-1m",
        title="Fake 1M (Q4)",
        license="none",
        architecture="none",
        parameters=1_000_000,
        packages=tuple(f"frozenlm-fake-part{i}==1.0" for i in range(1, len(pieces) + 1)),
        chunks=tuple(
            Chunk(f"frozenlm_fake_part{i}", f"data/part{i:02d}.bin")
            for i in range(1, len(pieces) + 1)
        ),
        gguf_bytes=len(joined),
        sha256=hashlib.sha256(joined).hexdigest(),
        folder_name="fake-1m",
        chat_template=False,
    )


def test_chunks_are_joined_in_order_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backbone = fake_backbone(tmp_path, monkeypatch)
    seen: list[bytes] = []

    def stop_after_join(joined: Path) -> None:
        seen.append(joined.read_bytes())
        raise KeyboardInterrupt  # as if killed between the join and the conversion

    with pytest.raises(KeyboardInterrupt):
        get.convert(backbone, after_join=stop_after_join)
    assert seen == [b"".join(PIECES)]
    # Nothing of the interrupted run is left, and nothing is trusted.
    assert not backbone.folder.exists()
    assert list(backbone.folder.parent.iterdir()) == []
    assert not backbone.present()


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"sha256": "0" * 64}, "sha256"),
        ({"gguf_bytes": len(b"".join(PIECES)) + 1}, "bytes, expected"),
    ],
)
def test_a_wrong_hash_or_size_is_refused_before_conversion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: dict, problem: str
) -> None:
    backbone = replace(fake_backbone(tmp_path, monkeypatch), **change)
    converted: list[Path] = []
    monkeypatch.setattr(get, "convert_gguf", lambda *a: converted.append(a[0]))
    with pytest.raises(AssetError, match=rf"joined GGUF of 'fake-1m' is wrong .*{problem}") as err:
        get.convert(backbone)
    assert "\n" not in str(err.value)
    assert converted == []
    assert not backbone.folder.exists() and not backbone.present()


def test_a_truncated_chunk_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backbone = fake_backbone(tmp_path, monkeypatch)
    chunk = get.chunk_paths(backbone)[1]
    chunk.write_bytes(chunk.read_bytes()[:-10])
    with pytest.raises(AssetError, match="bytes, expected"):
        get.convert(backbone)
    assert not backbone.present()


def test_a_good_join_becomes_a_trusted_cache_only_after_conversion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backbone = fake_backbone(tmp_path, monkeypatch)

    def fake_convert(gguf: Path, out: Path, name: str) -> tuple[str, int]:
        assert gguf.read_bytes() == b"".join(PIECES)
        assert not is_complete(out)
        (out / "config.json").write_text("{}")
        (out / catalog.MARKER).write_text('{"format": 1, "fingerprint": "f", "parameters": 3}')
        return "f", 3

    monkeypatch.setattr(get, "convert_gguf", fake_convert)
    get.convert(backbone)
    assert backbone.present()
    # The joined GGUF is not kept: it can be joined again from the packages.
    assert sorted(p.name for p in backbone.folder.iterdir()) == ["config.json", catalog.MARKER]


def test_a_missing_chunk_package_names_models_get(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backbone = fake_backbone(tmp_path, monkeypatch)
    absent = replace(backbone, chunks=(*backbone.chunks, Chunk("frozenlm_fake_part9", "x.bin")))
    assert not absent.installed()
    with pytest.raises(AssetError, match="run `frozenlm models get fake-1m`"):
        get.ensure_present(absent)
    missing = r"not installed \(its package .frozenlm_fake_part9. is missing\): run `frozenlm"
    with pytest.raises(AssetError, match=missing):
        get.convert(absent)


def test_get_backbone_refuses_an_unknown_name() -> None:
    with pytest.raises(Exception, match="unknown backbone 'nope'; frozenlm can get: smollm2-135m"):
        get.get_backbone("nope")


def test_a_failed_pip_install_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(AssetError, match=r"pip could not install x==1 \(exit 1\)"):
        get.pip_install(["x==1"])


def test_a_deleted_chunk_file_says_reinstall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backbone = fake_backbone(tmp_path, monkeypatch)
    get.chunk_paths(backbone)[0].unlink()
    with pytest.raises(AssetError, match=r"damaged: 'data/part01.bin' is missing .* --force`"):
        get.convert(backbone)
