"""Prometheus metrics of one runtime, in a registry of its own (one per app, so tests and
several apps in one process never collide)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from llmi_runtime.state import RuntimeState


class RuntimeMetrics:
    def __init__(self, state: RuntimeState) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "llmi_runtime_requests",
            "Requests answered, by endpoint and status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "llmi_runtime_request_seconds",
            "Time to the last byte of a response.",
            ["endpoint"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.prompt_tokens = Counter(
            "llmi_runtime_prompt_tokens", "Input tokens processed.", ["endpoint"], registry=self.registry
        )
        self.completion_tokens = Counter("llmi_runtime_completion_tokens", "Tokens generated.", registry=self.registry)
        self.batches = Counter(
            "llmi_runtime_batches",
            "Batched model calls, by kind (chat decode steps, encoder calls).",
            ["kind"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "llmi_runtime_batch_size",
            "Items in one batched model call (chat: sequences; encoders: texts or images).",
            ["kind"],
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
        )
        self.batch_requests = Histogram(
            "llmi_runtime_batch_requests",
            "Requests merged into one batched encoder call.",
            ["kind"],
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64),
        )
        self.registry.register(_StateCollector(state))

    def observe_batch(self, kind: str, items: int, requests: int | None = None) -> None:
        """One batched model call; thread-safe (the chat batcher calls it from the model's thread)."""
        self.batches.labels(kind).inc()
        self.batch_size.labels(kind).observe(items)
        if requests is not None:
            self.batch_requests.labels(kind).observe(requests)


class _StateCollector(Collector):
    def __init__(self, state: RuntimeState) -> None:
        self.state = state

    def collect(self) -> Iterable[Metric]:
        ready = GaugeMetricFamily("llmi_runtime_ready", "1 when the model is loaded.", labels=["model", "type"])
        ready.add_metric([self.state.name, self.state.model_type.value], float(self.state.phase == "ready"))
        yield ready
        queue = GaugeMetricFamily("llmi_runtime_queue", "Work waiting or running on the model.", labels=["kind"])
        for kind, value in self.state.worker.load().items():
            queue.add_metric([kind], float(value))
        yield queue
        if self.state.load_seconds is not None:
            yield GaugeMetricFamily(
                "llmi_runtime_load_seconds", "Time the model took to load.", value=self.state.load_seconds
            )
        estimated = GaugeMetricFamily(
            "llmi_model_memory_estimated_bytes", "The catalog's estimate before loading.", labels=["model"]
        )
        if self.state.estimated_bytes is not None:
            estimated.add_metric([self.state.name], float(self.state.estimated_bytes))
        yield estimated
        if self.state.engine is not None:
            info = self.state.engine.info()
            yield GaugeMetricFamily(
                "llmi_runtime_memory_bytes", "Memory the model's tensors use.", value=float(info["memory_bytes"])
            )
            measured = GaugeMetricFamily(
                "llmi_model_memory_measured_bytes",
                "What the runtime holds against its budget: PSS on CPU, allocator plus context on a GPU.",
                labels=["model"],
            )
            measured.add_metric([self.state.name], float(self.state.probe.read().measured_bytes))
            yield measured
