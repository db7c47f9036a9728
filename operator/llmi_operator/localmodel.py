"""A LocalModel body read into frozen, validated values, plus the names the contract fixes.

Why a typed view: every decision (children, budget, status) works on these values, so a bad
spec is found once, here, and becomes one clear ``InvalidSpec`` message instead of a KeyError
somewhere in a handler.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

from llmi.catalog.scan import parse_duration, parse_size
from llmi.modeltypes import ModelType
from llmi.planner import PlacementOverride

GROUP = "llmi.dev"
VERSION = "v1alpha1"
PLURAL = "localmodels"
KIND = "LocalModel"
API_VERSION = f"{GROUP}/{VERSION}"

LABEL_MODEL = "llmi.dev/model"
LABEL_DISCOVERED = "llmi.dev/discovered"
ANNOTATION_LAST_REQUEST = "llmi.dev/last-request-time"
ANNOTATION_EVICTED_BY = "llmi.dev/evicted-by"
ANNOTATION_NODE_BUDGET = "llmi.dev/memory-budget"

Engine = Literal["auto", "transformers", "vllm"]
ENGINES: tuple[str, ...] = ("auto", "transformers", "vllm")
PLACEMENTS: tuple[str, ...] = ("auto", "gpu", "offload", "cpu")
QUANTITY_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGTPE]i|[kKMGTPE])?\s*$")
QUANTITY_UNITS = {None: 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
QUANTITY_UNITS |= {f"{p}i": 1024 ** (i + 1) for i, p in enumerate("KMGTPE")}
DNS_LABEL_MAX = 63


class InvalidSpec(ValueError):
    """The spec cannot be served as written; the message says which field and why."""


@dataclass(frozen=True)
class ModelSpec:
    path: str
    type: ModelType
    engine: Engine = "auto"
    placement: PlacementOverride = "auto"
    memory_bytes: int | None = None
    replicas: int = 0
    idle_timeout_s: float | None = 600.0  # None: never scaled to zero for idleness
    pinned: bool = False
    engine_args: tuple[str, ...] = ()
    resources: Mapping[str, Any] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class ModelRef:
    """Identity of one LocalModel: enough to name, own and label its children."""

    name: str
    namespace: str
    uid: str


def parse_quantity(value: Any) -> int:
    """Bytes from an integer or a Kubernetes quantity (``6Gi``, ``512Mi``, ``6G``); also ``6GiB``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = QUANTITY_RE.match(value)
        if match:
            return int(float(match[1]) * QUANTITY_UNITS[match[2]])
        try:
            return parse_size(value)
        except ValueError:
            pass
    raise InvalidSpec(f"memory {value!r} is not a byte count or a quantity such as 6Gi, 512Mi or 6G")


def parse_idle_timeout(value: Any) -> float | None:
    """Seconds from ``90s``/``10m``/``1h`` (or a number); ``"0"``/0 means never."""
    if value in ("0", 0):
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise InvalidSpec(f'idleTimeout {value!r} is not a duration such as 90s, 10m, 1h or "0"') from exc


def _check_path(path: Any) -> str:
    if not isinstance(path, str) or not path:
        raise InvalidSpec("path must be a non-empty string")
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidSpec(f"path {path!r} must be relative to the models volume, without '..' or empty parts")
    return path


def _choice(spec: Mapping[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = spec.get(key, default)
    if value not in choices:
        raise InvalidSpec(f"{key} {value!r} is not one of {', '.join(choices)}")
    return str(value)


def parse_spec(spec: Mapping[str, Any]) -> ModelSpec:
    """The validated spec; raises InvalidSpec naming the first bad field."""
    try:
        model_type = ModelType(spec.get("type"))
    except ValueError:
        raise InvalidSpec(f"type {spec.get('type')!r} is not one of {', '.join(t.value for t in ModelType)}") from None
    engine = cast(Engine, _choice(spec, "engine", ENGINES, "auto"))
    if engine == "vllm" and model_type is not ModelType.CHAT:
        raise InvalidSpec(f"engine vllm serves chat models only, this is a {model_type} model")
    replicas = spec.get("replicas", 0)
    if replicas not in (0, 1) or isinstance(replicas, bool):
        raise InvalidSpec(f"replicas {replicas!r} must be 0 or 1")
    args = spec.get("engineArgs") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise InvalidSpec("engineArgs must be a list of strings")
    selector = spec.get("nodeSelector") or {}
    if not isinstance(selector, Mapping) or not all(isinstance(v, str) for v in selector.values()):
        raise InvalidSpec("nodeSelector must map label names to strings")
    tolerations = spec.get("tolerations") or []
    if not isinstance(tolerations, list) or not all(isinstance(t, Mapping) for t in tolerations):
        raise InvalidSpec("tolerations must be a list of objects")
    resources = spec.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise InvalidSpec("resources must be an object")
    pinned = spec.get("pinned", False)
    if not isinstance(pinned, bool):
        raise InvalidSpec("pinned must be true or false")
    memory = spec.get("memory")
    return ModelSpec(
        path=_check_path(spec.get("path")),
        type=model_type,
        engine=engine,
        placement=cast(PlacementOverride, _choice(spec, "placement", PLACEMENTS, "auto")),
        memory_bytes=None if memory is None else parse_quantity(memory),
        replicas=int(replicas),
        idle_timeout_s=parse_idle_timeout(spec.get("idleTimeout", "10m")),
        pinned=pinned,
        engine_args=tuple(args),
        resources=dict(resources),
        node_selector=dict(selector),
        tolerations=tuple(dict(t) for t in tolerations),
    )


def ref_of(body: Mapping[str, Any]) -> ModelRef:
    meta = body.get("metadata") or {}
    return ModelRef(name=meta["name"], namespace=meta.get("namespace") or "", uid=meta.get("uid") or "")


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
