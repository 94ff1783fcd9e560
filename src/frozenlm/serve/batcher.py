"""The micro-batcher: requests for every served model gathered into shared forwards.

One worker thread owns the backbone. Requests wait in one bounded queue (full: 429); when the
worker is idle it gathers for `gather_ms` (or until `max_tokens` prompt tokens are waiting),
then in each round:
- classification requests of every model are scored together (`score_rows`: each row its own
  plug-in's conditioning and its own task's label candidates, batches within the token budget);
- new generation requests are prefilled and join the running `DecodeBatch` (continuous
  batching: at most `max_rows` rows decode at once, the rest wait their turn);
- every decoding row gets one token in one forward; rows that end leave it.
Requests for a model that was unloaded while they waited get a clean 404; a request whose
client went away is dropped at the next round. `policy` exists to measure what mixing buys:
"per-task" batches only rows of one model together (one queue and one decode batch per model,
stepped in turn: what a server must do when adapters cannot share a forward), "single" runs one
request at a time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from frozenlm.backbone import Backbone
from frozenlm.engine.batching import BatchBudget, score_rows
from frozenlm.engine.continuous import DecodeBatch, Step
from frozenlm.engine.generation import GenerationConfig
from frozenlm.engine.scoring import CandidateScores
from frozenlm.errors import FrozenLMError
from frozenlm.serve.models import ModelTable, Prompted, ServeError, engine_rows

log = logging.getLogger(__name__)


class Policy(StrEnum):
    """Which rows may share a forward."""

    MIXED = "mixed"
    """Rows of every model together (the point of a frozen backbone)."""
    PER_TASK = "per-task"
    """Only rows of one model together."""
    SINGLE = "single"
    """One request at a time."""


@dataclass(frozen=True)
class BatcherConfig:
    """How requests are gathered into forwards."""

    gather_ms: float = 5.0
    """How long an idle worker waits for more requests after the first one."""
    max_tokens: int = 4096
    """Padded tokens per classification forward; gathering stops once this many prompt tokens
    wait."""
    max_rows: int = 32
    """Rows per classification forward, and rows decoding at once."""
    max_queue: int = 256
    """Requests waiting beyond this are refused (429)."""
    max_padding: float = 0.25
    """At most this share of a classification batch is padding: rows of short and long
    tasks' prompts go in different forwards (see `BatchBudget.padding`)."""
    policy: Policy = Policy.MIXED

    def __post_init__(self) -> None:
        if self.gather_ms < 0 or self.max_tokens < 1 or self.max_rows < 1 or self.max_queue < 1:
            raise ServeError(400, f"batcher settings must be positive: {self}")


class Listener:
    """What the batcher reports to (the server's metrics); this one reports nothing."""

    def batch(self, kind: str, rows: int) -> None: ...

    def queue(self, depth: int) -> None: ...

    def generated(self, model: str, tokens: int) -> None: ...


@dataclass
class Job:
    """One request: its rows, the event loop to answer on, and whether its client left."""

    items: list[Prompted]
    loop: asyncio.AbstractEventLoop
    cancelled: bool = False
    submitted: float = field(default_factory=time.monotonic)

    @property
    def tokens(self) -> int:
        return sum(len(item.prompt.ids) for item in self.items)

    def group(self, policy: Policy) -> str:
        return self.items[0].model.name if policy is Policy.PER_TASK else ""

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the event loop is closed: nobody is waiting any more
            self.cancelled = True

    def fail(self, error: Exception) -> None:
        raise NotImplementedError


@dataclass
class ClassifyJob(Job):
    """Rank classification of each row over its model's labels."""

    future: asyncio.Future[list[CandidateScores]] | None = None

    def __post_init__(self) -> None:
        self.future = self.loop.create_future()

    def finish(self, scores: list[CandidateScores]) -> None:
        self._call(_resolve, self.future, scores, None)

    def fail(self, error: Exception) -> None:
        self._call(_resolve, self.future, None, error)


