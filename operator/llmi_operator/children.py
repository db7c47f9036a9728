"""Desired Deployment and Service of a LocalModel: pure functions from the spec and the placement.

Why pure: the reconciler compares these with what it observes through a hash of the whole desired
child (the ``llmi.dev/spec-hash`` annotation), so running a handler twice creates or changes
nothing the second time, and the pod spec can be tested field by field without a cluster.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from llmi.localmodel import (
    ANNOTATION_FOOTPRINT,
    ANNOTATION_GPU_MEMORY,
    ANNOTATION_PLACEMENT,
    ANNOTATION_SPEC_HASH,
    API_VERSION,
    KIND,
    LABEL_MANAGED_BY,
    LABEL_MODEL,
    LABEL_NAME,
    OPERATOR_APP,
    PORT,
    PORT_NAME,
    RUNTIME_APP,
    child_name,
    service_url,
)
from llmi.localmodel import label_value as to_label_value
from llmi.modeltypes import ModelType
from llmi.planner import PlacementKind
from llmi.settings import Settings
from llmi.vllm import VllmLaunch
from llmi.vllm import vllm_args as shared_vllm_args
from llmi_operator.localmodel import InvalidSpec, ModelRef, ModelSpec
from llmi_operator.settings import OperatorSettings

HOSTNAME_LABEL = "kubernetes.io/hostname"
MODELS_MOUNT = "/models"
TMP_MOUNT = "/tmp"
CONTAINER = "runtime"
USER_ID = 10001  # the images' own non-root user

Engine = Literal["transformers", "vllm"]


@dataclass(frozen=True)
class ChildConfig:
    """The operator-wide inputs of every child (images, volume, GPU mode, probe and drain timing)."""

    runtime_image: str
    vllm_image: str
    models_pvc: str
    gpu_mode: Literal["shared", "exclusive"]
    termination_grace_s: int
    startup_probe_failures: int
    # LLM_VLLM_* (llmi.settings), so that pods start vLLM as `llmi serve` does.
    vllm_max_model_len: int | None = None
    vllm_dtype: str = "auto"
    vllm_tensor_parallel_size: int = 1

    @classmethod
    def from_settings(cls, settings: OperatorSettings) -> ChildConfig:
        shared = Settings()
        return cls(
            runtime_image=settings.runtime_image,
            vllm_image=settings.vllm_image,
            models_pvc=settings.models_pvc,
            gpu_mode=settings.gpu_mode,
            termination_grace_s=settings.termination_grace_s,
            startup_probe_failures=settings.startup_probe_failures,
            vllm_max_model_len=shared.vllm_max_model_len,
            vllm_dtype=shared.vllm_dtype,
            vllm_tensor_parallel_size=shared.vllm_tensor_parallel_size,
        )


@dataclass(frozen=True)
class Placed:
    """Where the runtime pod goes and what it takes: the budget's decision, or the last one kept."""

    node: str | None  # None: not pinned (cpu placement, or never placed yet)
    placement: PlacementKind
    footprint_bytes: int
    memory_bytes: int
    gpu_memory_bytes: int | None = None  # the node's total GPU memory when its labels say so


def endpoint(ref: ModelRef) -> str:
    return service_url(ref.name, ref.namespace)


def selector_labels(model: str) -> dict[str, str]:
    return {LABEL_NAME: RUNTIME_APP, LABEL_MODEL: to_label_value(model)}


def child_labels(model: str) -> dict[str, str]:
    return {**selector_labels(model), LABEL_MANAGED_BY: OPERATOR_APP}


def owner_reference(ref: ModelRef) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": ref.name,
        "uid": ref.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def resolve_engine(spec: ModelSpec, placement: PlacementKind, vllm_image: str) -> Engine:
    """vLLM for chat on a GPU when asked for (or auto with a vLLM image configured), else transformers."""
    if spec.engine == "vllm":
        if placement == "cpu":
            raise InvalidSpec("engine vllm needs a GPU; placement cpu asks for none")
        if not vllm_image:
            raise InvalidSpec("engine vllm is asked for but the operator has no LLMI_VLLM_IMAGE")
        return "vllm"
    if spec.engine == "auto" and spec.type is ModelType.CHAT and placement == "gpu" and vllm_image:
        return "vllm"
    return "transformers"


