"""Prometheus metrics of the router and its control plane (one registry per app)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
PENDING_MAX = 256  # answered requests buffered before they are counted in one pass


class _FlushFirst:
    """A collector with no metrics of its own, registered first: every collection (a scrape,
    ``get_sample_value``) counts the buffered requests before the counters are read."""

    def __init__(self, flush: Callable[[], None]) -> None:
        self._flush = flush

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        self._flush()
        return ()


class RouterMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._pending: list[tuple[str, str, int, float]] = []
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        r.register(_FlushFirst(self.flush))
        self.requests = Counter(
            "llmi_requests",
            "Requests answered, by model, endpoint and status.",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "llmi_request_seconds",
            "Time to the last byte, including any model load.",
            ["model", "endpoint"],
            registry=r,
            buckets=BUCKETS,
        )
        self.loads = Counter(
            "llmi_model_loads", "Model loads, by result (ok, failed).", ["model", "result"], registry=r
        )
        self.load_seconds = Histogram(
            "llmi_model_load_seconds", "Time from spawning a runtime to ready.", ["model"], registry=r, buckets=BUCKETS
        )
        self.evictions = Counter(
            "llmi_model_evictions", "Models unloaded to make room for another.", ["model"], registry=r
        )
        self.crashes = Counter("llmi_runtime_crashes", "Runtimes that exited on their own.", ["model"], registry=r)
        self.queue = Gauge("llmi_queue_length", "Requests waiting for their model to be ready.", ["model"], registry=r)
        self.in_flight = Gauge("llmi_in_flight", "Requests being answered by a runtime.", ["model"], registry=r)
        self.state = Gauge("llmi_model_state", "1 for the state each model is in.", ["model", "state"], registry=r)
        self.planned_bytes = Gauge("llmi_memory_planned_bytes", "Memory held by loaded and loading models.", registry=r)
        self.budget_bytes = Gauge("llmi_memory_budget_bytes", "The memory budget models are planned into.", registry=r)
        self.memory_estimated = Gauge(
            "llmi_model_memory_estimated_bytes", "The catalog's estimate of a model's memory.", ["model"], registry=r
        )
        self.memory_measured = Gauge(
            "llmi_model_memory_measured_bytes",
            "What a model's runtime reported holding after its load (PSS on CPU, allocator plus context on a GPU).",
            ["model"],
            registry=r,
        )

    def answered(self, model: str, path: str, status: int, seconds: float) -> None:
        """One request answered: counted in ``llmi_requests`` and ``llmi_request_seconds`` at the next
        collection, or with the others once ``PENDING_MAX`` wait. On the front's fast path, a
        Counter's and a Histogram's update in place cost a fifth of the router's own CPU per
        request (a cold cache at concurrency 1); an append costs next to nothing."""
        pending = self._pending
        pending.append((model, path, status, seconds))
        if len(pending) >= PENDING_MAX:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for model, path, status, seconds in pending:
            key = (model, path, status)
            series = self._series.get(key)
            if series is None:  # kept: catalog names, paths and statuses bound them
                series = self._series[key] = (
                    self.requests.labels(model, path, str(status)),
                    self.latency.labels(model, path),
                )
            series[0].inc()
            series[1].observe(seconds)
