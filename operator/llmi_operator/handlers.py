"""kopf handlers: thin wrappers that hand every LocalModel event to the one reconcile pass.

- create / update of the spec / resume after a restart: reconcile; "waiting for room" is
  ``kopf.TemporaryError(delay=...)``, an unusable spec ``kopf.PermanentError``.
- a timer per LocalModel: idle scale-to-zero, then reconcile (readiness, pods gone, folder gone).
- events of the operator's Deployments: reconcile their owner at once (Ready without waiting for
  the timer; a deleted child is re-created).
- delete: remove the children explicitly (the garbage collector would too, via ownerReferences).
- startup: kopf settings, the API port, the reconciler, and discovery (once, then periodically).

Handlers are synchronous (kopf runs them in threads): the API port is the blocking official client.
State lives in ``memo``, set up at startup; nothing here sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any, cast

import kopf

from llmi.localmodel import (
    API_VERSION,
    FINALIZER,
    GROUP,
    KIND,
    KOPF_PREFIX,
    LABEL_MANAGED_BY,
    OPERATOR_APP,
    PLURAL,
    VERSION,
)
from llmi_operator.discovery import discover
from llmi_operator.kube import Kube, RestKube, load_api_client
from llmi_operator.reconcile import Reconciler
from llmi_operator.settings import OperatorSettings

log = logging.getLogger("llmi.operator")
RESOURCE = (GROUP, VERSION, PLURAL)
STORAGE_PREFIX = KOPF_PREFIX
MAX_DISCOVERY_BACKOFF_S = 300.0


def notify(obj: Mapping[str, Any], type: str, reason: str, message: str) -> None:
    """Post a Kubernetes Event on a LocalModel through kopf's poster (outside a handler: log only)."""
    body = {**obj, "apiVersion": API_VERSION, "kind": KIND}
    try:
        kopf.event(kopf.Body(cast(kopf.RawBody, body)), type=type, reason=reason, message=message[:1000])
    except LookupError:  # no kopf context (e.g. the discovery task): the log has to do
        log.info("%s %s/%s: %s", reason, body["metadata"].get("namespace"), body["metadata"].get("name"), message)


def configure(kopf_settings: kopf.OperatorSettings, config: OperatorSettings) -> None:
    """kopf's settings, in one place. Annotations, not status, keep kopf's bookkeeping: the CRD's
    status schema is structural and would prune kopf's fields, and kopf would then loop."""
    kopf_settings.persistence.finalizer = FINALIZER
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX)
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=STORAGE_PREFIX, key="last-handled-configuration"
    )
    kopf_settings.posting.level = logging.INFO
    kopf_settings.networking.request_timeout = config.request_timeout_s
    # Handlers block on API calls; per-model and per-node locks serialise what must not interleave.
    # Peering is kopf's choice (`--standalone`, the default, or `--no-standalone` with kopf's peering
    # resources): either way one operator is active, which the in-process locks assume.
    kopf_settings.execution.max_workers = 8


def discover_once(memo: kopf.Memo, config: OperatorSettings) -> None:
    """One scan, then a reconcile of each model whose folder came or went (it marks the status)."""
    report = discover(memo.kube, config, config.namespace)
    for name in report.created:
        log.info("discovered %s", name)
    for name in report.stale:
        memo.reconciler.reconcile(config.namespace, name)


async def discovery_loop(
    memo: kopf.Memo, config: OperatorSettings, scan: Callable[[kopf.Memo, OperatorSettings], None] = discover_once
) -> None:
    """Scan every ``discovery_interval_s``; a scan that fails is logged and the loop goes on, backing
    off (doubling, up to MAX_DISCOVERY_BACKOFF_S) while scans keep failing. Only cancellation ends it."""
    delay = 0.0
    failures = 0
    while True:
        await asyncio.sleep(delay)  # a background task, not a handler
        try:
            await asyncio.to_thread(scan, memo, config)
            failures = 0
        except Exception:
            failures += 1
            log.exception("discovery failed (%d in a row); trying again", failures)
        delay = min(
            config.discovery_interval_s * 2**failures, max(MAX_DISCOVERY_BACKOFF_S, config.discovery_interval_s)
        )


def _namespaced(namespace: str | None) -> str:
    """LocalModels are namespaced; kopf types a handler's namespace as optional for cluster-scoped kinds."""
    if namespace is None:
        raise kopf.PermanentError("a LocalModel without a namespace")
    return namespace


def _reconcile(memo: kopf.Memo, namespace: str | None, name: str) -> None:
    result = memo.reconciler.reconcile(_namespaced(namespace), name)
    if result.invalid is not None:
        raise kopf.PermanentError(result.invalid)
    if result.retry_after is not None:
        raise kopf.TemporaryError("waiting for room on a node", delay=result.retry_after)


def register(
    registry: kopf.OperatorRegistry, config: OperatorSettings, kube_factory: Callable[[], Kube] | None = None
) -> None:
    """Register every handler into ``registry`` (a fresh registry per operator, as tests need)."""

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        configure(settings, config)
        if kube_factory is not None:
            memo.kube = kube_factory()
        else:
            memo.kube = RestKube(await asyncio.to_thread(load_api_client), config.request_timeout_s)
        memo.reconciler = Reconciler(memo.kube, config, notify)
        memo.discovery = asyncio.create_task(discovery_loop(memo, config))  # scans at once, then periodically

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        task = memo.get("discovery")
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @kopf.on.create(*RESOURCE, id="create", registry=registry)
    def on_create(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
        _reconcile(memo, namespace, name)

    @kopf.on.update(*RESOURCE, id="update", field="spec", registry=registry)
    def on_update(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
        _reconcile(memo, namespace, name)

    @kopf.on.resume(*RESOURCE, id="resume", registry=registry)
    def on_resume(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
        _reconcile(memo, namespace, name)

    @kopf.on.delete(*RESOURCE, id="delete", registry=registry)
    def on_delete(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
        memo.reconciler.delete_children(_namespaced(namespace), name)

    @kopf.timer(
        *RESOURCE,
        id="tick",
        interval=config.reconcile_interval_s,
        initial_delay=config.reconcile_interval_s,
        backoff=config.retry_delay_s,
        registry=registry,
    )
    def tick(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
        memo.reconciler.tick(_namespaced(namespace), name)

    @kopf.on.event("apps", "v1", "deployments", labels={LABEL_MANAGED_BY: OPERATOR_APP}, registry=registry)
    def child_changed(body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
        owners = body.metadata.get("ownerReferences") or []
        owner = next((o.get("name") for o in owners if o.get("kind") == KIND), None)
        if owner and namespace and "reconciler" in memo:
            memo.reconciler.reconcile(namespace, owner)
