"""Progress without a terminal: log lines at a steady interval, nothing for short work."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_toy_task
from frozenlm.progress import progress


def test_off_a_terminal_a_bar_logs_lines(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FROZENLM_PROGRESS_SECONDS", "0")
    with caplog.at_level(logging.INFO, logger="frozenlm.progress"):
        for _ in progress(range(3), desc="work", unit="step"):
            pass
    lines = [r.getMessage() for r in caplog.records if r.name == "frozenlm.progress"]
    assert lines and lines[-1].startswith("work: 3/3 step")


def test_work_shorter_than_the_interval_logs_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not even when every step sets a new postfix (training shows its loss)."""
    monkeypatch.setenv("FROZENLM_PROGRESS_SECONDS", "30")
    with caplog.at_level(logging.INFO, logger="frozenlm.progress"):
        bar = progress(total=3, desc="quick")
        for step in range(3):
            bar.update(1)
            bar.set_postfix(loss=f"{step:.3f}")
        bar.close()
    assert not [r for r in caplog.records if r.name == "frozenlm.progress"]


def test_training_piped_to_a_file_reports_progress(tmp_path: Path) -> None:
    task = write_toy_task(tmp_path)
    env = {**os.environ, "FROZENLM_PROGRESS_SECONDS": "0"}
    out = tmp_path / "sp"
    command = [sys.executable, "-m", "frozenlm", "--no-record", "train", "--task", str(task)]
    command += ["--out", str(out), "--steps", "4", "--eval-every", "2", "--backbone", "tiny"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    train_lines = [line for line in proc.stderr.splitlines() if "frozenlm.progress: train:" in line]
    assert train_lines, proc.stderr
    assert "4/4 step" in train_lines[-1]