def _has_flag(args: tuple[str, ...], flag: str) -> bool:
    return any(a == flag or a.startswith(f"{flag}=") for a in args)


def runtime_args(ref: ModelRef, spec: ModelSpec, placed: Placed) -> list[str]:
    """Flags of ``llmi runtime`` (llmi/runtime_args.py) for this model and placement."""
    args = ["--model", f"{MODELS_MOUNT}/{spec.path}", "--name", ref.name, "--type", spec.type.value]
    args += ["--host", "0.0.0.0", "--port", str(PORT), "--placement", placed.placement]
    if placed.placement == "offload":
        args += ["--max-gpu-memory", str(placed.footprint_bytes)]
    if placed.placement == "cpu":
        args += ["--device", "cpu"]
    return args + list(spec.engine_args)


def vllm_args(ref: ModelRef, spec: ModelSpec, placed: Placed, config: ChildConfig | None = None) -> list[str]:
    """Arguments of ``vllm serve``, from the builder `llmi serve` uses too (llmi/vllm.py); a flag the
    user already gives in engineArgs is never added twice."""
    config = config or ChildConfig("", "", "", "shared", 0, 0)
    launch = VllmLaunch(
        model_path=f"{MODELS_MOUNT}/{spec.path}",
        served_name=ref.name,
        host="0.0.0.0",
        port=PORT,
        placement="offload" if placed.placement == "offload" else "gpu",
        footprint_bytes=placed.footprint_bytes,
        memory_bytes=placed.memory_bytes,
        gpu_memory_bytes=placed.gpu_memory_bytes,
        max_model_len=config.vllm_max_model_len,
        dtype=config.vllm_dtype,
        tensor_parallel_size=config.vllm_tensor_parallel_size,
        engine_args=tuple(spec.engine_args),
    )
    return shared_vllm_args(launch)


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _env(engine: Engine, placed: Placed, gpu_mode: str) -> list[dict[str, str]]:
    env = {
        "HOME": TMP_MOUNT,
        "HF_HOME": f"{TMP_MOUNT}/hf-home",
        "XDG_CACHE_HOME": f"{TMP_MOUNT}/cache",
        "HF_HUB_OFFLINE": "1",  # models come from the volume; a pod never downloads
        "TRANSFORMERS_OFFLINE": "1",
    }
    if engine == "vllm":
        env["VLLM_NO_USAGE_STATS"] = "1"
    if placed.placement != "cpu" and gpu_mode == "shared":
        env["NVIDIA_VISIBLE_DEVICES"] = "all"  # no device-plugin request: the operator schedules memory
    return [{"name": k, "value": v} for k, v in env.items()]


def _resources(spec: ModelSpec, placed: Placed, gpu_mode: str) -> dict[str, Any]:
    resources = copy.deepcopy(dict(spec.resources))
    if placed.placement != "cpu" and gpu_mode == "exclusive":
        resources.setdefault("limits", {})["nvidia.com/gpu"] = 1
    return resources


def _container(ref: ModelRef, spec: ModelSpec, placed: Placed, config: ChildConfig) -> dict[str, Any]:
    engine = resolve_engine(spec, placed.placement, config.vllm_image)
    vllm = engine == "vllm"
    mounts = [
        {"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": TMP_MOUNT},
    ]
    if vllm:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return {
        "name": CONTAINER,
        "image": config.vllm_image if vllm else config.runtime_image,
        "command": ["vllm", "serve"] if vllm else ["llmi", "runtime"],
        "args": vllm_args(ref, spec, placed, config) if vllm else runtime_args(ref, spec, placed),
        "ports": [{"name": PORT_NAME, "containerPort": PORT, "protocol": "TCP"}],
        "env": _env(engine, placed, config.gpu_mode),
        "resources": _resources(spec, placed, config.gpu_mode),
        "readinessProbe": _probe("/health" if vllm else "/readyz", 5, 3),
        "livenessProbe": _probe("/health" if vllm else "/healthz", 10, 3),
        # Big models take minutes to load; liveness only starts once the server answers.
        "startupProbe": _probe("/health" if vllm else "/healthz", 5, config.startup_probe_failures),
        "volumeMounts": mounts,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": USER_ID,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }


def _volumes(vllm: bool, pvc: str) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "models", "persistentVolumeClaim": {"claimName": pvc, "readOnly": True}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if vllm:
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}})
    return volumes


