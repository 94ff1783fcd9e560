"""`frozenlm scale`: one experiment's run records across backbones, as a table and a plot.

"Does not work" at one size is recorded as "does not work yet at this size": the records of an
experiment and its replays (`frozenlm rerun`) on other backbones line up by backbone size.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    """The id of the record the numbers come from."""
    metrics: dict[str, dict[str, float]]
    """"group metric" -> {"value", and "low", "high", "baseline", "n" when known}."""


def scale_table(records: Sequence[RunRecord]) -> list[ScaleRow]:
    """One row per backbone (by fingerprint; the newest record wins), smallest first. Refuses
    records of different experiments."""
    if not records:
        raise ConfigError("scale needs at least one run record")
    first = records[0]
    for other in records[1:]:
        if other.experiment != first.experiment:
            raise ConfigError(
                f"records {first.id} and {other.id} are different experiments "
                f"('{first.experiment}' vs '{other.experiment}'); scale compares one experiment "
                "across backbones"
            )
    newest: dict[str, RunRecord] = {}
    for record in sorted(records, key=lambda r: r.id):
        newest[record.backbone["fingerprint"]] = record
    rows = [
        ScaleRow(
            backbone=r.backbone["name"],
            parameters=int(r.backbone.get("parameters") or 0),
            fingerprint=r.backbone["fingerprint"],
            record=r.id,
            metrics=r.flat_metrics(),
        )
        for r in newest.values()
    ]
    return sorted(rows, key=lambda row: (row.parameters, row.backbone))


def _metric_names(rows: Sequence[ScaleRow]) -> list[str]:
    return list(dict.fromkeys(name for row in rows for name in row.metrics))


def _fmt(value: dict[str, float] | None) -> str:
    if value is None:
        return "–"
    if "low" in value and "high" in value:
        return f"{value['value']:.3f} [{value['low']:.3f}, {value['high']:.3f}]"
    return f"{value['value']:.3f}"


def scale_markdown(rows: Sequence[ScaleRow], experiment: str) -> str:
    """A markdown table: one row per backbone, one column per metric, majority baselines below."""
    names = _metric_names(rows)
    lines = [
        f"# `frozenlm {experiment}` across backbones",
        "",
        "| backbone | parameters | fingerprint | record | " + " | ".join(names) + " |",
        "|---|---:|---|---|" + "---|" * len(names),
    ]
    for row in rows:
        cells = [_fmt(row.metrics.get(name)) for name in names]
        lines.append(
            f"| {row.backbone} | {row.parameters:,} | {row.fingerprint[:12]} | {row.record} | "
            + " | ".join(cells)
            + " |"
        )
    baselines = {
        name: row.metrics[name]["baseline"]
        for row in rows
        for name in names
        if "baseline" in row.metrics.get(name, {})
    }
    if baselines:
        text = ", ".join(f"{name} {value:.3f}" for name, value in baselines.items())
        lines += ["", f"Majority-class baseline: {text}."]
    return "\n".join(lines) + "\n"


def _human(n: int) -> str:
    """3219776 -> "3.22M", 1_700_000_000 -> "1.7B"."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def plot_scale(rows: Sequence[ScaleRow], path: str | Path, title: str = "") -> None:
    """A PNG of each metric against backbone parameters (log scale): one line per metric with
    95% interval bars, the majority-class baseline dotted, and under each point's tick its size
    and backbone name(s)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(8, 5), dpi=120)  # no pyplot: no global backend or figure manager
    ax = fig.subplots()
    handles: list[Any] = []
    values: list[float] = []
    for index, name in enumerate(_metric_names(rows)):
        points = [row.metrics[name] for row in rows if name in row.metrics]
        xs = [max(row.parameters, 1) for row in rows if name in row.metrics]
        ys = [m["value"] for m in points]
        lows = [m.get("low", m["value"]) for m in points]
        highs = [m.get("high", m["value"]) for m in points]
        yerr = [[y - lo for y, lo in zip(ys, lows, strict=True)]]
        yerr += [[hi - y for y, hi in zip(ys, highs, strict=True)]]
        color = f"C{index % 10}"
        handles.append(
            ax.errorbar(xs, ys, yerr=yerr, marker="o", capsize=3, color=color, label=name)
        )
        baselines = [m["baseline"] for m in points if "baseline" in m]
        if baselines:
            label = f"{name}: majority class"
            handles.append(ax.axhline(baselines[0], color=color, linestyle=":", label=label))
        values += [*ys, *lows, *highs, *baselines]
    sizes = sorted({max(row.parameters, 1) for row in rows})
    names = {n: [r.backbone for r in rows if max(r.parameters, 1) == n] for n in sizes}
    ax.set_xscale("log")
    ax.set_xticks(sizes, ["\n".join([_human(n), *names[n]]) for n in sizes], fontsize=8)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.25)
    ax.set_xlabel("backbone parameters (log scale)")
    ax.set_ylabel("score (bars: 95% interval)")
    if values and all(0 <= v <= 1 for v in values if math.isfinite(v)):
        ax.set_ylim(-0.02, 1.02)
    heading = textwrap.wrap(title, 70) if title else []
    ax.set_title("\n".join([*heading, "quality against backbone size"]), fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, fontsize=8, loc="best")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    atomic_write_bytes(path, png.getvalue())


def write_scale(records: Sequence[RunRecord], out: str | Path) -> str:
    """`frozenlm scale`: write `scale.md` and `scale.png` into `out`; return the markdown."""
    rows = scale_table(records)
    experiment = records[0].experiment
    text = scale_markdown(rows, experiment)
    out = Path(out)
    plot_scale(rows, out / "scale.png", title=f"frozenlm {experiment}")
    atomic_write_bytes(out / "scale.md", (text + "\n![scale](scale.png)\n").encode())
    return text
