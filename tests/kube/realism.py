"""A thin realism layer over kmock's Kubernetes emulator: what kopf and our clients rely on.

kmock 0.8 stores objects and streams watch events, but it never sets ``resourceVersion``, ``uid``,
``generation`` or ``creationTimestamp``, answers 200 to a create and 500 to a failed JSON-patch
``test``, ignores label selectors and ``generateName``, and knows no subresources. kopf reacts
to all of these (it runs handlers twice, or never settles), so ``Emulator`` serves every request
for a declared resource itself, the way an API server would:

- create: namespace from the URL, ``generateName``, uid, creationTimestamp, generation 1, 201,
  409 on a duplicate, status dropped when the resource has a status subresource;
- every write bumps one global resourceVersion, emits one watch event and is logged in order in
  ``writes`` (tests read the order of everything that happened from there);
- patch: JSON patch (422 on a failed ``test``), merge patch (a ``metadata.resourceVersion``
  in it is a precondition: 409), strategic merge treated as merge; ``/status`` changes only the
  status, the main endpoint never does; generation moves when anything but metadata/status does;
  a patch that changes nothing writes nothing; ``/scale`` reads and writes spec.replicas;
- delete: ``deletionTimestamp`` while finalizers remain, gone (and a DELETED event) after;
- list and watch: label and field selectors; a watch from a resourceVersion replays what came
  after it, without one it starts with every object as ADDED.

Also patched: kmock's path parser, for the namespace paths it cannot parse, and its watch detection,
which knows ``?watch=true`` but not kubernetes_asyncio's ``?watch=True``. Tests inject API failures
through ``Emulator.faults``. Not emulated: garbage
collection, controllers, admission, defaulting and schema validation.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml
from kmock._internal import parsing

MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
BUILTIN: dict[str, dict[str, Any]] = {
    "v1/namespaces": {"kind": "Namespace", "namespaced": False, "subresources": ["status"]},
    "v1/nodes": {"kind": "Node", "namespaced": False, "subresources": ["status"]},
    "v1/pods": {"kind": "Pod", "namespaced": True, "subresources": ["status"]},
    "v1/services": {"kind": "Service", "namespaced": True, "subresources": ["status"]},
    "v1/events": {"kind": "Event", "namespaced": True, "subresources": []},
    "events.k8s.io/v1/events": {"kind": "Event", "namespaced": True, "subresources": []},
    "apps/v1/deployments": {"kind": "Deployment", "namespaced": True, "subresources": ["status", "scale"]},
    "discovery.k8s.io/v1/endpointslices": {"kind": "EndpointSlice", "namespaced": True, "subresources": []},
    "apiextensions.k8s.io/v1/customresourcedefinitions": {
        "kind": "CustomResourceDefinition",
        "namespaced": False,
        "subresources": ["status"],
    },
}


_parse_path = parsing.parse_path


def parse_path(path: str) -> parsing.ParsedPath:
    """kmock 0.8 cannot parse ``/api/v1/namespaces`` (kopf lists and watches it) nor one namespace."""
    parts = path.strip("/").split("/")
    if parts == ["api", "v1", "namespaces"]:
        return parsing.ParsedPath(group="", version="v1", plural="namespaces")
    if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 4:
        return parsing.ParsedPath(group="", version="v1", plural="namespaces", name=parts[3])
    return _parse_path(path)


parsing.parse_path = parse_path  # rendering.Request._parse looks it up on the module at each request

_guess_k8s = parsing.guess_k8s
GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}  # strconv.ParseBool, as the API server parses ?watch=


def guess_k8s(k8s: parsing.ParsedPath, method: Any, query: dict[str, str]) -> Any:
    """kmock 0.8 knows only ``watch=true``; kubernetes_asyncio sends ``watch=True``."""
    if query.get("watch") in GO_TRUE:
        query = {**query, "watch": "true"}
    return _guess_k8s(k8s, method, query)


parsing.guess_k8s = guess_k8s


class ApiError(kmock.KubernetesError):
    """An API error with Kubernetes' reason names (NotFound, AlreadyExists, Conflict, Invalid)."""


def error(status: int, reason: str, message: str) -> ApiError:
    return ApiError(status=status, reason=reason, message=message, details={})


@dataclass(frozen=True)
class Write:
    """One change, in the order the API server made it (``rv`` is its resourceVersion)."""

    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    resource: kmock.resource
    namespace: str | None
    name: str
    object: dict[str, Any]


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge, ``null`` removes, anything else (lists too) replaces."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = copy.deepcopy(dict(target)) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


