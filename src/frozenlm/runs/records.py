"""Run records: every `train`, `eval` and `compare` run leaves one JSON file saying what ran
(command, config), on which backbone (name, fingerprint, size), on which data (split hashes),
with which package versions, and what came out (metrics, costs, output paths).

A record can be replayed on another backbone (`frozenlm rerun`, which knows the CLI's options),
and the records of one experiment on several backbones make a table and a plot of quality
against model size (`scale.py`), so that "does not work" is recorded as "does not work yet at
this size".

Records live in `runs_dir()`: `$FROZENLM_RUNS`, default `./runs/records`, one `<id>.json` each.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from frozenlm.atomic import atomic_write_json
from frozenlm.errors import ConfigError

if TYPE_CHECKING:
    from frozenlm.backbone import Backbone
    from frozenlm.tasks import Task

log = logging.getLogger(__name__)

RUNS_ENV = "FROZENLM_RUNS"
KINDS = ("train", "eval", "compare", "qa-eval", "recursion-textual")
VERSIONED = ("frozenlm", "torch", "transformers", "peft")
# Options that say where a run happens, not what it is: option -> number of values it takes.
NOT_THE_EXPERIMENT = {
    "--backbone": 1,
    "--out": 1,
    "--resume": 0,
    "--overwrite": 0,
    "--device": 1,
    "--dtype": 1,
    "--allow-pickle-weights": 0,
}
_INTERVAL_FIELDS = ("value", "low", "high", "baseline", "n")


def runs_dir() -> Path:
    """Where records are written and looked up: `$FROZENLM_RUNS`, default `./runs/records`."""
    return Path(os.environ.get(RUNS_ENV) or Path("runs") / "records")


@dataclass(frozen=True)
class RunRecord:
    """One finished run, as stored in `<id>.json`."""

    id: str
    """Sortable: UTC time `YYYYmmdd-HHMMSS`, the kind and 6 random hex digits."""
    kind: str
    """"train", "eval" or "compare"."""
    created: str
    """ISO 8601 UTC time the record was written."""
    command: list[str]
    """The arguments after `frozenlm`, from the subcommand on (top-level options left out)."""
    experiment: str
    """The command without `--backbone`, `--out`, `--resume`, `--device` and `--dtype`: equal
    across backbones."""
    config: dict[str, Any]
    """The run's options, defaults filled in."""
    backbone: dict[str, Any]
    """name, fingerprint, source ("default", "tiny" or a folder) and parameters."""
    split_hash: dict[str, str]
    """Task name -> hash of its splits (`Task.split_hash`): equal hashes, equal data."""
    versions: dict[str, str | None]
    """python, frozenlm, torch, transformers, peft (null when not installed)."""
    metrics: dict[str, Any]
    """Group (a task, or task/method) -> metric name -> a number or a dict with "value" and
    optionally "low", "high" (95% interval), "baseline" (majority class) and "n"."""
    costs: dict[str, Any]
    """E.g. seconds, examples, steps, trainable_parameters."""
    outputs: list[str]
    """Files and folders the run wrote."""
    replay_of: str | None = None
    """The id of the original record when this run is a replay on another backbone."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def flat_metrics(self) -> dict[str, dict[str, float]]:
        """Every metric as "group metric" -> {"value", and "low", "high", "baseline", "n" when
        known}; non-numeric entries (lists, strings) are left out."""
        flat: dict[str, dict[str, float]] = {}
        for group, values in self.metrics.items():
            items = values.items() if isinstance(values, dict) else [("", values)]
            for name, value in items:
                key = f"{group} {name}".strip()
                if _is_number(value):
                    flat[key] = {"value": float(value)}
                elif isinstance(value, dict) and _is_number(value.get("value")):
                    entry = {
                        k: float(value[k]) for k in _INTERVAL_FIELDS if _is_number(value.get(k))
                    }
                    if "baseline" not in entry and _is_number(value.get("majority")):
                        entry["baseline"] = float(value["majority"])  # compare's cells say so
                    flat[key] = entry
        return flat

    def headline(self) -> str:
        """The first metric, e.g. "trec accuracy 0.630" ("" when the run has none)."""
        flat = self.flat_metrics()
        if not flat:
            return ""
        name, value = next(iter(flat.items()))
        return f"{name} {value['value']:.3f}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def experiment_key(command: Sequence[str]) -> str:
    """`command` without the options in `NOT_THE_EXPERIMENT`, joined by spaces."""
    kept: list[str] = []
    skip = 0
    for token in command:
        if skip:
            skip -= 1
        elif token in NOT_THE_EXPERIMENT:
            skip = NOT_THE_EXPERIMENT[token]
        elif not token.startswith(tuple(f"{option}=" for option in NOT_THE_EXPERIMENT)):
            kept.append(token)
    return " ".join(kept)


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package in VERSIONED:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def backbone_identity(backbone: Backbone) -> dict[str, Any]:
    """What a record says about a backbone: name, fingerprint, source, parameters."""
    return {
        "name": backbone.name,
        "fingerprint": backbone.fingerprint,
        "source": backbone.source,
        "parameters": backbone.num_parameters,
    }


def write_record(
    kind: str,
    command: Sequence[str],
    *,
    backbone: Backbone,
    tasks: Iterable[Task] | Mapping[str, str],
    config: Mapping[str, Any],
    metrics: Mapping[str, Any],
    costs: Mapping[str, Any],
    outputs: Sequence[str | Path],
    replay_of: str | None = None,
    runs: str | Path | None = None,
) -> Path:
    """Write the record of a finished run into `runs` (default `runs_dir()`); return its path.

    `command` is the argv after `frozenlm`, starting at the subcommand. `tasks` are the tasks
    run, as `Task`s or as {name: split hash}. `metrics` maps a group (task, or task/method) to
    metric name -> number or {"value", "low", "high", "baseline", "n"} (see `RunRecord.metrics`).
    Everything must be JSON-serialisable.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown run kind '{kind}'; expected one of {', '.join(KINDS)}")
    now = datetime.now(UTC)
    hashes = dict(tasks) if isinstance(tasks, Mapping) else {t.name: t.split_hash() for t in tasks}
    record = RunRecord(
        id=f"{now:%Y%m%d-%H%M%S}-{kind}-{secrets.token_hex(3)}",
        kind=kind,
        created=now.isoformat(timespec="seconds"),
        command=list(command),
        experiment=experiment_key(command),
        config=dict(config),
        backbone=backbone_identity(backbone),
        split_hash=hashes,
        versions=_versions(),
        metrics=dict(metrics),
        costs=dict(costs),
        outputs=[str(p) for p in outputs],
        replay_of=replay_of,
    )
    path = Path(runs if runs is not None else runs_dir()) / f"{record.id}.json"
    try:
        atomic_write_json(path, record.to_json())
    except OSError as err:
        raise ConfigError(
            f"cannot write the run record '{path}' ({err.strerror}); choose another folder with "
            f"--runs-dir or ${RUNS_ENV}, or pass --no-record"
        ) from err
    return path


