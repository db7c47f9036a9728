"""A small port to the Kubernetes API that speaks plain dicts, over the official client's transport.

Why not the typed client: the operator builds its children as dicts (children.py), compares them
by hash and patches them with JSON patches; the typed models would only convert back and forth.
The official client still does the hard parts: kubeconfig and in-cluster credentials, TLS, token
refresh. Tests pass an in-memory fake or point the client at an emulated API server.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"


class Conflict(Exception):
    """The object already exists (create) or changed under us (a stale resourceVersion)."""


class Kube(Protocol):
    """What the operator needs from the API server. ``path`` is a full API path (see ``api_path``)."""

    def get(self, path: str) -> dict[str, Any] | None: ...

    def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]: ...

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH) -> dict[str, Any] | None: ...

    def delete(self, path: str) -> bool: ...


def api_path(
    api_version: str, plural: str, namespace: str | None = None, name: str | None = None, sub: str | None = None
) -> str:
    """``/api/v1/namespaces/NS/pods/NAME`` and the like."""
    parts = ["/api/v1" if api_version == "v1" else f"/apis/{api_version}"]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name:
        parts.append(name)
    if sub:
        parts.append(sub)
    return "/".join(parts)


def load_api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (``KUBECONFIG``)."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]  # the library leaves it unannotated
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient(client.Configuration.get_default_copy())


class RestKube:
    """``Kube`` over the official client's REST transport."""

    def __init__(self, api_client: client.ApiClient, timeout_s: float = 30.0) -> None:
        self.api = api_client
        self.timeout_s = timeout_s

    def _call(
        self, method: str, path: str, *, query: dict[str, str] | None = None, body: Any = None, content_type: str = ""
    ) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        request = self.api.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        response = self.api.call_api(*request, _request_timeout=self.timeout_s)
        data: bytes = response.read()  # type: ignore[no-untyped-call]  # RESTResponse.read is unannotated
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=data.decode(errors="replace"), data=None)
        return json.loads(data) if data else {}

    def get(self, path: str) -> dict[str, Any] | None:
        try:
            return dict(self._call("GET", path))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list(self, path: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        return list(self._call("GET", path, query=query).get("items") or [])

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return dict(self._call("POST", path, body=body, content_type="application/json"))
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(str(exc.reason)) from exc
            raise

    def patch(self, path: str, body: Any, content_type: str = MERGE_PATCH) -> dict[str, Any] | None:
        try:
            return dict(self._call("PATCH", path, body=body, content_type=content_type))
        except ApiException as exc:
            if exc.status == 404:
                return None
            if exc.status == 409 or (exc.status == 422 and content_type == JSON_PATCH):  # 422: a failed "test"
                raise Conflict(str(exc.reason)) from exc
            raise

    def delete(self, path: str) -> bool:
        try:
            self._call("DELETE", path, body={"propagationPolicy": "Background"}, content_type="application/json")
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True
