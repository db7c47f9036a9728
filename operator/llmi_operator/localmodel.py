"""A LocalModel spec read into frozen, validated values (the names and parsers are llmi.localmodel's).

Why a typed view: every decision (children, budget, status) works on these values, so a bad
spec is found once, here, and becomes one clear ``InvalidSpec`` message instead of a KeyError
somewhere in a handler.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from llmi import localmodel as contract
from llmi.catalog.scan import parse_duration
from llmi.modeltypes import ModelType
from llmi.planner import PlacementOverride

Engine = Literal["auto", "transformers", "vllm"]
ENGINES: tuple[str, ...] = ("auto", "transformers", "vllm")
PLACEMENTS: tuple[str, ...] = ("auto", "gpu", "offload", "cpu")


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
    """Bytes from an integer or a Kubernetes quantity (the contract's parser); InvalidSpec if neither."""
    parsed = contract.parse_quantity(value)
    if parsed is not None:
        return parsed
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
        model_type = ModelType(str(spec.get("type")))
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
