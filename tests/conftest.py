"""Shared fixtures: the embedded tokenizer, the tiny random backbone, the real embedded backbone."""

from __future__ import annotations

from typing import Any

import pytest

from frozenlm.backbone import Backbone, load_tokenizer


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny() -> Backbone:
    """Tiny random-weight Llama (2 layers, hidden 64) with the embedded tokenizer."""
    return Backbone.load("tiny")


@pytest.fixture(scope="session")
def embedded() -> Backbone:
    """The real embedded SmolLM2-135M-Instruct (use in tests marked slow)."""
    return Backbone.load()


@pytest.fixture(autouse=True)
def _runs_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run records of CLI calls in tests go to a temporary folder, never into ./runs."""
    monkeypatch.setenv("FROZENLM_RUNS", str(tmp_path_factory.mktemp("records")))
