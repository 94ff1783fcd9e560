"""One experiment across backbones: the table, the refusal of mixed experiments, the files."""

import subprocess
import sys
from pathlib import Path

from frozenlm.backbone import Backbone, TinyConfig
from frozenlm.runs.records import load_record, write_record
from frozenlm.runs.scale import scale_markdown, scale_table

EVAL = ["eval", "--task", "trec", "--backbone", "tiny", "--limit", "8"]


def _record(runs: Path, backbone: Backbone, command: list[str], value: float) -> Path:
    metrics = {"trec": {"accuracy": {"value": value, "low": value - 0.1, "high": value + 0.1,
                                     "baseline": 0.25, "n": 8}}}  # fmt: skip
    return write_record("eval", command, backbone=backbone, tasks={"trec": "x"}, config={},
                        metrics=metrics, costs={}, outputs=[], runs=runs)  # fmt: skip


def test_different_experiments_never_share_a_line(tmp_path: Path, tiny: Backbone) -> None:
    paths = [
        _record(tmp_path, tiny, [*EVAL, "--out", "a.json"], 0.5),
        _record(tmp_path, tiny, ["eval", "--task", "trec", "--limit", "9"], 0.6),
    ]
    (row,) = scale_table([load_record(p) for p in paths])
    assert sorted(row.metrics) == [
        "eval --task trec --limit 8: trec accuracy",
        "eval --task trec --limit 9: trec accuracy",
    ]
    assert [row.metrics[name]["value"] for name in sorted(row.metrics)] == [0.5, 0.6]


def _compare_record(runs: Path, backbone: Backbone, values: dict[str, float]) -> Path:
    metrics = {
        f"sentiment/{method}/n={'all' if method == 'zero-shot' else 128}": {
            "accuracy": {"value": v, "low": v - 0.05, "high": v + 0.05, "baseline": 0.6, "n": 80}
        }
        for method, v in values.items()
    }
    return write_record("compare", ["compare", "--tasks", "sentiment"], backbone=backbone,
                        tasks={"sentiment": "x"}, config={}, metrics=metrics, costs={},
                        outputs=[], runs=runs)  # fmt: skip


def test_a_method_is_read_against_zero_shot_on_each_backbone(tmp_path: Path) -> None:
    widths = (64, 96, 128)
    backbones = [Backbone.tiny(TinyConfig(hidden_size=w)) for w in widths]
    values = [
        {"zero-shot": 0.7, "lora": 0.5},  # below zero-shot
        {"zero-shot": 0.4, "lora": 0.6},  # above zero-shot, but only the majority class (0.6)
        {"zero-shot": 0.7, "lora": 0.9},  # works
    ]
    records = [
        load_record(_compare_record(tmp_path, b, v)) for b, v in zip(backbones, values, strict=True)
    ]
    rows = scale_table(records)
    text = scale_markdown(rows, [records[0].experiment])
    table = [line for line in text.splitlines() if line.startswith("| tiny")][-3:]
    assert table[0].endswith("| 0.700 [0.650, 0.750] | 0.500 [0.450, 0.550] ▼ |")
    assert table[1].endswith("| 0.400 [0.350, 0.450] | 0.600 [0.550, 0.650] ▲ |")
    assert table[2].endswith("| 0.700 [0.650, 0.750] | 0.900 [0.850, 0.950] ▲ |")
    assert "## sentiment accuracy" in text and "| lora n=128 |" in text
    largest = f"({rows[-1].parameters / 1e6:.3g}M), 0.900 vs 0.700 (above its 95% interval)"
    assert (
        f"- lora n=128: first above zero-shot and the majority class at {rows[-1].backbone} "
        f"{largest}" in text
    )


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
assert "## trec" in text and "Majority-class baseline: 0.250." in text, text
assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
assert raw(matplotlib.rcParams, "backend") == backend, "the backend was set"
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "scale" / "scale.md").read_text().endswith("![scale](scale.png)\n")
    assert (tmp_path / "scale" / "scale.png").read_bytes().startswith(b"\x89PNG")
