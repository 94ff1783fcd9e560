"""One experiment across backbones: the table, the refusal of mixed experiments, the files."""

import subprocess
import sys
from pathlib import Path

import pytest

from frozenlm.backbone import Backbone
from frozenlm.errors import ConfigError
from frozenlm.runs.records import load_record, write_record
from frozenlm.runs.scale import scale_table

EVAL = ["eval", "--task", "trec", "--backbone", "tiny", "--limit", "8"]


def _record(runs: Path, backbone: Backbone, command: list[str], value: float) -> Path:
    metrics = {"trec": {"accuracy": {"value": value, "low": value - 0.1, "high": value + 0.1,
                                     "baseline": 0.25, "n": 8}}}  # fmt: skip
    return write_record("eval", command, backbone=backbone, tasks={"trec": "x"}, config={},
                        metrics=metrics, costs={}, outputs=[], runs=runs)  # fmt: skip


def test_scale_refuses_records_of_different_experiments(tmp_path: Path, tiny: Backbone) -> None:
    paths = [
        _record(tmp_path, tiny, [*EVAL, "--out", "a.json"], 0.5),
        _record(tmp_path, tiny, ["eval", "--task", "trec", "--limit", "9"], 0.5),
    ]
    with pytest.raises(ConfigError, match="different experiments"):
        scale_table([load_record(p) for p in paths])


def test_write_scale_writes_the_table_and_plot_and_sets_no_matplotlib_state(
    tmp_path: Path, tiny: Backbone
) -> None:
    path = _record(tmp_path / "runs", tiny, [*EVAL, "--out", "a.json"], 0.5)
    code = f"""
import sys
import matplotlib
raw = dict.__getitem__  # reading rcParams["backend"] would resolve (and set) the backend
backend = raw(matplotlib.rcParams, "backend")
from frozenlm.runs.records import load_record
from frozenlm.runs.scale import write_scale
text = write_scale([load_record({str(path)!r})], {str(tmp_path / "scale")!r})
assert "| tiny-random-llama-s0 |" in text and "0.500 [0.400, 0.600]" in text, text
assert "Majority-class baseline: trec accuracy 0.250." in text, text
assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
assert raw(matplotlib.rcParams, "backend") == backend, "the backend was set"
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "scale" / "scale.md").read_text().endswith("![scale](scale.png)\n")
    assert (tmp_path / "scale" / "scale.png").read_bytes().startswith(b"\x89PNG")
