"""`frozenlm models`: the list, get, add and remove, and a missing packaged backbone named on
every command in one sentence that gives the command to get it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from frozenlm.backbone import Backbone
from frozenlm.backbones import catalog
from frozenlm.backbones.catalog import Chunk
from frozenlm.cli.main import main


def test_the_list_names_every_backbone_with_its_costs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ["tiny", *catalog.KNOWN]:
        assert f"\n{name} " in out
    assert "Apache-2.0" in out and "Gemma terms of use" in out
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows][:2] == ["tiny", catalog.DEFAULT_NAME]
    default = next(r for r in rows if r["name"] == catalog.DEFAULT_NAME)
    assert default["present"] and default["memory_bytes"] > 4 * default["parameters"]


@pytest.fixture
def absent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A packaged backbone whose chunk package is not installed."""
    monkeypatch.setenv("FROZENLM_CACHE", str(tmp_path / "cache"))
    fake = replace(
        catalog.KNOWN["gemma-3-270m"],
        name="absent-1m",
        chunks=(Chunk("frozenlm_no_such_chunk_part1", "data/part01.bin"),),
        folder_name="absent-1m",
    )
    monkeypatch.setitem(catalog.KNOWN, fake.name, fake)
    return fake.name


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "--task", "trec"],
        ["train", "--task", "trec", "--steps", "1", "--out", "{tmp}/sp"],
        ["compare", "--tasks", "trec", "--methods", "zero-shot", "--out", "{tmp}/cmp"],
    ],
)
def test_a_missing_backbone_names_models_get(
    argv: list[str], absent: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert main([*argv, "--backbone", absent]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"backbone '{absent}' is not installed: run `frozenlm models get {absent}`" in err
    assert not (tmp_path / "sp").exists() and not (tmp_path / "cmp").exists()


def test_get_of_an_unknown_name_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "get", "gpt-5"]) == 2
    err = capsys.readouterr().err
    assert "unknown backbone 'gpt-5'; frozenlm can get: smollm2-135m, gemma-3-270m" in err


def test_get_of_a_present_backbone_does_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "get", "default"]) == 0
    assert "smollm2-135m is already present in" in capsys.readouterr().out


def test_add_then_use_then_remove_a_local_folder(
    tiny: Backbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("FROZENLM_CACHE", str(tmp_path / "cache"))
    tiny.model.save_pretrained(tmp_path / "model")
    tiny.tokenizer.save_pretrained(tmp_path / "model")
    assert main(["models", "add", "my-tiny", str(tmp_path / "model")]) == 0
    assert main(["models"]) == 0
    assert "\nmy-tiny " in capsys.readouterr().out
    out = tmp_path / "trec.json"
    argv = ["--no-record", "eval", "--task", "trec", "--limit", "4", "--out", str(out)]
    assert main([*argv, "--backbone", "my-tiny"]) == 0
    assert json.loads(out.read_text())["fingerprint"] == tiny.fingerprint
    assert main(["models", "remove", "my-tiny"]) == 0
    assert main(["models", "remove", "my-tiny"]) == 2
    assert "no backbone is registered as 'my-tiny'" in capsys.readouterr().err
