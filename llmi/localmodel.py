"""The LocalModel contract shared by the router and the operator: names, phases, annotations, parsing.

Why one module: the router and the operator meet only through LocalModel objects on the API
server. Every name both sides read or write (group, plural, phases, annotations, child names) and
every value both parse (quantities, times, in-flight reports, drain marks) is spelled here once;
tests/kube/test_contract.py fails if either side spells one itself. Pure: pydantic and the
standard library, no Kubernetes client.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ByteSize, TypeAdapter, ValidationError

from llmi.protocol.models import PublicState

GROUP = "llmi.dev"
VERSION = "v1alpha1"
PLURAL = "localmodels"
SINGULAR = "localmodel"
KIND = "LocalModel"
API_VERSION = f"{GROUP}/{VERSION}"

LABEL_MODEL = "llmi.dev/model"
LABEL_DISCOVERED = "llmi.dev/discovered"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
RUNTIME_APP = "llmi-runtime"
OPERATOR_APP = "llmi-operator"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # set by the EndpointSlice controller

ANNOTATION_LAST_REQUEST = "llmi.dev/last-request-time"
ANNOTATION_EVICTED_BY = "llmi.dev/evicted-by"
ANNOTATION_NODE_BUDGET = "llmi.dev/memory-budget"
ANNOTATION_DRAIN = "llmi.dev/drain"  # the operator's mark on a victim: {"for": model, "since": RFC 3339}
REPORT_PREFIX = "inflight.llmi.dev/"
# The operator's own marks on its children (the router never reads these).
ANNOTATION_SPEC_HASH = "llmi.dev/spec-hash"
ANNOTATION_FOOTPRINT = "llmi.dev/footprint"  # on the pod template: bytes of the node budget the pod holds
ANNOTATION_PLACEMENT = "llmi.dev/placement"  # on the pod template: gpu, offload or cpu
ANNOTATION_GPU_MEMORY = "llmi.dev/gpu-memory"  # on the pod template: the node's GPU bytes, when known
FINALIZER = "llmi.dev/operator"
KOPF_PREFIX = (
    "kopf.llmi.dev"  # kopf's own bookkeeping annotations  # + router id: one router's in-flight report for this model
)

PORT = 8000
PORT_NAME = "http"
DNS_LABEL_MAX = 63

Phase = Literal["Available", "Loading", "Ready", "Draining", "Evicted", "Failed"]
PHASES: tuple[Phase, ...] = ("Available", "Loading", "Ready", "Draining", "Evicted", "Failed")
# What /v1/models shows for each phase. Evicted is like Available (the next request loads it);
# a Draining model finishes what it has but takes no new requests, so it reads as unloading.
PUBLIC_STATE: dict[str, PublicState] = {
    "Available": "available",
    "Loading": "loading",
    "Ready": "ready",
    "Draining": "unloading",
    "Evicted": "available",
    "Failed": "failed",
}

_BYTES = TypeAdapter(ByteSize)
_BINARY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTPE]i)\s*$")


def parse_quantity(value: Any) -> int | None:
    """Bytes from an int or a Kubernetes quantity (``6Gi``, ``512Mi``, ``6G``; also ``6GiB``); None
    if neither. pydantic's ByteSize does the parsing; Kubernetes' ``Gi`` is its ``GiB``."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if not isinstance(value, str):
        return None
    text = _BINARY.sub(r"\1\2B", value)
    try:
        return int(_BYTES.validate_python(text))
    except ValidationError:
        return None


def parse_time(value: Any) -> float | None:
    """Seconds since the epoch from an RFC 3339 string, or None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def format_time(epoch: float) -> str:
    """RFC 3339 in UTC with a ``Z``, to the second (what Kubernetes writes)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def dns_label(text: str, max_len: int = DNS_LABEL_MAX) -> str:
    """``text`` as a DNS-1123 label: lower case, ``[a-z0-9-]``; too long → cut plus a hash of the whole."""
    label = re.sub(r"[^a-z0-9-]", "-", text.lower()).strip("-") or "x"
    if len(label) <= max_len:
        return label
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{label[: max_len - 9].rstrip('-')}-{digest}"


def label_value(text: str) -> str:
    """``text`` as a label value (at most 63 characters; cut plus a hash if longer)."""
    if len(text) <= DNS_LABEL_MAX:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{text[: DNS_LABEL_MAX - 9].rstrip('-._')}-{digest}"


def child_name(model: str) -> str:
    """``llmi-NAME`` as a DNS-1123 label: the model's Deployment and Service (and EndpointSlices' service)."""
    return dns_label(f"llmi-{model}")


