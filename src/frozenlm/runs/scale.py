"""`frozenlm scale`: experiments' run records across backbones, as tables and a plot.

"Does not work" at one size is recorded as "does not work yet at this size": the records of an
experiment and its replays (`frozenlm rerun`) on other backbones line up by backbone size.
Several experiments (prompting, trained plug-ins, ...) share one table per task, so every method
is read against calibrated zero-shot on the same backbones.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from frozenlm.atomic import atomic_write_bytes
from frozenlm.errors import ConfigError
from frozenlm.runs.records import RunRecord


@dataclass(frozen=True)
class ScaleRow:
    """One backbone's results in a scale table."""

    backbone: str
    parameters: int
    fingerprint: str
    record: str
    """The ids of the records the numbers come from, comma-separated."""
    metrics: dict[str, dict[str, float]]
    """"group metric" -> {"value", and "low", "high", "baseline", "n" when known}."""


def scale_table(records: Sequence[RunRecord]) -> list[ScaleRow]:
    """One row per backbone (by fingerprint), smallest first, with the metrics of every
    experiment among `records` (per experiment and backbone the newest record wins). When
    several experiments are given, a metric name two of them share is prefixed with its
    experiment, so different experiments never make one line."""
    if not records:
        raise ConfigError("scale needs at least one run record")
    order = list(dict.fromkeys(r.experiment for r in records))  # lines in the order given
    newest: dict[tuple[str, str], RunRecord] = {}
    for record in sorted(records, key=lambda r: (order.index(r.experiment), r.id)):
        newest[(record.experiment, record.backbone["fingerprint"])] = record
    seen: dict[str, set[str]] = {}
    for (experiment, _), record in newest.items():
        for name in record.flat_metrics():
            seen.setdefault(name, set()).add(experiment)
    shared = {name for name, where in seen.items() if len(where) > 1}
    rows: dict[str, ScaleRow] = {}
    for (experiment, fingerprint), record in newest.items():
        row = rows.setdefault(
            fingerprint,
            ScaleRow(
                backbone=record.backbone["name"],
                parameters=int(record.backbone.get("parameters") or 0),
                fingerprint=fingerprint,
                record="",
                metrics={},
            ),
        )
        ids = ", ".join(i for i in (row.record, record.id) if i)
        metrics = dict(row.metrics)
        for name, value in record.flat_metrics().items():
            shown = name
            if len(order) > 1 and record.kind != "compare":
                # beside compare's "task/method/n=N" groups, an eval's "task" group is named
                # with its command: "sentiment/supericl"
                group, _, measure = name.partition(" ")
                shown = f"{group}/{record.command[0]} {measure}".strip()
            metrics[f"{experiment}: {name}" if name in shared else shown] = value
        rows[fingerprint] = ScaleRow(row.backbone, row.parameters, fingerprint, ids, metrics)
    return sorted(rows.values(), key=lambda row: (row.parameters, row.backbone))


@dataclass(frozen=True)
class Line:
    """One metric drawn across backbones: which panel it belongs to and its label there."""

    metric: str
    panel: str
    label: str


def _line(metric: str) -> Line:
    """A compare metric "sentiment/lora/n=128 accuracy" is the line "lora n=128" of the panel
    "sentiment accuracy" (n=all and untrained methods' sizes are left out of the label); any
    other "group name" is the line "name" of the panel "group"."""
    head, _, name = metric.rpartition(": ")
    group, _, measure = name.partition(" ")
    parts = group.split("/")
    if len(parts) == 3 and parts[2].startswith("n="):
        task, method, size = parts
        label = method if size in ("n=all", "n=0", "n=None", "n=-") else f"{method} {size}"
        panel = f"{task} {measure}".strip()
    else:
        panel, label = group, measure or group
    return Line(metric, f"{head}: {panel}" if head else panel, label)


def _panels(rows: Sequence[ScaleRow]) -> dict[str, list[Line]]:
    panels: dict[str, list[Line]] = {}
    for name in dict.fromkeys(name for row in rows for name in row.metrics):
        line = _line(name)
        panels.setdefault(line.panel, []).append(line)
    return panels


