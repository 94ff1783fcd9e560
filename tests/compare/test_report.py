import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from frozenlm.compare.majority import majority_notes
from frozenlm.compare.report import (
    METHOD_ORDER,
    curve_table,
    quality_table,
    ranking_check,
    report_summary,
    serving_bytes,
    shift_table,
    write_report,
)


def _cell(method: str, value: float, size: str = "all", *, half: float = 0.02,
          labelled: int = 100, seconds: float = 10.0, stored: int = 1000,
          shares: bool = True) -> dict[str, Any]:  # fmt: skip
    return {
        "task": "t",
        "method": method,
        "train_size": size,
        "status": "done",
        "test": {"metric": "accuracy", "value": value, "low": value - half, "high": value + half},
        "costs": {
            "labelled_train": labelled,
            "train_seconds": seconds,
            "stored_bytes": stored,
            "shares_backbone": shares,
        },
    }


def test_the_quality_ranking_holds_when_intervals_separate() -> None:
    cells = [_cell("full-ft", 0.9), _cell("soft-prompt", 0.8), _cell("zero-shot", 0.6)]
    line = ranking_check(cells, ["t"])[0]
    assert "holds — full-ft 0.900, soft-prompt 0.800, zero-shot 0.600" in line


def test_the_quality_ranking_fails_when_prompt_design_wins() -> None:
    cells = [_cell("full-ft", 0.7), _cell("soft-prompt", 0.6), _cell("few-shot", 0.8)]
    assert "does not hold" in ranking_check(cells, ["t"])[0]


def test_overlapping_intervals_are_ties_not_wins() -> None:
    cells = [_cell("lora", 0.71, half=0.1), _cell("soft-prompt", 0.70, half=0.1),
             _cell("zero-shot", 0.5)]  # fmt: skip
    assert "partly holds (fine-tuning and prompt tuning tie)" in ranking_check(cells, ["t"])[0]


def test_data_needed_reads_the_learning_curves() -> None:
    cells = [
        _cell("zero-shot", 0.6, labelled=0),
        _cell("soft-prompt", 0.55, "16", labelled=16),
        _cell("soft-prompt", 0.7, "64", labelled=64),
        _cell("full-ft", 0.5, "16", labelled=16),
        _cell("full-ft", 0.65, "64", labelled=64),
    ]
    lines = ranking_check(cells, ["t"])
    data = next(line for line in lines if line.startswith("- Data needed"))
    assert "does not hold" in data and "full-ft 64 examples, soft-prompt 64 examples" in data
    cells[3] = _cell("full-ft", 0.55, "64", labelled=64)
    cells[4] = _cell("full-ft", 0.66, "all", labelled=256)
    data = next(line for line in ranking_check(cells, ["t"]) if line.startswith("- Data"))
    assert ": holds" in data and "full-ft 256 examples" in data


def test_training_cost_order_of_magnitude() -> None:
    cells = [_cell("soft-prompt", 0.7, seconds=10), _cell("full-ft", 0.8, seconds=500)]
    line = next(x for x in ranking_check(cells, ["t"]) if "Training cost" in x)
    assert "does not hold (max/min 50.0x" in line


def test_serving_memory_shares_the_backbone_or_copies_it() -> None:
    assert serving_bytes(_cell("soft-prompt", 0.7, stored=10), 1000, 5) == 1050
    assert serving_bytes(_cell("full-ft", 0.7, stored=1000, shares=False), 1000, 5) == 5000


def test_shift_table_pairs_in_domain_and_shifted_results() -> None:
    cell = _cell("soft-prompt", 0.8)
    cell["shift"] = {"target": "u", "value": 0.6, "low": 0.55, "high": 0.65}
    lines = shift_table([cell])
    assert lines[0] == "| method | t (in-domain) | t -> u (shifted) |"
    assert lines[2] == "| soft-prompt | 0.800 [0.780, 0.820] | 0.600 [0.550, 0.650] |"


