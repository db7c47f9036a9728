"""The router's Kubernetes access: kubernetes_asyncio for credentials, TLS, lists, watches and patches.

Why a thin wrapper: the router needs five calls (list and watch LocalModels and EndpointSlices,
patch a LocalModel and its scale) in one namespace, as plain dicts; everything else (kubeconfig,
in-cluster service account with token rotation, exec plugins, TLS, watch resumption and error
events) is the library's.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from llmi import __version__
from llmi.localmodel import GROUP, LABEL_NAME, PLURAL, RUNTIME_APP, VERSION

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"
WATCH_TIMEOUT_S = 290  # the API server ends each watch after this; we resume from resourceVersion
SLICE_SELECTOR = f"{LABEL_NAME}={RUNTIME_APP}"  # Service labels are copied onto its EndpointSlices

__all__ = ["ApiException", "KubeClient", "Resource", "connect"]


@dataclass(frozen=True)
class Resource:
    """One watched collection: how to name it in logs and what RBAC it needs."""

    what: str
    rbac: str


LOCALMODELS = Resource("LocalModels", "list/watch/patch on localmodels and patch on localmodels/scale")
SLICES = Resource("EndpointSlices", "list/watch on endpointslices (discovery.k8s.io)")


class KubeClient:
    """The router's calls in one namespace, over a kubernetes_asyncio ApiClient."""

    def __init__(self, configuration: client.Configuration, namespace: str) -> None:
        self.configuration = configuration
        self.namespace = namespace
        self.server = str(configuration.host)
        self._api: client.ApiClient | None = None

    @property
    def _custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self._client())

    @property
    def _discovery(self) -> client.DiscoveryV1Api:
        return client.DiscoveryV1Api(self._client())

    def _client(self) -> client.ApiClient:
        """Made on first use, inside the event loop that serves (its aiohttp session belongs there)."""
        if self._api is None:
            self._api = client.ApiClient(self.configuration)
            self._api.user_agent = f"llmi-router/{__version__}"  # in the API server's audit log
        return self._api

    async def list(self, resource: Resource) -> tuple[list[dict[str, Any]], str | None]:
        """Every object and the list's resourceVersion (where a watch resumes)."""
        if resource is LOCALMODELS:
            body = await self._custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
        else:
            # _preload_content=False answers the raw response; the library's stub says the model.
            raw = cast(
                aiohttp.ClientResponse,
                await self._discovery.list_namespaced_endpoint_slice(
                    self.namespace, label_selector=SLICE_SELECTOR, _preload_content=False
                ),
            )
            body = json.loads(await raw.read())
        return list(body.get("items") or []), (body.get("metadata") or {}).get("resourceVersion") or None

    async def watch(self, resource: Resource, resource_version: str | None) -> AsyncIterator[dict[str, Any]]:
        """Raw watch events (``type``, ``object``) until the server ends the stream; a 410 Gone or
        any other error event is an ApiException."""
        options: dict[str, Any] = {"timeout_seconds": WATCH_TIMEOUT_S, "allow_watch_bookmarks": True}
        if resource_version:
            options["resource_version"] = resource_version
        func: Callable[..., Awaitable[Any]]
        args: tuple[str, ...]
        if resource is LOCALMODELS:
            func, args = self._custom.list_namespaced_custom_object, (GROUP, VERSION, self.namespace, PLURAL)
        else:
            func, args = self._discovery.list_namespaced_endpoint_slice, (self.namespace,)
            options["label_selector"] = SLICE_SELECTOR
        async with watch.Watch() as stream:
            async for event in stream.stream(func, *args, **options):
                yield {"type": event["type"], "object": event["raw_object"]}

    async def patch(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON merge patch of one LocalModel's metadata or spec."""
        answer = await self._custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, dict(body), _content_type=MERGE_PATCH
        )  # type: ignore[call-arg]  # the stub omits _content_type, which the method accepts
        return dict(answer)

    async def scale(self, name: str, replicas: int) -> dict[str, Any]:
        """A merge patch of the scale subresource (what ``kubectl scale`` does)."""
        answer = await self._custom.patch_namespaced_custom_object_scale(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": {"replicas": replicas}}, _content_type=MERGE_PATCH
        )  # type: ignore[call-arg]  # the stub omits _content_type, which the method accepts
        return dict(answer)

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()


async def connect(
    server: str | None, namespace: str | None, *, service_account: Path = SERVICE_ACCOUNT
) -> tuple[client.Configuration, str]:
    """Where the API server is, how to authenticate, and the namespace: ``server`` as given (no
    credentials: ``kubectl proxy``, tests), else the pod's service account, else the kubeconfig;
    ``namespace`` wins over both."""
    cfg = client.Configuration()
    found: str | None
    if server:
        cfg.host = server.rstrip("/")
        return cfg, namespace or "default"
    try:
        config.load_incluster_config(  # type: ignore[no-untyped-call]  # the library leaves it unannotated
            client_configuration=cfg,
            token_filename=str(service_account / "token"),
            cert_filename=str(service_account / "ca.crt"),
            environ=os.environ,
        )
        found = (service_account / "namespace").read_text().strip()
    except ConfigException:
        await config.load_kube_config(client_configuration=cfg)
        _, current = config.list_kube_config_contexts()
        found = ((current or {}).get("context") or {}).get("namespace")
    return cfg, namespace or found or "default"