def _fmt(value: dict[str, float] | None) -> str:
    if value is None:
        return "–"
    if "low" in value and "high" in value:
        return f"{value['value']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"
    return f"{value['value']:.3f}"


def _reference(lines: Sequence[Line]) -> Line | None:
    """The panel's zero-shot line, which the other lines are read against."""
    return next((line for line in lines if line.label.startswith("zero-shot")), None)


def _baselines(rows: Sequence[ScaleRow], lines: Sequence[Line]) -> set[float]:
    """The majority-class accuracies a panel states: its zero-shot line's when it has them
    (every line of a panel is scored on the same test examples), else every line's."""
    reference = _reference(lines)
    for stating in ([reference] if reference is not None else [], lines):
        found = {
            row.metrics[x.metric]["baseline"]
            for row in rows
            for x in stating
            if "baseline" in row.metrics.get(x.metric, {})
        }
        if found:
            return found
    return set()


def _versus(value: dict[str, float], base: dict[str, float] | None) -> str:
    """▲ above the reference's interval, ▼ below it, ≈ inside it."""
    if base is None or "low" not in base or "high" not in base:
        return ""
    if value["value"] > base["high"]:
        return " ▲"
    if value["value"] < base["low"]:
        return " ▼"
    return " ≈"


def _first_win(rows: Sequence[ScaleRow], line: Line, reference: Line) -> str:
    """Where `line` first beats `reference`: the smallest backbone on which its value is above
    the reference's and above the majority class (a model that predicts one label everywhere
    has not started to work), and whether it is above the reference's interval there."""
    measured = [r for r in rows if line.metric in r.metrics and reference.metric in r.metrics]
    if not measured:
        return f"{line.label}: not measured beside {reference.label}"
    for row in measured:
        value, base = row.metrics[line.metric], row.metrics[reference.metric]
        majority = base.get("baseline", value.get("baseline", -math.inf))  # same examples
        if value["value"] > base["value"] and value["value"] > majority:
            above = "high" in base and value["value"] > base["high"]
            how = "above its 95% interval" if above else "inside its 95% interval"
            return (
                f"{line.label}: first above {reference.label} and the majority class at "
                f"{row.backbone} ({_human(row.parameters)}), {value['value']:.3f} vs "
                f"{base['value']:.3f} ({how})"
            )
    sizes = ", ".join(_human(r.parameters) for r in measured)
    return (
        f"{line.label}: never above both {reference.label} and the majority class on the "
        f"backbones measured ({sizes})"
    )


def scale_markdown(rows: Sequence[ScaleRow], experiments: Sequence[str]) -> str:
    """Markdown: per panel a table (one row per backbone, one column per line, ▲/▼/≈ against
    the panel's zero-shot line when it has one), its majority baseline, and where each line
    first beats zero-shot."""
    lines = [f"# `frozenlm {e}` across backbones" for e in experiments[:1]]
    if len(experiments) > 1:
        lines = [
            "# Across backbones",
            "",
            "Experiments:",
            *[f"- `frozenlm {e}`" for e in experiments],
        ]
    lines += [
        "",
        "| backbone | parameters | fingerprint | records |",
        "|---|---:|---|---|",
        *[f"| {r.backbone} | {r.parameters:,} | {r.fingerprint[:12]} | {r.record} |" for r in rows],
    ]
    for panel, panel_lines in _panels(rows).items():
        reference = _reference(panel_lines)
        lines += [
            "",
            f"## {panel}",
            "",
            "| backbone | parameters | " + " | ".join(x.label for x in panel_lines) + " |",
            "|---|---:|" + "---|" * len(panel_lines),
        ]
        for row in rows:
            base = row.metrics.get(reference.metric) if reference else None
            cells = []
            for x in panel_lines:
                value = row.metrics.get(x.metric)
                mark = "" if value is None or x is reference else _versus(value, base)
                cells.append(_fmt(value) + mark)
            lines.append(
                f"| {row.backbone} | {_human(row.parameters)} | " + " | ".join(cells) + " |"
            )
        baselines = _baselines(rows, panel_lines)
        if baselines:
            text = ", ".join(f"{b:.3f}" for b in sorted(baselines))
            lines += ["", f"Majority-class baseline: {text}."]
        if reference is not None and len(panel_lines) > 1:
            lines += ["", f"▲ / ▼: above / below {reference.label}'s 95% interval; ≈: inside it."]
            lines += [
                f"- {_first_win(rows, x, reference)}" for x in panel_lines if x is not reference
            ]
    return "\n".join(lines) + "\n"