def pod_spec(ref: ModelRef, spec: ModelSpec, placed: Placed, config: ChildConfig) -> dict[str, Any]:
    container = _container(ref, spec, placed, config)
    node_selector = dict(spec.node_selector)
    if placed.node is not None:
        node_selector[HOSTNAME_LABEL] = placed.node  # the node whose budget holds this model
    pod: dict[str, Any] = {
        "containers": [container],
        "volumes": _volumes(container["command"][0] == "vllm", config.models_pvc),
        "terminationGracePeriodSeconds": config.termination_grace_s,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": USER_ID,
            "runAsGroup": USER_ID,
            "fsGroup": USER_ID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if node_selector:
        pod["nodeSelector"] = node_selector
    if spec.tolerations:
        pod["tolerations"] = [dict(t) for t in spec.tolerations]
    return pod


def _metadata(ref: ModelRef) -> dict[str, Any]:
    return {
        "name": child_name(ref.name),
        "namespace": ref.namespace,
        "labels": child_labels(ref.name),
        "ownerReferences": [owner_reference(ref)],
    }


def desired_deployment(
    ref: ModelRef, spec: ModelSpec, placed: Placed, replicas: int, config: ChildConfig
) -> dict[str, Any]:
    """The runtime Deployment: Recreate, so a new pod never runs beside the old one on the budget."""
    template_annotations = {ANNOTATION_FOOTPRINT: str(placed.footprint_bytes), ANNOTATION_PLACEMENT: placed.placement}
    if placed.gpu_memory_bytes:  # kept so that a later pass derives the same pod (vLLM's memory share)
        template_annotations[ANNOTATION_GPU_MEMORY] = str(placed.gpu_memory_bytes)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(ref),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(ref.name)},
            "strategy": {"type": "Recreate"},
            "revisionHistoryLimit": 2,
            "template": {
                "metadata": {"labels": child_labels(ref.name), "annotations": template_annotations},
                "spec": pod_spec(ref, spec, placed, config),
            },
        },
    }
    return with_spec_hash(deployment)


def desired_service(ref: ModelRef) -> dict[str, Any]:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(ref),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(ref.name),
            "ports": [{"name": PORT_NAME, "port": PORT, "targetPort": PORT_NAME, "protocol": "TCP"}],
        },
    }
    return with_spec_hash(service)


def spec_hash(obj: Mapping[str, Any]) -> str:
    """Hash of the whole desired child, its own hash annotation left out."""
    clean = copy.deepcopy(dict(obj))
    clean.get("metadata", {}).get("annotations", {}).pop(ANNOTATION_SPEC_HASH, None)
    return hashlib.sha256(json.dumps(clean, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def with_spec_hash(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"].setdefault("annotations", {})[ANNOTATION_SPEC_HASH] = spec_hash(obj)
    return obj


def _pointer(*parts: str) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def patch_ops(observed: Mapping[str, Any], desired: Mapping[str, Any]) -> list[dict[str, Any]]:
    """JSON-patch ops turning ``observed`` into ``desired``; empty when their spec hashes agree.

    Our labels and annotations are set key by key (others' keys stay); each top-level spec field is
    replaced whole, so a field dropped from the desired pod template really goes away.
    """
    meta = observed.get("metadata") or {}
    want = desired["metadata"]
    if (meta.get("annotations") or {}).get(ANNOTATION_SPEC_HASH) == want["annotations"][ANNOTATION_SPEC_HASH]:
        return []
    ops: list[dict[str, Any]] = []
    for key in ("labels", "annotations"):
        if key not in meta or not isinstance(meta[key], Mapping):
            ops.append({"op": "add", "path": _pointer("metadata", key), "value": want[key]})
        else:
            ops += [{"op": "add", "path": _pointer("metadata", key, k), "value": v} for k, v in want[key].items()]
    ops.append({"op": "add", "path": "/metadata/ownerReferences", "value": want["ownerReferences"]})
    if "spec" not in observed:
        ops.append({"op": "add", "path": "/spec", "value": desired["spec"]})
    else:
        ops += [{"op": "add", "path": _pointer("spec", k), "value": v} for k, v in desired["spec"].items()]
    return ops
