from typing import Any

from frozenlm.compare.report import ranking_check, serving_bytes, shift_table


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