def _human(n: int) -> str:
    """3219776 -> "3.22M", 1_700_000_000 -> "1.7B"."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def plot_scale(rows: Sequence[ScaleRow], path: str | Path, title: str = "") -> None:
    """A PNG with one panel per metric group (a task's accuracy, say) against backbone
    parameters (log scale): one line per method with its 95% interval as a band, the
    majority-class baseline dotted, and under each tick its size and backbone name(s)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    panels = _panels(rows)
    columns = 1 if len(panels) == 1 else 2
    height = math.ceil(len(panels) / columns)
    # no pyplot: no global backend or figure manager
    fig = Figure(figsize=(8 if columns == 1 else 13, 5 * height), dpi=110)
    axes = fig.subplots(height, columns, squeeze=False).ravel()
    sizes = sorted({max(row.parameters, 1) for row in rows})
    names = {n: [r.backbone for r in rows if max(r.parameters, 1) == n] for n in sizes}
    for ax, (panel, panel_lines) in zip(axes, panels.items(), strict=False):
        values: list[float] = []
        for index, line in enumerate(panel_lines):
            measured = [row for row in rows if line.metric in row.metrics]
            xs = [max(row.parameters, 1) for row in measured]
            points = [row.metrics[line.metric] for row in measured]
            ys = [m["value"] for m in points]
            color = f"C{index % 10}"
            ax.plot(xs, ys, marker="o", color=color, label=line.label)
            if all("low" in m and "high" in m for m in points):
                lows, highs = [m["low"] for m in points], [m["high"] for m in points]
                ax.fill_between(xs, lows, highs, color=color, alpha=0.15, linewidth=0)
                values += [*lows, *highs]
            values += ys
        baselines = _baselines(rows, panel_lines)
        for i, baseline in enumerate(sorted(baselines)):
            label = "majority class" if i == 0 else None
            ax.axhline(baseline, color="0.4", linestyle=":", label=label)
        ax.set_xscale("log")
        # slanted "size name" labels: close sizes (135M, 268M) would overlap side by side
        labels = [" ".join([_human(n), *names[n]]) for n in sizes]
        ax.set_xticks(sizes, labels, fontsize=7, rotation=25, ha="right")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.margins(x=0.08)
        ax.set_title(panel, fontsize=10)
        ax.set_ylabel("score (band: 95% interval)", fontsize=8)
        if values and all(0 <= v <= 1 for v in [*values, *baselines] if math.isfinite(v)):
            ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    heading = textwrap.wrap(title, 110) if title else []
    fig.suptitle("\n".join([*heading, "quality against backbone size (log scale)"]), fontsize=10)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    atomic_write_bytes(path, png.getvalue())


def write_scale(records: Sequence[RunRecord], out: str | Path) -> str:
    """`frozenlm scale`: write `scale.md` and `scale.png` into `out`; return the markdown."""
    rows = scale_table(records)
    experiments = list(dict.fromkeys(r.experiment for r in records))
    text = scale_markdown(rows, experiments)
    out = Path(out)
    title = "; ".join(f"frozenlm {e}" for e in experiments)
    plot_scale(rows, out / "scale.png", title=title)
    atomic_write_bytes(out / "scale.md", (text + "\n![scale](scale.png)\n").encode())
    return text
