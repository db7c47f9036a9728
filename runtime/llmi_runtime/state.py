"""The one model this runtime serves, from loading to shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch

from llmi.errors import ModelNotFound, Unavailable, WrongModelType
from llmi.modeltypes import ENDPOINTS, ModelType
from llmi.settings import Settings
from llmi_runtime.admission import Admission
from llmi_runtime.batching import Batching, BatchPolicy, Preparer
from llmi_runtime.engines import load_engine, packed_linear
from llmi_runtime.engines.base import LoadOptions
from llmi_runtime.memory import MemoryProbe, estimated_bytes, probe_for
from llmi_runtime.metrics import RuntimeMetrics
from llmi_runtime.worker import ModelWorker, WorkerClosed

log = logging.getLogger("llmi.runtime")


class Phase(StrEnum):
    LOADING = "loading"
    READY = "ready"
    PARKED = "parked"  # weights in host memory (GPU only); POST /admin/wake brings them back
    FAILED = "failed"


@dataclass
class RuntimeState:
    name: str
    model_type: ModelType
    path: Path
    options: LoadOptions
    settings: Settings
    worker: ModelWorker = field(init=False)
    metrics: RuntimeMetrics = field(init=False)
    probe: MemoryProbe = field(init=False)
    estimated_bytes: int | None = field(init=False)
    admission: Admission = field(init=False)
    batching: Batching = field(init=False)
    prepare: Preparer = field(init=False)
    phase: Phase = Phase.LOADING
    engine: Any = None
    error: str | None = None
    load_seconds: float | None = None
    started: float = field(default_factory=time.monotonic)
    settled: asyncio.Event = field(default_factory=asyncio.Event)  # set once loading ends, either way
    created: int = field(default_factory=lambda: int(time.time()))
    packing: packed_linear.Progress | None = None  # set when the weights are being or were packed

    def __post_init__(self) -> None:
        self.worker = ModelWorker(max_streams=self.settings.max_concurrent_sequences)
        self.metrics = RuntimeMetrics(self)
        self.probe = probe_for(self.options)
        self.estimated_bytes = estimated_bytes(
            self.path, self.model_type, self.settings.vllm_max_model_len, self.probe.device
        )
        self.admission = Admission(self.settings.max_requests_per_model)
        policy = BatchPolicy(self.settings.batch_wait_ms / 1000, self.settings.max_batch_items)
        self.batching = Batching(self.worker, policy, self.metrics.observe_batch)
        self.prepare = Preparer()

    async def load(self) -> None:
        """Load on the worker thread, which then owns the model; then pack its weights there."""
        try:
            await self._load()
        finally:
            self.settled.set()
        await self._pack_weights()

    async def _pack_weights(self) -> None:
        """Once ready, a float32 CPU model's linear layers are packed one per worker turn, so the
        requests already being served wait for one layer's copy at most (``packed_linear``). Not
        for a model that runs its own code: it may read a linear's ``weight`` as a plain tensor."""
        model = getattr(self.engine, "model", None)
        on_cpu = getattr(self.engine, "placement", None) == "cpu"
        wanted = self.settings.cpu_packed_weights and on_cpu and not self.options.trust_remote_code
        if not (wanted and isinstance(model, torch.nn.Module) and packed_linear.available()):
            return
        self.packing = progress = packed_linear.Progress()
        t0 = time.monotonic()
        try:
            async for _ in self.worker.stream(packed_linear.pack_steps(model, progress)):
                pass
        except WorkerClosed:
            return
        except Exception as exc:  # the model keeps serving with what was packed
            log.warning("packing the weights of %s stopped: %s", self.name, exc)
            return
        log.info(
            "packed %d of %d linear layers of %s in %.2fs (%d activations fused)",
            progress.packed,
            progress.total,
            self.name,
            time.monotonic() - t0,
            progress.fused,
        )

    async def _load(self) -> None:
        log.info("loading %s (%s) from %s", self.name, self.model_type, self.path)
        t0 = time.monotonic()

        def load_on_worker() -> Any:
            self.probe.mark_init()  # the device's free memory before the weights arrive
            self.options.prepare_process()
            return load_engine(self.model_type, self.path, self.options, self.settings.vllm_max_model_len)

        try:
            self.engine = await self.worker.run(load_on_worker)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.phase = Phase.FAILED
            log.error("loading %s failed: %s", self.name, self.error)
            return
        self.load_seconds = time.monotonic() - t0
        batcher = getattr(self.engine, "batcher", None)
        if batcher is not None:  # chat: count its batched decode steps
            batcher.observe = lambda rows: self.metrics.observe_batch("chat", rows)
        self.phase = Phase.READY
        info = self.engine.info()
        log.info(
            "ready: %s in %.2fs on %s (%s, %s parameters)",
            self.name,
            self.load_seconds,
            info["device"],
            info["placement"],
            f"{info['parameters']:,}",
        )

    def engine_for(self, model: str, path: str) -> Any:
        """The engine, if ``model`` names this runtime's model and its type serves ``path``."""
        if model != self.name:
            raise ModelNotFound(model)
        if path not in ENDPOINTS[self.model_type]:
            raise WrongModelType(model, str(self.model_type), path)
        if self.phase is Phase.LOADING:
            raise Unavailable(f"Model '{model}' is still loading.", retry_after=2)
        if self.phase is Phase.PARKED:
            raise Unavailable(
                f"Model '{model}' is parked in host memory; wake it first.", retry_after=1, code="model_parked"
            )
        if self.phase is Phase.FAILED:
            raise Unavailable(f"Model '{model}' failed to load.", retry_after=30, code="model_failed")
        return self.engine

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": {"ready": "ok"}.get(self.phase, self.phase.value),
            "model": self.name,
            "type": self.model_type.value,
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 3),
            "pid": os.getpid(),
            "memory": self.probe.read().as_json(),
            "in_flight": self.admission.in_flight,
        }
        if self.packing is not None:
            body["packed_weights"] = self.packing.as_json()
        if self.engine is not None:
            body.update(self.engine.info())
        if self.error:
            body["error"] = self.error
        return body

    def close(self) -> None:
        self.batching.close()
        self.prepare.close()
        self.worker.close()
