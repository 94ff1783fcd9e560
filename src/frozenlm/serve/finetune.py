"""Prompt tuning as an API: OpenAI-shaped files and fine-tuning jobs that train a plug-in on the
served backbone and then serve it.

`/v1/files` takes a JSONL training file: every line `{"input": ..., "label": ...}` (a
classification task, each label its own verbalizer) or every line `{"prompt": ...,
"completion": ...}` (a generation task); a bad line is refused with its number and the reason.
`/v1/fine_tuning/jobs` starts a job: `method.type` is the plug-in ("soft-prompt", "prefix" for
a deep prompt, "id-pt"), `method.<type>.hyperparameters` (or the top-level `hyperparameters`)
take `n_epochs`, `batch_size` and `learning_rate_multiplier` (times the method's published
learning rate). A job runs the one training loop in a worker process, one job at a time, so
serving never waits for it; its events (step, loss, dev metric) are written as they happen and
its plug-in is saved under the plug-in root and served as a new model (`fine_tuned_model`)
when it finishes. A job can be cancelled; a failed job says why in `error` and its events.
Everything lives under `<plug-in root>/.frozenlm/` (files, jobs: JSON written atomically), so a
restarted server serves the finished jobs' plug-ins again and marks unfinished ones failed.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from frozenlm.atomic import atomic_write_bytes, atomic_write_json
from frozenlm.serve.models import NAME, ModelTable, ServeError

log = logging.getLogger(__name__)

METHODS = ("soft-prompt", "prefix", "id-pt")
"""Plug-in methods a job may train."""
HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
MIN_LINES = 8
FINISHED = ("succeeded", "failed", "cancelled")


def parse_training_file(data: bytes, filename: str) -> tuple[str, int]:
    """The task kind ("classification" or "generation") of a JSONL training file and its
    line count; any bad line is a 400 naming it."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ServeError(400, f"'{filename}' is not UTF-8 text (byte {err.start})") from None
    kind = None
    count = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ServeError(400, f"'{filename}' line {number}: not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ServeError(400, f"'{filename}' line {number}: expected a JSON object")
        keys = set(row)
        this = (
            "classification"
            if keys == {"input", "label"}
            else "generation"
            if keys == {"prompt", "completion"}
            else None
        )
        if this is None:
            raise ServeError(
                400,
                f"'{filename}' line {number}: expected the keys input and label, or prompt and "
                f"completion; found {', '.join(sorted(keys)) or 'none'}",
            )
        if kind is not None and this != kind:
            raise ServeError(400, f"'{filename}' line {number}: mixes {this} rows with {kind} rows")
        for key, value in row.items():
            if not isinstance(value, str) or not value.strip():
                raise ServeError(400, f"'{filename}' line {number}: '{key}' must be non-empty text")
        kind = this
        count += 1
    if kind is None or count < MIN_LINES:
        raise ServeError(400, f"'{filename}' has {count} examples; at least {MIN_LINES} train")
    return kind, count


@dataclass
class _Running:
    job: str
    process: Any  # multiprocessing.Process


class FineTuning:
    """Files, jobs and the worker process that trains them, under `table`'s plug-in root."""

    def __init__(self, table: ModelTable, backbone_ref: str, device: str, dtype: str) -> None:
        if table.root is None:
            raise ServeError(403, "fine-tuning needs a plug-in root (--plugin-root)")
        self.table = table
        self.backbone_ref, self.device, self.dtype = backbone_ref, device, dtype
        self.home = table.root / ".frozenlm"
        self.files = self.home / "files"
        self.jobs = self.home / "jobs"
        self.files.mkdir(parents=True, exist_ok=True)
        self.jobs.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._running: _Running | None = None
        self._stop = threading.Event()
        self._pending = threading.Event()  # a job may be queued: the worker looks again
        self._thread: threading.Thread | None = None
        self._recover()

    # ------------------------------------------------------------------ files
    def add_file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        if purpose != "fine-tune":
            raise ServeError(400, f"purpose must be 'fine-tune', not '{purpose}'")
        kind, lines = parse_training_file(data, filename)
        ident = f"file-{uuid.uuid4().hex[:24]}"
        atomic_write_bytes(self.files / f"{ident}.jsonl", data)
        meta = {
            "id": ident,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename[:200],
            "purpose": purpose,
            "status": "processed",
            "frozenlm": {"kind": kind, "examples": lines},
        }
        atomic_write_json(self.files / f"{ident}.json", meta)
        return meta

    def file(self, ident: str) -> dict[str, Any]:
        path = self.files / f"{ident}.json"
        if not _safe_id(ident, "file-") or not path.is_file():
            raise ServeError(404, f"no file '{ident}'")
        return dict(json.loads(path.read_text()))

    def list_files(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(self.files.glob("file-*.json"))]

    def delete_file(self, ident: str) -> dict[str, Any]:
        self.file(ident)
        for suffix in (".json", ".jsonl"):
            (self.files / f"{ident}{suffix}").unlink(missing_ok=True)
        return {"id": ident, "object": "file", "deleted": True}

    # ------------------------------------------------------------------ jobs
    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """Queue a job (400 with the reason for a bad request)."""
        model = body.get("model")
        if model != self.table.base.name:
            raise ServeError(
                400, f"model must be the served backbone '{self.table.base.name}', not {model!r}"
            )
        train = self.file(str(body.get("training_file")))
        validation = body.get("validation_file")
        if validation is not None:
            valid = self.file(str(validation))
            if valid["frozenlm"]["kind"] != train["frozenlm"]["kind"]:
                raise ServeError(400, "the validation file's rows are not the training file's kind")
        method, hyper = _method(body)
        suffix = body.get("suffix")
        if suffix is not None and (not isinstance(suffix, str) or not NAME.fullmatch(suffix)):
            raise ServeError(400, "suffix must be up to 64 letters, digits, '.', '_' or '-'")
        seed = body.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31:
            raise ServeError(400, "seed must be an integer from 0 to 2**31 - 1")
        ident = f"ftjob-{uuid.uuid4().hex[:24]}"
        name = f"ft-{suffix or method}-{ident[6:14]}"
        job = {
            "id": ident,
            "object": "fine_tuning.job",
            "created_at": int(time.time()),
            "finished_at": None,
            "model": model,
            "fine_tuned_model": None,
            "organization_id": "frozenlm",
            "status": "queued",
            "training_file": train["id"],
            "validation_file": validation,
            "hyperparameters": hyper,
            "method": {"type": method},
            "result_files": [],
            "trained_tokens": None,
            "error": None,
            "seed": seed,
            "frozenlm": {"name": name, "kind": train["frozenlm"]["kind"]},
        }
        (self.jobs / ident).mkdir()
        self._save(job)
        self._event(ident, "info", f"job queued: {method} on {train['id']}")
        self._pending.set()
        self.start()
        return job

    def get(self, ident: str) -> dict[str, Any]:
        path = self.jobs / ident / "job.json"
        if not _safe_id(ident, "ftjob-") or not path.is_file():
            raise ServeError(404, f"no fine-tuning job '{ident}'")
        return dict(json.loads(path.read_text()))

    def list_jobs(self) -> list[dict[str, Any]]:
        jobs = [json.loads(p.read_text()) for p in self.jobs.glob("ftjob-*/job.json")]
        return sorted(jobs, key=lambda j: -j["created_at"])

    def events(self, ident: str) -> list[dict[str, Any]]:
        self.get(ident)
        path = self.jobs / ident / "events.jsonl"
        lines = path.read_text().splitlines() if path.is_file() else []
        return [json.loads(line) for line in reversed(lines) if line.strip()]  # newest first

    def cancel(self, ident: str) -> dict[str, Any]:
        with self._lock:
            job = self.get(ident)
            if job["status"] in FINISHED:
                raise ServeError(409, f"job '{ident}' has already {job['status']}")
            running = self._running
            if running is not None and running.job == ident:
                running.process.terminate()
                running.process.join(30)
                self._running = None
            self._finish(job, "cancelled", None)
            return self.get(ident)

    # ------------------------------------------------------------------ the worker
    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="frozenlm-jobs", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._pending.set()  # wake an idle worker
        with self._lock:
            if self._running is not None:
                self._running.process.terminate()
        if self._thread is not None:
            self._thread.join(30)

    def _loop(self) -> None:
        """Start the oldest queued job when none runs; while one runs, watch its process.
        Idle, it sleeps until `create` (or `stop`) wakes it: no polling of the job files."""
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no server state
        while not self._stop.is_set():
            with self._lock:
                if self._running is not None and not self._running.process.is_alive():
                    self._collect(self._running)
                    self._running = None
                    self._pending.set()  # another job may be waiting
                if self._running is None and self._pending.is_set():
                    self._pending.clear()
                    queued = [j for j in self.list_jobs() if j["status"] == "queued"]
                    if queued:
                        job = queued[-1]  # the oldest
                        job["status"] = "running"
                        self._save(job)
                        process = context.Process(
                            target=run_job,
                            args=(str(self.jobs / job["id"]), self._spec(job)),
                            daemon=True,
                        )
                        process.start()
                        self._running = _Running(job["id"], process)
                running = self._running is not None
            if running:
                self._stop.wait(0.2)
            else:
                self._pending.wait()

    def _spec(self, job: dict[str, Any]) -> dict[str, Any]:
        train = self.files / f"{job['training_file']}.jsonl"
        valid = job["validation_file"] and self.files / f"{job['validation_file']}.jsonl"
        return {
            "backbone": self.backbone_ref,
            "device": self.device,
            "dtype": self.dtype,
            "method": job["method"]["type"],
            "hyperparameters": job["hyperparameters"],
            "kind": job["frozenlm"]["kind"],
            "train": str(train),
            "validation": str(valid) if valid else None,
            "seed": job["seed"],
            "out": str(self.table.root / job["frozenlm"]["name"]),  # type: ignore[operator]
        }

    def _collect(self, running: _Running) -> None:
        job = self.get(running.job)
        if job["status"] in FINISHED:
            return
        result_path = self.jobs / running.job / "result.json"
        result = json.loads(result_path.read_text()) if result_path.is_file() else None
        if result is None or "error" in result:
            message = (result or {}).get("error") or (
                f"the training process ended with exit code {running.process.exitcode}"
            )
            self._finish(job, "failed", message)
            return
        try:
            models = self.table.add(result["out"], job["frozenlm"]["name"])
        except ServeError as err:
            self._finish(job, "failed", f"the trained plug-in could not be served: {err}")
            return
        job["fine_tuned_model"] = models[0].name
        job["trained_tokens"] = result.get("trained_tokens")
        self._finish(job, "succeeded", None)

    def _finish(self, job: dict[str, Any], status: str, error: str | None) -> None:
        job["status"], job["finished_at"] = status, int(time.time())
        if error is not None:
            job["error"] = {"code": "training_failed", "message": error, "param": None}
        self._save(job)
        level = "error" if status == "failed" else "info"
        self._event(job["id"], level, f"job {status}" + (f": {error}" if error else ""))

    def _recover(self) -> None:
        """After a restart: serve finished jobs' plug-ins again, fail unfinished jobs."""
        for job in self.list_jobs():
            if job["status"] == "succeeded" and job["fine_tuned_model"]:
                folder = self.table.root / job["frozenlm"]["name"]  # type: ignore[operator]
                try:
                    self.table.add(folder, job["frozenlm"]["name"])
                except ServeError as err:
                    log.warning("fine-tuned model %s is not served: %s", job["id"], err)
            elif job["status"] in ("queued", "running"):
                self._finish(job, "failed", "the server restarted before the job finished")

    def _save(self, job: dict[str, Any]) -> None:
        atomic_write_json(self.jobs / job["id"] / "job.json", job)

    def _event(self, ident: str, level: str, message: str, data: Any = None) -> None:
        _append_event(self.jobs / ident, level, message, data)


def _append_event(folder: Path, level: str, message: str, data: Any = None) -> None:
    event = {
        "id": f"ftevent-{uuid.uuid4().hex[:24]}",
        "object": "fine_tuning.job.event",
        "created_at": int(time.time()),
        "level": level,
        "message": message,
        "data": data,
        "type": "metrics" if data else "message",
    }
    with (folder / "events.jsonl").open("a") as out:
        out.write(json.dumps(event) + "\n")


def _safe_id(ident: str, prefix: str) -> bool:
    rest = ident[len(prefix) :]
    return ident.startswith(prefix) and len(rest) == 24 and rest.isalnum()


def _method(body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The plug-in method and hyperparameters of a job request."""
    method = body.get("method") or {"type": "soft-prompt"}
    if not isinstance(method, dict) or method.get("type") not in METHODS:
        raise ServeError(400, f"method.type must be one of {', '.join(METHODS)}")
    kind = method["type"]
    inner = method.get(kind) or {}
    hyper = dict(body.get("hyperparameters") or {})
    hyper |= dict((inner.get("hyperparameters") if isinstance(inner, dict) else None) or {})
    unknown = sorted(set(hyper) - set(HYPERPARAMETERS))
    if unknown:
        raise ServeError(400, f"unknown hyperparameters {', '.join(unknown)}; known: "
                         f"{', '.join(HYPERPARAMETERS)}")  # fmt: skip
    limits = {"n_epochs": (1, 50), "batch_size": (1, 256), "learning_rate_multiplier": (0.01, 100)}
    for key, value in hyper.items():
        low, high = limits[key]
        if value == "auto":
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise ServeError(400, f"hyperparameters.{key} must be 'auto' or from {low} to {high}")
    return kind, hyper


def run_job(folder: str, spec: dict[str, Any]) -> None:
    """The worker process: write the task, train the plug-in with the one loop, report."""
    from frozenlm.backbone import resolve_backbone
    from frozenlm.plugins.registry import recipe
    from frozenlm.tasks import load_task
    from frozenlm.training.config import TrainConfig
    from frozenlm.training.loop import train_plugin

    home = Path(folder)
    try:
        task_dir = home / "task"
        task_dir.mkdir(exist_ok=True)
        data: Any = "train.jsonl"
        rows = [
            json.loads(line)
            for line in Path(spec["train"]).read_text().splitlines()
            if line.strip()
        ]
        _write_rows(task_dir / "train.jsonl", rows)
        if spec["validation"]:
            valid = [
                json.loads(x)
                for x in Path(spec["validation"]).read_text().splitlines()
                if x.strip()
            ]
            _write_rows(task_dir / "test.jsonl", valid)
            data = {"train": "train.jsonl", "test": "test.jsonl"}
        if spec["kind"] == "classification":
            labels = sorted({r["label"] for r in rows})
            task = {"name": "task", "data": data, "input_fields": ["input"],
                    "label_field": "label", "labels": {lab: lab for lab in labels},
                    "instruction": f"Answer with one of: {', '.join(labels)}."}  # fmt: skip
        else:
            task = {"name": "task", "data": data, "input_fields": ["prompt"],
                    "label_field": "completion", "kind": "generation",
                    "instruction": "Complete the text."}  # fmt: skip
        atomic_write_json(task_dir / "task.json", task)
        loaded = load_task(str(task_dir / "task.json"), seed=spec["seed"])
        hyper = spec["hyperparameters"]
        batch = hyper.get("batch_size", "auto")
        batch = 8 if batch == "auto" else int(batch)
        epochs = hyper.get("n_epochs", "auto")
        epochs = 3 if epochs == "auto" else float(epochs)
        steps = max(1, math.ceil(epochs * len(loaded.train) / batch))
        base = recipe(spec["method"])
        lr = float(base.get("lr", TrainConfig.lr)) * float(
            1 if hyper.get("learning_rate_multiplier", "auto") == "auto"
            else hyper["learning_rate_multiplier"]
        )  # fmt: skip
        config = TrainConfig(steps=steps, batch_size=batch, eval_every=max(1, steps // 4),
                             seed=spec["seed"], **{k: v for k, v in base.items() if k != "lr"},
                             lr=lr)  # fmt: skip
        backbone = resolve_backbone(spec["backbone"], device=spec["device"], dtype=spec["dtype"])
        _append_event(home, "info", f"training {spec['method']}: {steps} steps of {batch}")

        def on_event(event: dict[str, Any]) -> None:
            message = f"step {event['step']}: loss {event['loss']:.4f}"
            if "dev" in event:
                message += f", dev {event['dev']:.4f}"
            _append_event(home, "info", message, event)

        result = train_plugin(backbone, [str(task_dir / "task.json")], spec["method"], {},
                              config, spec["out"], on_event=on_event)  # fmt: skip
        atomic_write_json(home / "result.json", {"out": spec["out"], "best": result.best_metric,
                          "trained_tokens": None})  # fmt: skip
    except Exception as err:  # told to the server as the job's error
        atomic_write_json(home / "result.json", {"error": f"{type(err).__name__}: {err}"})
        raise SystemExit(1) from None


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())