SELECTOR_RE = re.compile(r"([^,(]+(?:\([^)]*\))?)")


def label_matches(labels: Mapping[str, str], selector: str) -> bool:
    """Kubernetes label selectors: ``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, ``k in (a,b)``, ``k notin (a,b)``."""
    for term in (t.strip() for t in SELECTOR_RE.findall(selector or "")):
        if not term:
            continue
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^)]*)\)", term):
            values = {v.strip() for v in m[3].split(",")}
            inside = m[1] in labels and labels[m[1]] in values
            if inside != (m[2] == "in"):
                return False
        elif m := re.fullmatch(r"(\S+?)\s*(!=|==|=)\s*(\S*)", term):
            equal = labels.get(m[1]) == m[3]
            if equal != (m[2] != "!="):
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_matches(obj: Mapping[str, Any], selector: str) -> bool:
    """Field selectors on ``metadata.name`` and ``metadata.namespace`` (what clients use)."""
    meta = obj.get("metadata") or {}
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        key, op, value = re.fullmatch(r"([^!=]+)(!=|==|=)(.*)", term).groups()  # type: ignore[union-attr]
        actual = meta.get(key.removeprefix("metadata.")) if key.startswith("metadata.") else None
        if (actual == value) != (op != "!="):
            return False
    return True


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with the API server behaviour listed in the module docstring."""

    writes: list[Write] = attrs.field(factory=list, init=False)
    # Tests inject API failures here: a function of the request returning (status, message), or None.
    faults: list[Any] = attrs.field(factory=list, init=False)
    _rv: int = attrs.field(default=0, init=False)

    # Declaring resources.

    def declare(self, key: str, kind: str, namespaced: bool, subresources: list[str], **info: Any) -> None:
        self.resources[key] = kmock.ResourceInfo(
            kind=kind, namespaced=namespaced, verbs=set(VERBS), subresources=set(subresources), **info
        )

    def declare_builtins(self) -> None:
        for key, info in BUILTIN.items():
            self.declare(key, **info)

    def declare_crd(self, crd: Mapping[str, Any]) -> None:
        spec, names = crd["spec"], crd["spec"]["names"]
        for version in spec["versions"]:
            if version.get("served", True):
                self.declare(
                    f"{spec['group']}/{version['name']}/{names['plural']}",
                    kind=names["kind"],
                    namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                    subresources=sorted((version.get("subresources") or {}).keys()),
                    singular=names.get("singular"),
                    shortnames=set(names.get("shortNames") or ()),
                    categories=set(names.get("categories") or ()),
                )

    def info(self, resource: kmock.resource) -> kmock.ResourceInfo:
        if resource.plural is None or resource not in self.resources:
            raise error(404, "NotFound", f"the server could not find the requested resource {resource}")
        return self.resources[resource]  # type: ignore[return-value]

    # Reading (synchronous: no await between the check and the answer).

    def find(self, resource: kmock.resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def find_all(
        self, resource: kmock.resource, namespace: str | None = None, labels: str = "", fields: str = ""
    ) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(obj.raw)
            for (res, ns, _), obj in list(self.objects.items())
            if res == resource and not obj.deleted and (namespace is None or ns == namespace)
            if label_matches((obj.raw.get("metadata") or {}).get("labels") or {}, labels)
            and field_matches(obj.raw, fields)
        ]

    # Writing: the server-side operations (tests playing controllers call these directly).

    async def _store(self, resource: kmock.resource, kind: str, obj: dict[str, Any], deleted: bool = False) -> None:
        meta = obj["metadata"]
        key = (resource, meta.get("namespace"), meta["name"])
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        if deleted:
            self.objects[key].delete()
        elif key in self.objects:
            self.objects[key].history.append(copy.deepcopy(obj))
        else:
            self.objects[key] = copy.deepcopy(obj)
        self.writes.append(Write(self._rv, kind, resource, key[1], key[2], copy.deepcopy(obj)))
        await self._buses[resource].put({"type": kind, "object": copy.deepcopy(obj)})

    async def apply_create(
        self, resource: kmock.resource, namespace: str | None, body: Mapping[str, Any]
    ) -> dict[str, Any]:
        info = self.info(resource)
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        if info.namespaced:
            if not namespace or meta.get("namespace") not in (None, namespace):
                raise error(400, "BadRequest", "the namespace of the object does not match the request")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if not meta.get("name"):
            raise error(422, "Invalid", "metadata.name: Required value")
        async with self._lock:
            if self.find(resource, meta.get("namespace"), meta["name"]) is not None:
                raise error(409, "AlreadyExists", f"{resource.plural} {meta['name']!r} already exists")
            if "status" in info.subresources:
                obj.pop("status", None)
            group = f"{resource.group}/" if resource.group else ""
            obj.setdefault("apiVersion", f"{group}{resource.version}")
            obj.setdefault("kind", info.kind)
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_rfc3339(), generation=1)
            await self._store(resource, "ADDED", obj)
            return copy.deepcopy(obj)

    def _current(self, resource: kmock.resource, namespace: str | None, name: str) -> dict[str, Any]:
        current = self.find(resource, namespace, name)
        if current is None:
            raise error(404, "NotFound", f"{resource.plural} {name!r} not found")
        return current

    async def apply_patch(
        self,
        resource: kmock.resource,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        content_type: str = MERGE,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """PATCH, including ``/status`` and ``/scale``; a Scale answers for ``/scale``."""
        info = self.info(resource)
        if subresource is not None and subresource not in info.subresources:
            raise error(404, "NotFound", f"{resource.plural}/{subresource} is not served")
        async with self._lock:
            old = self._current(resource, namespace, name)
            target = scale_of(old) if subresource == "scale" else old
            new = self._patched(target, patch, content_type)
            if subresource == "scale":
                new = merge_patch(old, {"spec": {"replicas": (new.get("spec") or {}).get("replicas", 0)}})
            stored = await self._update(resource, info, old, new, subresource)
            return scale_of(stored) if subresource == "scale" else stored

    def _patched(self, target: dict[str, Any], patch: Any, content_type: str) -> dict[str, Any]:
        if content_type.startswith(JSON_PATCH):
            try:
                return dict(jsonpatch.apply_patch(target, patch, in_place=False))
            except jsonpatch.JsonPatchTestFailed as exc:
                raise error(422, "Invalid", f"the test operation failed: {exc}") from exc
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise error(422, "Invalid", f"the JSON patch does not apply: {exc}") from exc
        if content_type.startswith((MERGE, STRATEGIC)) and isinstance(patch, Mapping):
            wanted = (patch.get("metadata") or {}).get("resourceVersion")
            if wanted is not None and wanted != target["metadata"].get("resourceVersion"):
                raise error(409, "Conflict", "the object has been modified; apply the change to the latest version")
            return dict(merge_patch(target, patch))
        raise error(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}")

    async def apply_replace(
        self,
        resource: kmock.resource,
        namespace: str | None,
        name: str,
        body: Mapping[str, Any],
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """PUT: the whole object (or Scale); a given resourceVersion must be the current one."""
        info = self.info(resource)
        async with self._lock:
            old = self._current(resource, namespace, name)
            wanted = (body.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != old["metadata"]["resourceVersion"]:
                raise error(409, "Conflict", "the object has been modified; apply the change to the latest version")
            if subresource == "scale":
                new = merge_patch(old, {"spec": {"replicas": (body.get("spec") or {}).get("replicas", 0)}})
            else:
                new = {**copy.deepcopy(dict(body)), "metadata": {**old["metadata"], **(body.get("metadata") or {})}}
            stored = await self._update(resource, info, old, new, subresource)
            return scale_of(stored) if subresource == "scale" else stored

    async def _update(
        self,
        resource: kmock.resource,
        info: kmock.ResourceInfo,
        old: dict[str, Any],
        new: dict[str, Any],
        sub: str | None,
    ) -> dict[str, Any]:
        if "status" in info.subresources:
            if sub == "status":
                new = (
                    {**old, "status": new.get("status")}
                    if new.get("status") is not None
                    else {k: v for k, v in old.items() if k != "status"}
                )
            elif "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        for key in (
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
        ):
            if key in old["metadata"]:
                meta[key] = old["metadata"][key]
            else:
                meta.pop(key, None)
        if new == old:
            return old  # nothing changed: no new version, no event
        if {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
            k: v for k, v in old.items() if k not in ("metadata", "status")
        }:
            meta["generation"] = int(old["metadata"].get("generation") or 0) + 1
        released = meta.get("deletionTimestamp") and not meta.get("finalizers")
        await self._store(resource, "MODIFIED", new)
        if released:
            await self._store(resource, "DELETED", copy.deepcopy(new), deleted=True)
        return copy.deepcopy(new)

    async def apply_delete(self, resource: kmock.resource, namespace: str | None, name: str) -> dict[str, Any]:
        self.info(resource)
        async with self._lock:
            obj = self._current(resource, namespace, name)
            meta = obj["metadata"]
            if meta.get("finalizers"):
                if not meta.get("deletionTimestamp"):
                    meta["deletionTimestamp"] = now_rfc3339()
                    await self._store(resource, "MODIFIED", obj)
                return obj
            await self._store(resource, "DELETED", obj, deleted=True)
            return obj

    # HTTP.

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        own = res is not None and res.plural is not None and res in self.resources
        if not own or request.action == kmock.action.WATCH:
            return await super()._handle(request)
        for fault in self.faults:
            failed = fault(request)
            if failed is not None:
                return await self._render_error(
                    error(failed[0], "Forbidden" if failed[0] == 403 else "Error", failed[1])
                )
        try:
            status, body = await self._serve(request)
        except kmock.KubernetesError as exc:
            return await self._render_error(exc)
        return aiohttp.web.json_response(body, status=status)

    async def _serve(self, request: kmock.Request) -> tuple[int, Any]:
        res, ns, name, sub = request.resource, request.namespace, request.name, request.subresource
        assert res is not None
        method = str(request.method.value).upper()
        data = request.data if request.data is not None else (json.loads(request.text) if request.text else None)
        if method == "GET" and name is None:
            items = self.find_all(
                res, ns, request.params.get("labelSelector", ""), request.params.get("fieldSelector", "")
            )
            kind = f"{self.info(res).kind}List"
            return 200, {
                "apiVersion": "v1",
                "kind": kind,
                "metadata": {"resourceVersion": str(self._rv)},
                "items": items,
            }
        if method == "GET":
            obj = self._current(res, ns, name)
            return 200, scale_of(obj) if sub == "scale" else obj
        if method == "POST" and name is None:
            return 201, await self.apply_create(res, ns, data or {})
        if method == "PATCH" and name is not None:
            content_type = request.headers.get("Content-Type", MERGE)
            return 200, await self.apply_patch(res, ns, name, data, content_type=content_type, subresource=sub)
        if method == "PUT" and name is not None:
            return 200, await self.apply_replace(res, ns, name, data or {}, sub)
        if method == "DELETE" and name is not None:
            return 200, await self.apply_delete(res, ns, name)
        raise error(405, "MethodNotAllowed", f"{method} is not supported here")

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        """Watch with selectors; from a resourceVersion it replays later writes, else lists first."""
        yield b""  # send the headers now, even if nothing happens
        res = request.resource
        assert res is not None
        labels, fields = request.params.get("labelSelector", ""), request.params.get("fieldSelector", "")
        since = request.params.get("resourceVersion", "")
        bus = self._buses[res]

        def wanted(event: Mapping[str, Any]) -> bool:
            obj = event.get("object") or {}
            meta = obj.get("metadata") or {}
            return (
                (request.namespace is None or meta.get("namespace") == request.namespace)
                and label_matches(meta.get("labels") or {}, labels)
                and field_matches(obj, fields)
            )

        async with self._lock:
            mark = await bus.mark()
            if since and since != "0":
                backlog = [
                    {"type": w.type, "object": w.object} for w in self.writes if w.rv > int(since) and w.resource == res
                ]
            else:
                backlog = [{"type": "ADDED", "object": o} for o in self.find_all(res, request.namespace)]
        try:
            for event in backlog:
                if wanted(event):
                    yield event
            async for event in bus.stream(since=mark):
                if wanted(event):
                    yield event
        finally:
            await bus.unmark(mark)


def scale_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The autoscaling/v1 Scale of an object with spec.replicas/status.replicas."""
    meta = obj["metadata"]
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta
        },
        "spec": {"replicas": int((obj.get("spec") or {}).get("replicas") or 0)},
        "status": {"replicas": int((obj.get("status") or {}).get("replicas") or 0), "selector": ""},
    }


def load_crd(path: Path, fallback: Mapping[str, Any]) -> dict[str, Any]:
    """The CRD from its YAML file when it exists, else a minimal definition."""
    if path.is_file():
        return dict(yaml.safe_load(path.read_text()))
    return copy.deepcopy(dict(fallback))


def kubeconfig(server: str, namespace: str) -> str:
    """A kubeconfig for a plain-HTTP, unauthenticated API server (both kopf and the client read it)."""
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": server}}],
            "users": [{"name": "kmock", "user": {}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": namespace}}],
            "current-context": "kmock",
        }
    )
