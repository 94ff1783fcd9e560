"""The server's metrics in Prometheus' text format (`/metrics`), one registry per app.

Requests by route, model and status; request latency; rows per forward by kind (classify,
prefill, decode); queue depth; tokens generated per model, in total and per second over the
last minute; plug-ins loaded.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from frozenlm.serve.batcher import Listener

WINDOW_S = 60.0
"""Tokens per second are averaged over this many seconds."""


class _TokenRate(Collector):
    """Tokens per second per model over the last `WINDOW_S` seconds."""

    def __init__(self) -> None:
        self._events: dict[str, deque[tuple[float, int]]] = defaultdict(deque)
        self._lock = threading.Lock()

    def add(self, model: str, tokens: int) -> None:
        with self._lock:
            self._events[model].append((time.monotonic(), tokens))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "frozenlm_tokens_per_second",
            f"tokens generated per second over the last {WINDOW_S:.0f} s",
            labels=["model"],
        )
        now = time.monotonic()
        with self._lock:
            for model, events in self._events.items():
                while events and events[0][0] < now - WINDOW_S:
                    events.popleft()
                family.add_metric([model], sum(n for _, n in events) / WINDOW_S)
        yield family


class Metrics(Listener):
    """Counters the app and the batcher update; `render` is the /metrics body."""

    def __init__(self, loaded: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "frozenlm_requests", "requests answered", ["route", "model", "status"], registry=r
        )
        self.latency = Histogram(
            "frozenlm_request_seconds",
            "time from request to the last byte of its answer",
            ["route"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.rows = Histogram(
            "frozenlm_batch_rows",
            "rows per forward",
            ["kind"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.depth = Gauge("frozenlm_queue_depth", "requests waiting", registry=r)
        self.tokens = Counter(
            "frozenlm_generated_tokens", "tokens generated", ["model"], registry=r
        )
        plugins = Gauge("frozenlm_loaded_plugins", "plug-ins with weights in memory", registry=r)
        plugins.set_function(lambda: float(loaded()))
        self.rate = _TokenRate()
        r.register(self.rate)

    def batch(self, kind: str, rows: int) -> None:
        self.rows.labels(kind).observe(rows)

    def queue(self, depth: int) -> None:
        self.depth.set(depth)

    def generated(self, model: str, tokens: int) -> None:
        self.tokens.labels(model).inc(tokens)
        self.rate.add(model, tokens)

    def answered(self, route: str, model: str, status: int, seconds: float) -> None:
        self.requests.labels(route, model, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
