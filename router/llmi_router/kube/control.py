"""The Kubernetes control plane: LocalModels are the truth, the operator does the work.

The router watches the LocalModels and the runtimes' EndpointSlices of its namespace. A request
goes to a model only when it is Ready, not draining, and one of its endpoints is ready (so the
first request after a scale-up never meets a pod that cannot answer yet). A model that is not
Ready is scaled up once (the scale subresource; every waiting request shares that patch) and
waited for; a draining one is waited for like a cold one. In-flight counts and the last request
time go to the operator through the Publisher.

The admin operations act on the LocalModel, and the operator does the rest: load is a request's
scale-up without the request, unload scales it to zero, pin sets ``spec.pinned`` (never evicted
for another model, never idle-unloaded). Phase changes seen on the watch are the model events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from llmi.errors import ModelNotFound, NotReadyInTime, TooManyRequests, Unavailable
from llmi.localmodel import PORT_NAME, PUBLIC_STATE, SERVICE_NAME_LABEL, LocalModelView, child_name
from llmi.protocol.models import ModelCard
from llmi.settings import Settings
from llmi_router.events import EventHub, ModelEvent
from llmi_router.kube.client import LOCALMODELS, SLICES, ApiException, KubeClient
from llmi_router.kube.events import event_kind, shown_phase
from llmi_router.kube.publish import Publisher, Timing, Wanted
from llmi_router.kube.watch import WatchHealth, reason, watch_forever
from llmi_router.metrics import RouterMetrics
from llmi_router.ports import OnceLease

log = logging.getLogger("llmi.router.kube")
FAILED_RETRY_S = 30.0


@dataclass
class _Model:
    """Everything this router knows and does for one LocalModel (owned by the event loop)."""

    view: LocalModelView
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0
    in_flight: int = 0
    last_request: float | None = None
    refused: set[str] = field(default_factory=set)  # endpoints that refused a connection
    scaling: asyncio.Task[tuple[int, str] | None] | None = None  # the scale-up in flight: (status, why) if it failed
    scaled_at: float | None = None


def slice_urls(obj: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """The Service an EndpointSlice belongs to and the URLs of its ready endpoints."""
    service = ((obj.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL, "")
    ports = obj.get("ports") or []
    port = next((p.get("port") for p in ports if p.get("name") == PORT_NAME), None) or (
        ports[0].get("port") if ports else None
    )
    if not port:
        return service, ()
    urls: list[str] = []
    for endpoint in obj.get("endpoints") or []:
        if (endpoint.get("conditions") or {}).get("ready") is False:
            continue  # absent means ready (the API's rule)
        for address in endpoint.get("addresses") or []:
            host = f"[{address}]" if ":" in address else address
            urls.append(f"http://{host}:{port}")
    return service, tuple(urls)


class KubeControlPlane:
    """Implements the router's ControlPlane port with LocalModels and the llmi operator."""

    def __init__(
        self,
        kube: KubeClient,
        settings: Settings,
        metrics: RouterMetrics,
        *,
        router_id: str = "router",
        timing: Timing | None = None,
        sync_timeout_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.metrics = metrics
        self.router_id = router_id
        self.sync_timeout_s = sync_timeout_s
        self.clock = clock
        self.now = now
        self.models: dict[str, _Model] = {}
        self.slices: dict[str, tuple[str, tuple[str, ...]]] = {}  # slice name -> (service, ready urls)
        self.health_of = {LOCALMODELS.what: WatchHealth(), SLICES.what: WatchHealth()}
        self.publisher = Publisher(router_id, kube.patch, self._wanted, timing or Timing(), now)
        self.events = EventHub()
        self._synced = asyncio.Event()
        self._started = False  # the first lists are in: models seen from now on are news
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start both watches and wait for their first lists, so that no request meets an empty
        view (a false 404) or a model without endpoints. Fails after ``sync_timeout_s``."""
        for resource, replace_all, apply in (
            (LOCALMODELS, self._replace_models, self._apply_model),
            (SLICES, self._replace_slices, self._apply_slice),
        ):
            health = self.health_of[resource.what]
            self._tasks.append(
                asyncio.create_task(watch_forever(self.kube, resource, replace_all, apply, health, self.clock))
            )
        try:
            async with asyncio.timeout(self.sync_timeout_s):
                while not all(h.synced for h in self.health_of.values()):
                    self._synced.clear()
                    await self._synced.wait()
        except TimeoutError:
            problems = "; ".join(
                f"{w}: {h.last_error or 'no answer'}" for w, h in self.health_of.items() if not h.synced
            )
            await self.close()
            where = f"{self.kube.server}, namespace {self.kube.namespace}"
            raise RuntimeError(f"cannot list LocalModels at {where}: {problems}") from None
        self._started = True
        previous = {
            name: r.in_flight for name, m in self.models.items() for r in m.view.reports if r.router == self.router_id
        }
        self.publisher.start(previous)
        log.info(
            "router %s watching LocalModels in namespace %s at %s: %s",
            self.router_id,
            self.kube.namespace,
            self.kube.server,
            ", ".join(sorted(self.models)) or "none yet",
        )

    def ready(self) -> bool:
        """/readyz: both watches listed and their last call succeeded."""
        return all(h.synced and h.healthy for h in self.health_of.values()) and not self._closing

    async def close(self) -> None:
        """Stop the watches, fail waiting requests, and send what the publisher still holds."""
        if self._closing:
            return
        self._closing = True
        for model in self.models.values():
            self._notify(model)
        tasks = [*self._tasks, *(m.scaling for m in self.models.values() if m.scaling is not None)]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.publisher.close(list(self.models))
        await self.kube.close()

    # -- the port -------------------------------------------------------------------------

    async def acquire(self, model: str, deadline_s: float) -> OnceLease:
        deadline = self.clock() + deadline_s
        m = self.models.get(model)
        if m is None:
            raise ModelNotFound(model)
        url = self._usable(m)
        if url is not None:
            return self._lease(m, url)
        if m.waiting >= self.settings.max_queue_per_model:
            raise TooManyRequests(f"Too many requests are waiting for '{model}'.", retry_after=1)
        m.waiting += 1
        self.metrics.queue.labels(model).inc()
        joined: asyncio.Task[tuple[int, str] | None] | None = None
        try:
            while True:
                if self._closing:
                    raise Unavailable("The server is shutting down.", retry_after=5)
                if self.models.get(model) is not m:
                    raise ModelNotFound(model)
                url = self._usable(m)
                if url is not None:
                    return self._lease(m, url)
                view = m.view
                if view.phase == "Failed":
                    raise Unavailable(
                        f"Model '{model}' failed: {view.message or 'no reason given'}",
                        retry_after=FAILED_RETRY_S,
                        code="model_failed",
                    )
                if joined is not None and joined.done() and (failed := joined.result()) is not None:
                    if failed[0] == 404:
                        raise ModelNotFound(model)
                    raise Unavailable(
                        f"Model '{model}' could not be scaled up: {failed[1]}", retry_after=5, code="scale_failed"
                    )
                if view.replicas < 1 and view.drain is None:
                    joined = self._scale_up(m)
                remaining = deadline - self.clock()
                if remaining <= 0:
                    raise NotReadyInTime(model, deadline_s)
                m.changed.clear()
                # Not wait_for: on 3.11 it drops a cancellation (a client leaving) that lands in
                # the step the model changed, and the request would go on without its client.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await m.changed.wait()
        finally:
            m.waiting -= 1
            self.metrics.queue.labels(model).dec()

    def model_type(self, model: str) -> str | None:
        m = self.models.get(model)
        return m.view.type if m is not None and m.view.type else None

    def describe(self) -> list[ModelCard]:
        return [_card(m, m.view) for _, m in sorted(self.models.items())]

    # -- admin operations (llmi_router.operations.Operable) -------------------------------

    async def load(self, model: str, deadline_s: float) -> ModelCard:
        """Scale up and wait for Ready as a request would (the same shared scale-up), holding nothing
        after. Its release stamps the last request time, so the idle timer counts from the load,
        not from a request long ago (the operator reads that annotation first)."""
        (await self.acquire(model, deadline_s)).release()
        return _card(self._model(model), self._model(model).view)

    async def unload(self, model: str) -> ModelCard:
        """Scale the LocalModel to zero; the operator drains what is in flight, then stops it."""
        m = self._model(model)
        log.info("scaling %s down to 0 replicas (unload)", model)
        answer = await self._write(model, self.kube.scale(model, 0))
        return _card(m, replace(m.view, replicas=int((answer.get("spec") or {}).get("replicas") or 0)))

    async def pin(self, model: str, pinned: bool) -> ModelCard:
        """Set ``spec.pinned``: a pinned model is never evicted for another, nor unloaded when idle."""
        m = self._model(model)
        answer = await self._write(model, self.kube.patch(model, {"spec": {"pinned": pinned}}))
        return _card(m, LocalModelView.from_object(answer))  # the watch brings the same change to m.view

    def _model(self, model: str) -> _Model:
        m = self.models.get(model)
        if m is None:
            raise ModelNotFound(model)
        return m

    async def _write(self, model: str, call: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        try:
            return await call
        except ApiException as exc:
            if exc.status == 404:
                raise ModelNotFound(model) from None
            raise Unavailable(
                f"Model '{model}' could not be changed: {reason(exc, LOCALMODELS)}", retry_after=5, code="scale_failed"
            ) from None

    def health(self) -> dict[str, Any]:
        return {
            "models": {name: m.view.phase or "Unknown" for name, m in sorted(self.models.items())},
            "backend": "kubernetes",
            "namespace": self.kube.namespace,
            "router": self.router_id,
            "watches": {
                what: {"synced": h.synced, "healthy": h.healthy, "last_error": h.last_error}
                for what, h in self.health_of.items()
            },
        }

    async def forget_if_dead(self, model: str, url: str) -> bool:
        """A refused connection: skip that endpoint until its EndpointSlice changes, and let the
        proxy retry, which waits (within the request's deadline) for a reachable one."""
        m = self.models.get(model)
        if m is None:
            return False
        m.refused.add(url)
        return True

    # -- requests -------------------------------------------------------------------------

    def _usable(self, m: _Model) -> str | None:
        if self._closing or not m.view.ready:
            return None
        service = child_name(m.view.name)
        for svc, urls in self.slices.values():
            if svc == service:
                for url in urls:
                    if url not in m.refused:
                        return url
        return None

    def _lease(self, m: _Model, url: str) -> OnceLease:
        name = m.view.name
        m.in_flight += 1
        self.metrics.in_flight.labels(name).inc()
        self.publisher.poke(name)

        def release() -> None:
            m.in_flight -= 1
            m.last_request = self.now()
            self.metrics.in_flight.labels(name).dec()
            self.publisher.poke(name)

        return OnceLease(url, release)

    def _wanted(self, model: str) -> Wanted:
        m = self.models.get(model)
        if m is None:
            return Wanted()
        return Wanted(m.in_flight, m.last_request, m.view.drain is not None)

    def _scale_up(self, m: _Model) -> asyncio.Task[tuple[int, str] | None]:
        """The one scale-up in flight for the model (started if there is none); a request that
        joins a failed one answers 503, the next request tries again."""
        if m.scaling is None or m.scaling.done():
            m.scaling = asyncio.create_task(self._patch_scale(m))
        return m.scaling

    async def _patch_scale(self, m: _Model) -> tuple[int, str] | None:
        name = m.view.name
        log.info("scaling %s up to 1 replica", name)
        failed: tuple[int, str] | None = None
        try:
            await self.kube.scale(name, 1)
        except Exception as exc:  # waiters must get an answer, not an unretrieved task exception
            failed = (exc.status if isinstance(exc, ApiException) else 0, reason(exc, LOCALMODELS))
            log.error("cannot scale %s up: %s", name, failed[1])
        else:
            m.scaled_at = m.scaled_at if m.scaled_at is not None else self.clock()
            # Until the watch confirms it, so that later requests wait instead of patching again.
            m.view = _with_replicas(m.view, 1)
        self._notify(m)
        return failed

    # -- the watches ----------------------------------------------------------------------

    def _replace_models(self, items: list[dict[str, Any]]) -> None:
        views = {v.name: v for v in map(LocalModelView.from_object, items) if v.name}
        for name in set(self.models) - set(views):
            self._apply_model("DELETED", {"metadata": {"name": name}})
        for view in views.values():
            self._update(view)
        self._synced.set()

    def _apply_model(self, kind: str, obj: dict[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name") or "")
        if kind == "DELETED":
            m = self.models.pop(name, None)
            if m is not None:
                log.info("LocalModel %s was deleted", name)
                self._publish("gone", m.view)
                self._notify(m)
        elif name:
            self._update(LocalModelView.from_object(obj))

    def _update(self, view: LocalModelView) -> None:
        m = self.models.get(view.name)
        if m is None:
            m = self.models[view.name] = _Model(view)
            old_phase = shown = None
        else:
            old_phase, shown = m.view.phase, shown_phase(m.view)
            if view.drain is not None and m.view.drain is None:
                self.publisher.poke(view.name)  # tell the operator at once what is still in flight here
            m.view = view
        if m.scaled_at is not None and (view.ready or view.phase == "Failed"):
            self.metrics.loads.labels(view.name, "ok" if view.ready else "failed").inc()
            if view.ready:
                self.metrics.load_seconds.labels(view.name).observe(self.clock() - m.scaled_at)
            m.scaled_at = None
        if old_phase != view.phase:
            if old_phase:
                self.metrics.state.labels(view.name, _public(old_phase)).set(0)
            if view.phase:
                self.metrics.state.labels(view.name, _public(view.phase)).set(1)
            log.info(
                "%s: %s%s",
                view.name,
                f"{old_phase or '-'} -> " if old_phase is not None else "",
                view.phase or "no phase yet",
            )
        kind = event_kind(shown, shown_phase(view))
        if kind is not None and (self._started or shown is not None):  # the first list is the snapshot
            self._publish(kind, view)
        self._notify(m)

    def _publish(self, kind: str, view: LocalModelView) -> None:
        phase = shown_phase(view)
        self.events.publish(
            ModelEvent(
                kind=kind,
                model=view.name,
                time=self.now(),
                state=PUBLIC_STATE.get(phase, "available"),
                detail=(view.message or "") if kind in ("failed", "evicting", "stopped") else "",
                memory_estimated_bytes=view.memory_bytes,
                placement=view.placement,
            )
        )

    def _replace_slices(self, items: list[dict[str, Any]]) -> None:
        self.slices = {}
        for obj in items:
            self._apply_slice("ADDED", obj)
        self._synced.set()

    def _apply_slice(self, kind: str, obj: dict[str, Any]) -> None:
        name = str((obj.get("metadata") or {}).get("name") or "")
        before = self.slices.get(name)
        if kind == "DELETED":
            self.slices.pop(name, None)
        elif name:
            self.slices[name] = slice_urls(obj)
        for service in {s for s, _ in filter(None, (before, self.slices.get(name)))}:
            for m in self.models.values():
                if child_name(m.view.name) == service:
                    m.refused.clear()  # the endpoints changed: try them afresh
                    self._notify(m)

    def _notify(self, m: _Model) -> None:
        """Wake every request waiting on the model; they look at it again."""
        m.changed.set()


def _card(m: _Model, view: LocalModelView) -> ModelCard:
    phase = shown_phase(view)
    return ModelCard(
        id=view.name,
        created=view.created,
        type=view.type,
        state=PUBLIC_STATE.get(phase, "available"),
        memory_bytes=view.memory_bytes,
        memory_estimated_bytes=view.memory_bytes,
        placement=view.placement,
        pinned=view.pinned,
        in_flight=m.in_flight,
        queued=m.waiting,
        last_used=m.last_request if m.last_request is not None else view.last_request,
        phase=phase or None,
        error=view.message if view.phase == "Failed" and view.message else None,
    )


def _with_replicas(view: LocalModelView, replicas: int) -> LocalModelView:
    return replace(view, replicas=max(view.replicas, replicas))


def _public(phase: str) -> str:
    return PUBLIC_STATE.get(phase, phase.lower())
