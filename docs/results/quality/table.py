"""Print the calibration table of calibration.md from the report JSONs run.sh writes.

python docs/results/quality/table.py
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

REPORTS = Path(__file__).resolve().parent / "reports"
BACKBONES = {"default": "SmolLM2-135M", "qwen2.5-coder-0.5b": "Qwen2.5-Coder-0.5B"}
TASKS = ("sentiment", "sentiment-87")
MODES = ("uniform", "prior", "dev")


def interval(value: dict[str, float]) -> str:
    return f"{value['value']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"


def predicted(report: dict[str, Any]) -> str:
    """How often each label was predicted, e.g. "fresh 120 / rotten 80"."""
    counts = Counter(p["predicted"] for p in report["predictions"])
    return " / ".join(f"{label} {counts[label]}" for label in report["confusion"]["labels"])


def rows(backbone: str, task: str) -> list[str]:
    reports = {m: json.loads((REPORTS / f"{backbone}.{task}.{m}.json").read_text()) for m in MODES}
    first = reports["uniform"]
    for report in reports.values():  # one run's uncalibrated scores are every run's
        assert (
            report["metrics"]["uncalibrated_macro_f1"] == first["metrics"]["uncalibrated_macro_f1"]
        )
    name = f"{BACKBONES[backbone]} | {task} (n={first['n']})"
    metrics, base = first["metrics"], first["baseline"]
    majority = base["accuracy"]["value"]
    out = [
        f"| {name} | *majority class* | {interval(base['accuracy'])} | "
        f"{interval(base['macro_f1'])} | {first['confusion']['majority_label']} {first['n']} |",
        f"| {name} | none | {interval(metrics['uncalibrated_accuracy'])} | "
        f"{interval(metrics['uncalibrated_macro_f1'])} | |",
    ]
    for mode in MODES:
        report = reports[mode]
        calibration = report["calibration"]
        label = mode if mode != "dev" else f"dev (chose {calibration['chosen']})"
        accuracy = report["metrics"]["accuracy"]
        mark = " †" if accuracy["value"] <= majority else ""
        out.append(
            f"| {name} | {label} | {interval(accuracy)}{mark} | "
            f"{interval(report['metrics']['macro_f1'])} | {predicted(report)} |"
        )
    return out


def main() -> None:
    print("| backbone | task | calibration | accuracy [95% CI] | macro-F1 [95% CI] | predictions |")
    print("|---|---|---|---|---|---|")
    for backbone in BACKBONES:
        for task in TASKS:
            print("\n".join(rows(backbone, task)))
    print()
    print("| backbone | task | dev macro-F1 (n) none / uniform / prior | chosen | seconds |")
    print("|---|---|---|---|---|")
    for backbone in BACKBONES:
        for task in TASKS:
            dev = json.loads((REPORTS / f"{backbone}.{task}.dev.json").read_text())
            uniform = json.loads((REPORTS / f"{backbone}.{task}.uniform.json").read_text())
            c = dev["calibration"]
            f1 = " / ".join(f"{c['dev_macro_f1'][k]:.3f}" for k in ("none", "uniform", "prior"))
            print(
                f"| {BACKBONES[backbone]} | {task} | {f1} ({c['dev_n']}) | {c['chosen']} | "
                f"{dev['seconds']:.0f} (uniform alone: {uniform['seconds']:.0f}) |"
            )


if __name__ == "__main__":
    main()