def service_url(model: str, namespace: str) -> str:
    return f"http://{child_name(model)}.{namespace}.svc:{PORT}"


# In-flight reports: each router replica says, on each LocalModel it serves, how many of its
# requests are in flight there. The operator sums the fresh ones before it stops a model.


@dataclass(frozen=True)
class Report:
    """One router's in-flight count for one model, as of ``at`` (epoch seconds)."""

    router: str
    in_flight: int
    at: float


def report_key(router: str) -> str:
    return REPORT_PREFIX + dns_label(router)


def encode_report(in_flight: int, at: float) -> str:
    return json.dumps({"inFlight": in_flight, "at": format_time(at)}, separators=(",", ":"))


def reports_of(annotations: Mapping[str, str]) -> tuple[Report, ...]:
    """Every readable router report among ``annotations`` (unreadable ones are skipped)."""
    found: list[Report] = []
    for key, value in annotations.items():
        if not key.startswith(REPORT_PREFIX):
            continue
        try:
            data = json.loads(value)
            n, at = int(data["inFlight"]), parse_time(data["at"])
        except (ValueError, TypeError, KeyError):
            continue
        if at is not None and n >= 0:
            found.append(Report(key.removeprefix(REPORT_PREFIX), n, at))
    return tuple(sorted(found, key=lambda r: r.router))


def busy(reports: Iterable[Report], now: float, stale_s: float) -> int:
    """Requests in flight according to the reports newer than ``stale_s`` (a router that stopped
    refreshing its report is gone, and so are its requests)."""
    return sum(r.in_flight for r in reports if now - r.at <= stale_s)


@dataclass(frozen=True)
class Drain:
    """The operator's mark on a victim: finish what is in flight, take nothing new, then go."""

    for_model: str
    since: float


def encode_drain(drain: Drain) -> str:
    return json.dumps({"for": drain.for_model, "since": format_time(drain.since)}, separators=(",", ":"))


def drain_of(annotations: Mapping[str, str]) -> Drain | None:
    value = annotations.get(ANNOTATION_DRAIN)
    if not value:
        return None
    try:
        data = json.loads(value)
        since = parse_time(data["since"])
        return Drain(str(data["for"]), since) if since is not None else None
    except (ValueError, TypeError, KeyError):
        return None


DrainState = Literal["draining", "drained", "timed_out"]


def drain_state(
    drain: Drain, reports: Iterable[Report], now: float, *, grace_s: float, stale_s: float, timeout_s: float
) -> DrainState:
    """Whether a victim may stop. ``grace_s`` after the mark lets every router see it and report
    what it admitted just before; then fresh reports must all say zero; ``timeout_s`` bounds it."""
    if now - drain.since >= timeout_s:
        return "timed_out"
    if now - drain.since < grace_s:
        return "draining"
    return "drained" if busy(reports, now, stale_s) == 0 else "draining"


@dataclass(frozen=True)
class LocalModelView:
    """What both sides read of one LocalModel object (unknown or malformed values read as absent)."""

    name: str
    type: str
    phase: str = ""
    endpoint: str | None = None
    message: str | None = None
    memory_bytes: int | None = None
    placement: str | None = None
    replicas: int = 0
    pinned: bool = False
    created: int = 0
    last_request: float | None = None
    drain: Drain | None = None
    reports: tuple[Report, ...] = field(default=())

    @property
    def ready(self) -> bool:
        """Ready and not draining: new requests may go there (once its endpoints are ready)."""
        return self.phase == "Ready" and bool(self.endpoint) and self.drain is None

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> LocalModelView:
        meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
        annotations = meta.get("annotations") or {}
        memory = status.get("memory")
        if not isinstance(memory, int) or isinstance(memory, bool):
            memory = parse_quantity(spec.get("memory"))
        placement = status.get("placement") or (spec.get("placement") if spec.get("placement") != "auto" else None)
        replicas = spec.get("replicas")
        return cls(
            name=str(meta.get("name", "")),
            type=str(spec.get("type", "")),
            phase=str(status.get("phase") or ""),
            endpoint=(str(status["endpoint"]).rstrip("/") if status.get("endpoint") else None),
            message=status.get("message"),
            memory_bytes=memory,
            placement=placement,
            replicas=replicas if isinstance(replicas, int) and not isinstance(replicas, bool) else 0,
            pinned=spec.get("pinned") is True,
            created=int(parse_time(meta.get("creationTimestamp")) or 0),
            last_request=parse_time(annotations.get(ANNOTATION_LAST_REQUEST)),
            drain=drain_of(annotations),
            reports=reports_of(annotations),
        )