def test_the_supericl_line_needs_both_baselines_beaten() -> None:
    cells = [_cell("supericl", 0.9), _cell("plugin", 0.8), _cell("few-shot", 0.6)]
    line = next(x for x in ranking_check(cells, ["t"]) if "SuperICL" in x)
    assert ": holds — supericl 0.900, plugin 0.800, few-shot 0.600" in line
    cells[1] = _cell("plugin", 0.91)
    line = next(x for x in ranking_check(cells, ["t"]) if "SuperICL" in x)
    assert "not distinguishable from a baseline" in line
    cells[1] = _cell("plugin", 0.99)
    line = next(x for x in ranking_check(cells, ["t"]) if "SuperICL" in x)
    assert "does not hold" in line


def test_the_report_orders_methods_as_the_registry_lists_them() -> None:
    from frozenlm.compare.methods import METHODS

    assert tuple(METHODS) == METHOD_ORDER


def _config() -> dict[str, Any]:
    backbone = {"name": "b", "parameters": 1000, "fingerprint": "f" * 16}
    return {"tasks": ["t"], "seed": 0, "budget_detail": "tiny", "backbone": backbone}


def _reported_cells() -> list[dict[str, Any]]:
    cells = [_cell("zero-shot", 0.6), _cell("soft-prompt", 0.8)]
    for cell in cells:
        cell["costs"] |= {"trainable_parameters": 10, "labelled_dev": 0, "train_peak_mb": 1.0,
                          "inference_examples_per_s": 2.0}  # fmt: skip
    return cells


def test_the_summary_is_the_report_up_to_its_costs(tmp_path: Path) -> None:
    cells = _reported_cells()
    path = write_report(tmp_path, cells, _config(), 4000, 90.0)
    summary = report_summary(cells, _config(), 90.0)
    assert path.read_text().startswith(summary + "\n\n## Costs\n")
    assert summary.splitlines()[-1].startswith("| soft-prompt | 0.800 [0.780, 0.820]")
    assert "Wall time of this run: 1.5 min" in summary


