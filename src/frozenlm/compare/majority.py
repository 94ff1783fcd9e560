"""Results at or below the majority class, in the compare report: the mark in its tables, and
the lines under the quality table that say why (from the predictions each cell records), with
what calibration each prompt design used and its warnings.

Reads only cells (`runner.run_cell`'s JSON), like the rest of the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

AT_MAJORITY = "†"
"""Marks a result at or below the majority class's accuracy on the same examples."""


def at_majority(test: dict[str, Any]) -> bool:
    """Whether a test result is at or below the majority class's accuracy."""
    return test.get("majority") is not None and test["value"] <= test["majority"]


def _why(test: dict[str, Any]) -> str:
    """What the predictions were, e.g. "every prediction 'pos'" ("" when not recorded)."""
    counts: dict[str, int] = test.get("predicted") or {}
    if not counts:
        return ""
    top, count = max(counts.items(), key=lambda item: item[1])
    total = sum(counts.values())
    if count == total:
        return f"every prediction '{top}'"
    return f"{count / total:.0%} of predictions '{top}'"


def _cause(test: dict[str, Any]) -> str:
    """Why a result at or below the majority class is there, from its predictions against the
    test split's majority share ("" when not recorded)."""
    counts: dict[str, int] = test.get("predicted") or {}
    label = test.get("majority_label")
    if not counts or label is None:
        return ""
    total = sum(counts.values())
    share = counts.get(label, 0) / total
    if share == 1:
        return "it learnt no more than the label prior"
    f1, floor = test.get("macro_f1", {}).get("value"), test.get("majority_macro_f1")
    if share < test["majority"] and f1 is not None and floor is not None and f1 > floor:
        return (
            f"it predicts '{label}' for {share:.0%} of inputs where the test split has "
            f"{test['majority']:.0%}: it trades majority-class accuracy for the other classes "
            "(class-balanced training), and its macro-F1 is above the majority class's"
        )
    if share < test["majority"]:
        return (
            f"it predicts '{label}' for {share:.0%} of inputs where the test split has "
            f"{test['majority']:.0%}, and its macro-F1 is not above the majority class's either"
        )
    return (
        f"it predicts '{label}' for {share:.0%} of inputs (the test split: "
        f"{test['majority']:.0%}): little more than the label prior"
    )


def majority_notes(heads: Sequence[dict[str, Any]]) -> list[str]:
    """For headline cells: one line per result at or below the majority class, saying why from
    its predictions, then what calibration each prompt-design result used and its warnings."""
    lines = []
    for cell in heads:
        test = cell["test"]
        if not at_majority(test):
            continue
        why = _why(test)
        ends = "ends at" if why.startswith("every") else "is at or below"
        details = [why] if why else []
        if "macro_f1" in test and test.get("majority_macro_f1") is not None:
            details.append(
                f"macro-F1 {test['macro_f1']['value']:.3f} vs {test['majority_macro_f1']:.3f}"
            )
        cause = _cause(test)
        lines.append(
            f"- {AT_MAJORITY} {cell['method']} on {cell['task']} {ends} the majority class: "
            f"accuracy {test['value']:.3f} vs {test['majority']:.3f}"
            + (f" ({'; '.join(details)})" if details else "")
            + (f": {cause}" if cause else "")
            + "."
        )
    for cell in heads:
        if cell.get("calibration"):
            lines.append(f"- {cell['method']} on {cell['task']}: {_calibration(cell)}.")
        lines += [f"- Warning: {w}" for w in cell.get("warnings", [])]
    return lines


def majority_section(heads: Sequence[dict[str, Any]]) -> list[str]:
    """`majority_notes` after a blank line and the mark's legend (nothing when there are none)."""
    notes = majority_notes(heads)
    if not notes:
        return []
    return ["", f"{AT_MAJORITY}: at or below the majority class's accuracy.", "", *notes]


def _calibration(cell: dict[str, Any]) -> str:
    """What calibration a prompt-design cell used, from its `Report.calibration`."""
    calibration = cell["calibration"]
    if calibration["mode"] != "dev":
        return f"calibrated ({calibration['mode']})"
    f1 = ", ".join(f"{k} {v:.3f}" for k, v in calibration["dev_macro_f1"].items())
    return (
        f"calibration chosen on {calibration['dev_n']} dev examples: {calibration['chosen']} "
        f"(dev macro-F1 {f1})"
    )