@dataclass
class GenerateJob(Job):
    """Generation of each row (a choice) with its config; steps stream to `events`."""

    configs: list[GenerationConfig] = field(default_factory=list)
    events: asyncio.Queue[tuple[int, Step] | Exception | None] = field(
        default_factory=asyncio.Queue
    )
    open_choices: set[int] = field(default_factory=set)

    def emit(self, choice: int, step: Step) -> None:
        self._call(self.events.put_nowait, (choice, step))
        if step.finished is not None:
            self.open_choices.discard(choice)
            if not self.open_choices:
                self._call(self.events.put_nowait, None)

    def fail(self, error: Exception) -> None:
        self._call(self.events.put_nowait, error)


def _resolve(future: asyncio.Future[Any] | None, value: Any, error: Exception | None) -> None:
    if future is None or future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


class Batcher:
    """The worker thread that runs every request's rows on the backbone."""

    def __init__(
        self,
        backbone: Backbone,
        table: ModelTable,
        config: BatcherConfig = BatcherConfig(),
        listener: Listener | None = None,
    ) -> None:
        self.backbone = backbone
        self.table = table
        self.config = config
        self.listener = listener or Listener()
        self._queue: deque[Job] = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._waiting: deque[GenerateJob] = deque()  # admitted to no decode batch yet
        self._decoders: dict[str, DecodeBatch] = {}
        self._slots: dict[tuple[str, int], tuple[GenerateJob, int]] = {}  # (batch, slot) -> job
        self._running: list[GenerateJob] = []

    # ------------------------------------------------------------------ the server's side
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="frozenlm-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued and running, then end the worker."""
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, job: Job) -> None:
        """Queue `job` (429 when the queue is full, 503 once stopping)."""
        with self._wake:
            if self._stopping:
                raise ServeError(503, "the server is shutting down")
            if len(self._queue) >= self.config.max_queue:
                raise ServeError(
                    429, f"the queue is full ({self.config.max_queue} requests waiting)"
                )
            self._queue.append(job)
            self.listener.queue(len(self._queue))
            self._wake.notify_all()

    @property
    def depth(self) -> int:
        """Requests waiting in the queue."""
        return len(self._queue)

    # ------------------------------------------------------------------ the worker
    def _run(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                break
            try:
                self._round(jobs)
            except Exception as err:  # a bug must not kill the server: fail what ran
                log.exception("batcher round failed")
                for job in [*jobs, *self._running]:
                    job.fail(ServeError(500, f"internal error: {type(err).__name__}"))
                self._reset_decoding()
        for job in [*self._queue, *self._waiting]:
            job.fail(ServeError(503, "the server stopped before this request ran"))

    def _busy(self) -> bool:
        return bool(self._running or self._waiting)

    def _take(self) -> list[Job] | None:
        """The jobs for this round: none waits while rows decode; an idle worker blocks for
        the first and gathers more for `gather_ms`. None: stopped with nothing left."""
        config = self.config
        with self._wake:
            if not self._busy():
                while not self._queue and not self._stopping:
                    self._wake.wait()
                if not self._queue and self._stopping:
                    return None
                if config.policy is not Policy.SINGLE:
                    deadline = time.monotonic() + config.gather_ms / 1000
                    while (
                        sum(j.tokens for j in self._queue) < config.max_tokens
                        and len(self._queue) < config.max_rows
                        and (left := deadline - time.monotonic()) > 0
                        and not self._stopping
                    ):
                        self._wake.wait(left)
            if config.policy is Policy.SINGLE:
                jobs = [self._queue.popleft()] if self._queue and not self._busy() else []
            else:
                jobs = list(self._queue)
                self._queue.clear()
            self.listener.queue(len(self._queue))
            return jobs

    def _round(self, jobs: Sequence[Job]) -> None:
        live = [job for job in jobs if not job.cancelled and self._models_live(job)]
        classify = [job for job in live if isinstance(job, ClassifyJob)]
        if self._busy() or any(isinstance(job, GenerateJob) for job in live):
            classify = self._ration(classify)  # rows decoding wait for no more than this
        for group in self._groups(classify):
            self._classify(group)
        self._waiting.extend(job for job in live if isinstance(job, GenerateJob))
        self._drop_cancelled()
        self._admit()
        self._step()

    def _ration(self, jobs: list[ClassifyJob]) -> list[ClassifyJob]:
        """The classification jobs of this round while rows decode: about `max_rows` rows'
        worth (at least one job); the rest go back to the front of the queue, so a decoding
        step comes between every such share."""
        rows, cut = 0, len(jobs)
        for i, job in enumerate(jobs):
            if i and rows + len(job.items) > self.config.max_rows:
                cut = i
                break
            rows += len(job.items)
        with self._wake:
            self._queue.extendleft(reversed(jobs[cut:]))
        return jobs[:cut]

    def _models_live(self, job: Job) -> bool:
        """Whether every model the job names is still served (an evicted one reloads)."""
        for item in job.items:
            if item.model.removed:
                job.fail(ServeError(404, f"model '{item.model.name}' was unloaded"))
                return False
            try:
                if item.model.kind != "backbone" and item.model.plugin is None:
                    self.table.get(item.model.name)  # reloads its weights
            except FrozenLMError as err:
                job.fail(err if isinstance(err, ServeError) else ServeError(400, str(err)))
                return False
        return True

    def _groups(self, jobs: Sequence[Job]) -> list[list[Job]]:
        if self.config.policy is Policy.SINGLE:
            return [[job] for job in jobs]
        groups: dict[str, list[Job]] = {}
        for job in jobs:
            groups.setdefault(job.group(self.config.policy), []).append(job)
        return list(groups.values())

    def _classify(self, jobs: Sequence[Job]) -> None:
        items = [item for job in jobs for item in job.items]
        c = self.config
        try:
            rows = engine_rows(items)
            candidates = [item.model.candidates() for item in items]
            budget = BatchBudget(c.max_tokens, c.max_rows, c.max_padding)
            scores = score_rows(self.backbone, rows, candidates, budget, desc="serve classify")
        except FrozenLMError as err:
            for job in jobs:
                job.fail(err if isinstance(err, ServeError) else ServeError(400, str(err)))
            return
        self.listener.batch("classify", len(rows))
        start = 0
        for job in jobs:
            assert isinstance(job, ClassifyJob)
            job.finish(scores[start : start + len(job.items)])
            start += len(job.items)

    def _active_rows(self) -> int:
        return sum(len(d) for d in self._decoders.values())

    def _admit(self) -> None:
        """Prefill waiting generation jobs into their decode batch while rows are free."""
        limit = 1 if self.config.policy is Policy.SINGLE else self.config.max_rows
        while self._waiting:
            job = self._waiting[0]
            busy = self._active_rows()
            if busy and busy + len(job.items) > limit:
                return
            self._waiting.popleft()
            if job.cancelled:
                continue
            assert isinstance(job, GenerateJob)
            key = job.group(self.config.policy)
            decoder = self._decoders.setdefault(key, DecodeBatch(self.backbone))
            try:
                slots = decoder.add(engine_rows(job.items), job.configs)
            except (FrozenLMError, ValueError) as err:
                job.fail(err if isinstance(err, ServeError) else ServeError(400, str(err)))
                continue
            self.listener.batch("prefill", len(slots))
            job.open_choices = set(range(len(slots)))
            for choice, slot in enumerate(slots):
                self._slots[key, slot] = (job, choice)
            self._running.append(job)

    def _step(self) -> None:
        """One token for every decoding row (per-task: one forward per model, in turn)."""
        for key, decoder in self._decoders.items():
            if not len(decoder):
                continue
            self.listener.batch("decode", len(decoder))
            for step in decoder.step():
                job, choice = self._slots[key, step.slot]
                if step.token is not None:
                    self.listener.generated(job.items[choice].model.name, 1)
                job.emit(choice, step)
                if step.finished is not None:
                    del self._slots[key, step.slot]
        self._running = [job for job in self._running if job.open_choices]
        self._decoders = {k: d for k, d in self._decoders.items() if len(d)}

    def _drop_cancelled(self) -> None:
        gone = [s for s, (job, _) in self._slots.items() if job.cancelled]
        if gone:
            for key, decoder in self._decoders.items():
                decoder.cancel([slot for k, slot in gone if k == key])
            for slot in gone:
                del self._slots[slot]
            self._running = [job for job in self._running if not job.cancelled]

    def _reset_decoding(self) -> None:
        self._decoders, self._slots, self._running = {}, {}, []