def test_writing_a_report_sets_no_global_matplotlib_state(tmp_path: Path) -> None:
    (tmp_path / "in.json").write_text(json.dumps([_reported_cells(), _config()]))
    code = f"""
import json, sys
import matplotlib
raw = dict.__getitem__  # reading rcParams["backend"] would resolve (and set) the backend
backend = raw(matplotlib.rcParams, "backend")
from pathlib import Path
from frozenlm.compare.report import write_report
out = Path({str(tmp_path)!r})
cells, config = json.loads((out / "in.json").read_text())
write_report(out, cells, config, 4000, 1.0)
assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
assert raw(matplotlib.rcParams, "backend") == backend, "the backend was set"
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "learning_curves.png").read_bytes().startswith(b"\x89PNG")


def _classified(cell: dict[str, Any], f1: float, predicted: dict[str, int]) -> dict[str, Any]:
    """`cell` as classification reports it: macro-F1, the majority class's scores (0.700
    accuracy, 0.412 macro-F1) and how often each label was predicted."""
    cell["test"] |= {
        "macro_f1": {"value": f1, "low": f1 - 0.05, "high": f1 + 0.05},
        "majority": 0.7,
        "majority_macro_f1": 0.412,
        "majority_label": "pos",
        "predicted": predicted,
    }
    return cell


def test_macro_f1_is_beside_accuracy_and_results_at_the_majority_class_are_marked() -> None:
    cells = [
        _classified(_cell("zero-shot", 0.8), 0.75, {"pos": 60, "neg": 40}),
        _classified(_cell("soft-prompt", 0.7), 0.412, {"pos": 100}),
        _classified(_cell("lora", 0.6), 0.55, {"neg": 80, "pos": 20}),
    ]
    assert quality_table(cells, ["t"]) == [
        "| method | t | t macro-F1 |",
        "|---|---|---|",
        "| zero-shot | 0.800 [0.780, 0.820] | 0.750 [0.700, 0.800] |",
        "| soft-prompt | 0.700 [0.680, 0.720] † | 0.412 [0.362, 0.462] |",
        "| lora | 0.600 [0.580, 0.620] † | 0.550 [0.500, 0.600] |",
        "| *majority class* | 0.700 | 0.412 |",
    ]
    assert majority_notes(cells) == [
        "- † soft-prompt on t ends at the majority class: accuracy 0.700 vs 0.700 "
        "(every prediction 'pos'; macro-F1 0.412 vs 0.412): it learnt no more than the label "
        "prior.",
        "- † lora on t is at or below the majority class: accuracy 0.600 vs 0.700 "
        "(80% of predictions 'neg'; macro-F1 0.550 vs 0.412): it predicts 'pos' for 20% of "
        "inputs where the test split has 70%: it trades majority-class accuracy for the other "
        "classes (class-balanced training), and its macro-F1 is above the majority class's.",
    ]
    assert curve_table(cells)[2] == "| t | soft-prompt | 0.700 / 0.412 |"
    summary = report_summary(cells, _config(), 60.0).splitlines()
    table_end = summary.index("| *majority class* | 0.700 | 0.412 |")
    assert summary[table_end + 2] == "†: at or below the majority class's accuracy."
    assert summary[table_end + 4].startswith("- † soft-prompt on t ends at the majority class")


def test_a_result_mostly_predicting_the_majority_label_is_called_close_to_the_prior() -> None:
    cell = _classified(_cell("peft-prompt", 0.69), 0.45, {"pos": 90, "neg": 10})
    assert majority_notes([cell])[0].endswith(
        "(90% of predictions 'pos'; macro-F1 0.450 vs 0.412): it predicts 'pos' for 90% of "
        "inputs (the test split: 70%): little more than the label prior."
    )


def test_the_calibration_of_prompt_design_and_its_warnings_are_reported() -> None:
    cell = _classified(_cell("zero-shot", 0.417), 0.41, {"neg": 150, "pos": 50})
    dev_f1 = {"none": 0.47, "uniform": 0.52, "prior": 0.5}
    cell["calibration"] = {"mode": "dev", "chosen": "uniform", "dev_n": 200, "dev_macro_f1": dev_f1}
    cell["warnings"] = ["t zero-shot-calibrated (dev chose uniform): accuracy 0.417 is ..."]
    other = _classified(_cell("few-shot", 0.8), 0.75, {"pos": 120, "neg": 80})
    other["calibration"] = {"mode": "prior", "chosen": "prior"}
    other["warnings"] = []
    assert majority_notes([cell, other]) == [
        "- † zero-shot on t is at or below the majority class: accuracy 0.417 vs 0.700 "
        "(75% of predictions 'neg'; macro-F1 0.410 vs 0.412): it predicts 'pos' for 25% of "
        "inputs where the test split has 70%, and its macro-F1 is not above the majority "
        "class's either.",
        "- zero-shot on t: calibration chosen on 200 dev examples: uniform (dev macro-F1 none "
        "0.470, uniform 0.520, prior 0.500).",
        "- Warning: t zero-shot-calibrated (dev chose uniform): accuracy 0.417 is ...",
        "- few-shot on t: calibrated (prior).",
    ]


def test_the_shift_table_puts_macro_f1_beside_both_accuracies() -> None:
    cell = _classified(_cell("soft-prompt", 0.8), 0.75, {"pos": 1})
    f1 = {"value": 0.5, "low": 0.45, "high": 0.55}
    cell["shift"] = {"target": "u", "value": 0.6, "low": 0.55, "high": 0.65, "macro_f1": f1}
    lines = shift_table([cell])
    assert lines[0] == (
        "| method | t (in-domain) | t -> u (shifted) | t macro-F1 | t -> u macro-F1 |"
    )
    assert lines[2] == (
        "| soft-prompt | 0.800 [0.780, 0.820] | 0.600 [0.550, 0.650] | 0.750 [0.700, 0.800] | "
        "0.500 [0.450, 0.550] |"
    )