def report_metrics(reports: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Record metrics from evaluation reports (`Report.to_json()`, `EnsembleReport.to_json()`):
    task -> metric -> {"value", "low", "high", "baseline" (when known), "n"}."""
    metrics: dict[str, Any] = {}
    for report in reports:
        baseline = report.get("baseline", {})
        entries = metrics.setdefault(report["task"], {})
        for name, value in report["metrics"].items():
            if not (isinstance(value, dict) and _is_number(value.get("value"))):
                continue  # e.g. an ensemble's list of single-prompt accuracies
            entry = {k: value[k] for k in ("value", "low", "high") if k in value}
            if name in baseline:
                entry["baseline"] = baseline[name]["value"]
            entries[name] = entry | {"n": report["n"]}
    return metrics


def load_record(path_or_id: str | Path, runs: str | Path | None = None) -> RunRecord:
    """A record from its file, or from its id (looked up in `runs`, default `runs_dir()`)."""
    ref = str(path_or_id)
    folder = Path(runs if runs is not None else runs_dir())
    looks_like_path = ref.endswith(".json") or os.sep in ref or Path(ref).is_file()
    path = Path(ref) if looks_like_path else folder / f"{ref}.json"
    if not path.is_file():
        where = f"'{path}' does not exist" if looks_like_path else f"there is no '{path}'"
        raise ConfigError(f"no run record '{ref}': {where} (list records with `frozenlm runs`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"run record '{path}' is not valid JSON ({err})") from err
    except OSError as err:
        raise ConfigError(f"run record '{path}' cannot be read ({err.strerror})") from err
    return _from_json(data, path)


def _from_json(data: Any, path: Path) -> RunRecord:
    if not isinstance(data, dict):
        raise ConfigError(f"run record '{path}' holds a JSON {type(data).__name__}, not an object")
    expected: dict[str, type | tuple[type, ...]] = {
        "id": str,
        "kind": str,
        "created": str,
        "command": list,
        "experiment": str,
        "config": dict,
        "backbone": dict,
        "split_hash": dict,
        "versions": dict,
        "metrics": dict,
        "costs": dict,
        "outputs": list,
        "replay_of": (str, type(None)),
    }
    for name, kind in expected.items():
        if not isinstance(data.get(name), kind):
            raise ConfigError(
                f"run record '{path}' has no valid '{name}' field (got {data.get(name)!r})"
            )
    for name in ("name", "fingerprint"):
        if not isinstance(data["backbone"].get(name), str):
            raise ConfigError(f"run record '{path}' has no backbone '{name}'")
    if data["kind"] not in KINDS:
        raise ConfigError(f"run record '{path}' has kind '{data['kind']}', not one of {KINDS}")
    return RunRecord(**{f.name: data[f.name] for f in fields(RunRecord)})


def list_records(runs: str | Path | None = None, kind: str | None = None) -> list[RunRecord]:
    """Every record in `runs` (default `runs_dir()`), sorted by id (oldest first). Unreadable
    files are skipped with a warning."""
    folder = Path(runs if runs is not None else runs_dir())
    if not folder.is_dir():
        return []
    records = []
    for path in sorted(folder.glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            record = load_record(path)
        except ConfigError as err:
            log.warning("skipping %s", err)
            continue
        if kind is None or record.kind == kind:
            records.append(record)
    return sorted(records, key=lambda r: r.id)


def experiment_records(refs: Sequence[str], runs: str | Path | None = None) -> list[RunRecord]:
    """The records named by `refs` (ids or paths), each with its replays (`frozenlm rerun`)."""
    records = [load_record(ref, runs) for ref in refs]
    ids = {r.id for r in records}
    replays = [r for r in list_records(runs) if r.replay_of in ids and r.id not in ids]
    return records + replays
