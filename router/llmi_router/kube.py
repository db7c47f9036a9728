"""The Kubernetes control plane: LocalModel resources are the truth, the operator does the work.

The router lists and watches the LocalModels of its namespace and keeps an in-memory view. A
request for a model that is not Ready patches the LocalModel's scale subresource to 1 (once, shared
by every waiting request) and waits for the watch to show ``status.phase: Ready`` with an endpoint.
Finished requests record ``llmi.dev/last-request-time`` (throttled) so the operator can scale idle
models to zero. Plain httpx against the API server: the router stays async and never blocks on a
synchronous client; kube_main turns a kubeconfig or the in-cluster service account into a
``KubeConnection``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import re
import ssl
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import httpx

from llmi import __version__
from llmi.errors import ModelNotFound, NotReadyInTime, TooManyRequests, Unavailable
from llmi.protocol.models import ModelCard
from llmi.settings import Settings
from llmi_router.metrics import RouterMetrics
from llmi_router.ports import OnceLease

log = logging.getLogger("llmi.router.kube")

GROUP, VERSION, PLURAL = "llmi.dev", "v1alpha1", "localmodels"
LAST_REQUEST_ANNOTATION = "llmi.dev/last-request-time"
# What /v1/models shows for each phase (ARCHITECTURE: available/loading/ready/failed). An Evicted
# model was scaled to zero for another one; the next request scales it up like an Available one.
PUBLIC_STATE = {
    "Available": "available",
    "Loading": "loading",
    "Ready": "ready",
    "Evicted": "available",
    "Failed": "failed",
}
FAILED_RETRY_S = 30.0
WATCH_TIMEOUT_S = 290  # the API server ends each watch after this; we resume from resourceVersion
MAX_BACKOFF_S = 30.0
_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|Pi|Ei|k|K|M|G|T|P|E)?\s*$")
_FACTORS = {
    None: 1,
    **{s: 1024 ** (i + 1) for i, s in enumerate(["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"])},
    **{s: 1000 ** (i + 1) for i, s in enumerate(["k", "M", "G", "T", "P", "E"])},
    "K": 1000,
}


class KubeApiError(Exception):
    """A failed API call, with the HTTP status (0 when the server was not reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class KubeConnection:
    """Where the API server is and how to authenticate. ``authorization`` returns the
    Authorization header value (it may read a rotated token file or run a credential plugin, so it
    is called in a thread)."""

    server: str
    verify: ssl.SSLContext | bool = True
    authorization: Callable[[], str | None] | None = None


class _HeaderAuth(httpx.Auth):
    def __init__(self, authorization: Callable[[], str | None]) -> None:
        self._authorization = authorization

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        value = await asyncio.to_thread(self._authorization)
        if value:
            request.headers["Authorization"] = value
        yield request

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("the Kubernetes client is async only")


class KubeApi:
    """The few LocalModel calls the router makes, in one namespace."""

    def __init__(self, connection: KubeConnection, namespace: str) -> None:
        self.namespace = namespace
        self.server = connection.server.rstrip("/")
        self._base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        self._client = httpx.AsyncClient(
            base_url=self.server,
            verify=connection.verify,
            auth=_HeaderAuth(connection.authorization) if connection.authorization else None,
            timeout=httpx.Timeout(30, connect=10),
            headers={"Accept": "application/json", "User-Agent": f"llmi-router/{__version__}"},
        )

    async def list(self) -> tuple[list[dict[str, Any]], str | None]:
        """Every LocalModel and the list's resourceVersion (where a watch resumes)."""
        resp = await self._client.get(self._base)
        body = _checked(resp)
        return list(body.get("items") or []), (body.get("metadata") or {}).get("resourceVersion") or None

    async def watch(self, resource_version: str | None) -> AsyncGenerator[dict[str, Any], None]:
        """Watch events, one JSON object per line, until the server ends the stream."""
        params = {"watch": "true", "allowWatchBookmarks": "true", "timeoutSeconds": str(WATCH_TIMEOUT_S)}
        if resource_version:
            params["resourceVersion"] = resource_version
        timeout = httpx.Timeout(10, read=WATCH_TIMEOUT_S + 30)
        async with self._client.stream("GET", self._base, params=params, timeout=timeout) as resp:
            if resp.status_code != 200:
                await resp.aread()
                _checked(resp)
            async for line in resp.aiter_lines():
                if line.strip():
                    yield json.loads(line)

    async def patch(self, name: str, body: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
        """A JSON merge patch of one LocalModel (or its subresource); the server's answer."""
        path = f"{self._base}/{name}" + (f"/{subresource}" if subresource else "")
        resp = await self._client.patch(
            path, content=json.dumps(body), headers={"Content-Type": "application/merge-patch+json"}, timeout=10
        )
        return _checked(resp)

    async def aclose(self) -> None:
        await self._client.aclose()


def _checked(resp: httpx.Response) -> dict[str, Any]:
    """The JSON body of a 2xx answer; otherwise KubeApiError with the Status message."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if resp.status_code >= 400:
        message = body.get("message") if isinstance(body, dict) else None
        raise KubeApiError(resp.status_code, str(message or resp.reason_phrase or "error"))
    if not isinstance(body, dict):
        raise KubeApiError(resp.status_code, "the API server's answer is not a JSON object")
    return body


@dataclass
class ModelView:
    """What the router knows of one LocalModel."""

    name: str
    type: str
    phase: str = ""
    endpoint: str | None = None
    message: str | None = None
    memory_bytes: int | None = None
    placement: str | None = None
    replicas: int = 0
    created: int = 0

    @property
    def ready(self) -> bool:
        return self.phase == "Ready" and bool(self.endpoint)

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> ModelView:
        meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
        memory = status.get("memory")
        if not isinstance(memory, int):
            memory = parse_quantity(spec.get("memory"))
        placement = status.get("placement") or (spec.get("placement") if spec.get("placement") != "auto" else None)
        return cls(
            name=str(meta.get("name", "")),
            type=str(spec.get("type", "")),
            phase=str(status.get("phase") or ""),
            endpoint=(str(status["endpoint"]).rstrip("/") if status.get("endpoint") else None),
            message=status.get("message"),
            memory_bytes=memory,
            placement=placement,
            replicas=_int(spec.get("replicas")),
            created=_epoch(meta.get("creationTimestamp")),
        )


def parse_quantity(value: Any) -> int | None:
    """Bytes from an int or a Kubernetes quantity (``6Gi``, ``512Mi``, ``6G``); None if neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    m = _QUANTITY.match(value) if isinstance(value, str) else None
    return int(float(m.group(1)) * _FACTORS[m.group(2)]) if m else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _epoch(stamp: Any) -> int:
    try:
        return int(dt.datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def _public(phase: str) -> str:
    return PUBLIC_STATE.get(phase, phase.lower())


def rfc3339(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Touch:
    """Throttled ``last-request-time`` patches of one model: at most one per interval, and the
    last request of a burst is still recorded (trailing patch)."""

    latest: str | None = None  # RFC 3339, whole seconds: requests within a second are one stamp
    sent: str | None = None
    sent_at: float = float("-inf")
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class KubeControlPlane:
    """Implements the router's ControlPlane port with LocalModels and the llmi operator."""

    def __init__(
        self,
        api: KubeApi,
        settings: Settings,
        metrics: RouterMetrics,
        *,
        touch_interval_s: float = 30.0,
        sync_timeout_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.api = api
        self.settings = settings
        self.metrics = metrics
        self.touch_interval_s = touch_interval_s
        self.sync_timeout_s = sync_timeout_s
        self.clock = clock
        self.now = now
        self.models: dict[str, ModelView] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._waiting: defaultdict[str, int] = defaultdict(int)
        self._in_flight: defaultdict[str, int] = defaultdict(int)
        self._scaling: dict[str, asyncio.Task[KubeApiError | None]] = {}
        self._scaled_at: dict[str, float] = {}
        self._touches: dict[str, _Touch] = {}
        self._synced = asyncio.Event()
        self._closing = False
        self._closed = False
        self._watcher: asyncio.Task[None] | None = None
        self._last_error: str | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the watch and wait for the first full list, so that no request meets an empty
        view and gets a false 404. Fails after ``sync_timeout_s`` with the API server's reason."""
        self._watcher = asyncio.create_task(self._watch_forever())
        try:
            async with asyncio.timeout(self.sync_timeout_s):
                await self._synced.wait()
        except TimeoutError:
            await self.close()
            where = f"{self.api.server}, namespace {self.api.namespace}"
            raise RuntimeError(f"cannot list LocalModels at {where}: {self._last_error or 'no answer'}") from None
        log.info(
            "watching LocalModels in namespace %s at %s: %s",
            self.api.namespace,
            self.api.server,
            ", ".join(sorted(self.models)) or "none yet",
        )

    async def close(self) -> None:
        """Stop the watch, fail waiting requests, and send the last request times not yet sent."""
        if self._closed:
            return
        self._closing = self._closed = True
        for name in list(self._changed):
            self._notify(name)
        tasks = [t for t in [self._watcher, *self._scaling.values()] if t is not None]
        tasks += [t.task for t in self._touches.values() if t.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        pending = [name for name, t in self._touches.items() if t.latest is not None and t.latest != t.sent]
        if pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.gather(*(self._send_touch(name) for name in pending))
        await self.api.aclose()

    # -- the port -------------------------------------------------------------------------

    async def acquire(self, model: str, deadline_s: float) -> OnceLease:
        deadline = self.clock() + deadline_s
        view = self.models.get(model)
        if view is None:
            raise ModelNotFound(model)
        if view.ready and not self._closing:
            return self._lease(view)
        if self._waiting[model] >= self.settings.max_queue_per_model:
            raise TooManyRequests(f"Too many requests are waiting for '{model}'.", retry_after=1)
        self._waiting[model] += 1
        self.metrics.queue.labels(model).inc()
        joined: asyncio.Task[KubeApiError | None] | None = None
        try:
            while True:
                if self._closing:
                    raise Unavailable("The server is shutting down.", retry_after=5)
                view = self.models.get(model)
                if view is None:
                    raise ModelNotFound(model)
                if view.ready:
                    return self._lease(view)
                if view.phase == "Failed":
                    raise Unavailable(
                        f"Model '{model}' failed: {view.message or 'no reason given'}",
                        retry_after=FAILED_RETRY_S,
                        code="model_failed",
                    )
                if joined is not None and joined.done() and (error := joined.result()) is not None:
                    if error.status == 404:
                        raise ModelNotFound(model)
                    raise Unavailable(
                        f"Model '{model}' could not be scaled up: {error.message}", retry_after=5, code="scale_failed"
                    )
                if view.replicas < 1:
                    joined = self._scale_up(model)
                remaining = deadline - self.clock()
                if remaining <= 0:
                    raise NotReadyInTime(model, deadline_s)
                changed = self._changed.setdefault(model, asyncio.Event())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), remaining)
        finally:
            self._waiting[model] -= 1
            self.metrics.queue.labels(model).dec()

    def model_type(self, model: str) -> str | None:
        view = self.models.get(model)
        return view.type if view is not None and view.type else None

    def describe(self) -> list[ModelCard]:
        return [
            ModelCard(
                id=name,
                created=view.created,
                type=view.type,
                state=PUBLIC_STATE.get(view.phase, "available"),
                memory_bytes=view.memory_bytes,
                memory_estimated_bytes=view.memory_bytes,
                placement=view.placement,
                in_flight=self._in_flight[name],
                queued=self._waiting[name],
                phase=view.phase or None,
                error=view.message if view.phase == "Failed" and view.message else None,
            )
            for name, view in sorted(self.models.items())
        ]

    def health(self) -> dict[str, Any]:
        return {
            "models": {name: view.phase or "Unknown" for name, view in sorted(self.models.items())},
            "backend": "kubernetes",
            "namespace": self.api.namespace,
        }

    async def forget_if_dead(self, model: str, url: str) -> bool:
        """Kubernetes restarts the pod and the operator updates the status; nothing to forget."""
        return False

    # -- requests -------------------------------------------------------------------------

    def _lease(self, view: ModelView) -> OnceLease:
        assert view.endpoint is not None
        name = view.name
        self._in_flight[name] += 1
        self.metrics.in_flight.labels(name).inc()

        def release() -> None:
            self._in_flight[name] -= 1
            self.metrics.in_flight.labels(name).dec()
            self._touch(name)

        return OnceLease(view.endpoint, release)

    def _scale_up(self, model: str) -> asyncio.Task[KubeApiError | None]:
        """The one scale-up in flight for ``model`` (started if there is none)."""
        task = self._scaling.get(model)
        if task is None or task.done():
            task = self._scaling[model] = asyncio.create_task(self._patch_scale(model))
            task.add_done_callback(lambda _: self._notify(model))
        return task

    async def _patch_scale(self, model: str) -> KubeApiError | None:
        log.info("scaling %s up to 1 replica", model)
        try:
            answer = await self.api.patch(model, {"spec": {"replicas": 1}}, subresource="scale")
        except KubeApiError as exc:
            log.error("cannot scale %s up: %s", model, exc)
            return exc
        except httpx.HTTPError as exc:
            log.error("cannot scale %s up: %s", model, exc)
            return KubeApiError(0, f"the API server is not reachable ({type(exc).__name__})")
        except Exception as exc:  # waiters must get an answer, not an unretrieved task exception
            log.exception("cannot scale %s up", model)
            return KubeApiError(0, type(exc).__name__)
        self._scaled_at.setdefault(model, self.clock())
        view = self.models.get(model)
        if view is not None:
            # Until the watch confirms it, so that later requests wait instead of patching again.
            view.replicas = max(view.replicas, _int((answer.get("spec") or {}).get("replicas")), 1)
        return None

    def _touch(self, model: str) -> None:
        """Record a finished request; the annotation patch runs in the background, throttled."""
        touch = self._touches.setdefault(model, _Touch())
        touch.latest = rfc3339(self.now())
        if self._closing or (touch.task is not None and not touch.task.done()):
            return  # the running task sends the latest time when its interval allows
        touch.task = asyncio.create_task(self._touch_loop(model))

    async def _touch_loop(self, model: str) -> None:
        touch = self._touches[model]
        while touch.latest != touch.sent:
            wait = touch.sent_at + self.touch_interval_s - self.clock()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._send_touch(model)

    async def _send_touch(self, model: str) -> None:
        touch = self._touches[model]
        stamp, touch.sent_at = touch.latest, self.clock()
        if stamp is None:
            return
        body = {"metadata": {"annotations": {LAST_REQUEST_ANNOTATION: stamp}}}
        try:
            await self.api.patch(model, body)
        except Exception as exc:  # fire and forget: never the request's problem
            log.warning("cannot record the last request time of %s: %s", model, exc)
        touch.sent = stamp  # also after a failure: the next request tries again, not a retry loop

    # -- the watch ------------------------------------------------------------------------

    async def _watch_forever(self) -> None:
        """List, then watch from the list's resourceVersion; on a dropped stream resume from the
        last seen one, on 410 Gone list again. Errors back off up to MAX_BACKOFF_S."""
        version: str | None = None
        listed = False
        backoff = 0.5
        while not self._closing:
            try:
                if not listed:
                    items, version = await self.api.list()
                    self._replace_all(items)
                    listed = True
                    self._synced.set()
                started, events = self.clock(), 0
                async with contextlib.aclosing(self.api.watch(version)) as stream:
                    async for event in stream:
                        events += 1
                        version = self._apply(event) or version
                        backoff = 0.5
                if events == 0 and self.clock() - started < 1:
                    await asyncio.sleep(backoff)  # a server that ends watches at once must not spin us
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
            except KubeApiError as exc:
                if exc.status == 410:
                    log.info("watch expired (%s); listing again", exc.message)
                    listed = False
                    continue
                self._failed_call(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            except (httpx.HTTPError, ValueError) as exc:
                self._failed_call(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
            except Exception as exc:  # a bug must not end the watch for the router's lifetime
                log.exception("LocalModel watch failed")
                self._last_error = repr(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)

    def _failed_call(self, exc: Exception) -> None:
        reason = str(exc) if isinstance(exc, KubeApiError) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, KubeApiError) and exc.status == 404:
            reason += " (is the LocalModel CRD installed?)"
        elif isinstance(exc, KubeApiError) and exc.status in (401, 403):
            reason += " (the router's service account needs get/list/watch/patch on localmodels and localmodels/scale)"
        self._last_error = reason
        log.warning("LocalModel watch: %s; retrying", reason)

    def _apply(self, event: dict[str, Any]) -> str | None:
        """One watch event into the view; the resourceVersion to resume from, if any."""
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            raise KubeApiError(_int(obj.get("code")), str(obj.get("message") or "watch error"))
        version = (obj.get("metadata") or {}).get("resourceVersion") or None
        if kind == "BOOKMARK":
            return version
        view = ModelView.from_object(obj)
        if not view.name:
            return version
        if kind == "DELETED":
            if self.models.pop(view.name, None) is not None:
                log.info("LocalModel %s was deleted", view.name)
        elif kind in ("ADDED", "MODIFIED"):
            self._update(view)
        self._notify(view.name)
        return version

    def _replace_all(self, items: list[dict[str, Any]]) -> None:
        views = [ModelView.from_object(obj) for obj in items]
        fresh = {v.name for v in views if v.name}
        for name in set(self.models) - fresh:
            del self.models[name]
            self._notify(name)
        for view in views:
            if view.name:
                self._update(view)
                self._notify(view.name)

    def _update(self, view: ModelView) -> None:
        old = self.models.get(view.name)
        self.models[view.name] = view
        started = self._scaled_at.pop(view.name, None) if view.ready or view.phase == "Failed" else None
        if started is not None:
            self.metrics.loads.labels(view.name, "ok" if view.ready else "failed").inc()
            if view.ready:
                self.metrics.load_seconds.labels(view.name).observe(self.clock() - started)
        if old is not None and old.phase == view.phase:
            return
        if old is not None and old.phase:
            self.metrics.state.labels(view.name, _public(old.phase)).set(0)
        if view.phase:
            self.metrics.state.labels(view.name, _public(view.phase)).set(1)
        log.info("%s: %s%s", view.name, f"{old.phase or '-'} -> " if old else "", view.phase or "no phase yet")

    def _notify(self, model: str) -> None:
        """Wake every request waiting on ``model``; they look at the view again."""
        event = self._changed.pop(model, None)
        if event is not None:
            event.set()
