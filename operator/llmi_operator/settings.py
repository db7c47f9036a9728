"""The operator's configuration: one pydantic-settings object read from ``LLMI_*`` variables.

The variables named in docs/kubernetes.md ("Operator configuration") are the contract with the
chart and the manifests; the others are tuning knobs with defaults that suit a real cluster and
that tests shorten. Nothing else in the operator reads ``os.environ``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

GIB = 1024**3


class OperatorSettings(BaseSettings):
    """Configuration of ``llmi operator`` (environment variables ``LLMI_*``)."""

    model_config = SettingsConfigDict(env_prefix="LLMI_", extra="ignore")

    # The contract (docs/kubernetes.md).
    namespace: str = Field("default", description="Namespace whose LocalModels the operator serves.")
    models_dir: Path = Field(Path("/models"), description="Where the models volume is mounted in the operator.")
    models_pvc: str = Field("llmi-models", description="PersistentVolumeClaim the runtime pods mount at /models.")
    runtime_image: str = Field("llmi-runtime:latest", description="Image running `llmi runtime`.")
    vllm_image: str = Field(
        "", description="Image running `vllm serve`; empty: engine auto never picks vLLM, engine vllm fails."
    )
    node_budget_gb: float = Field(
        8.0, gt=0, description="Model memory per node in GiB, unless the node says `llmi.dev/memory-budget`."
    )
    gpu_mode: Literal["shared", "exclusive"] = Field(
        "shared",
        description="shared: runtime pods share the GPU (the operator is the memory scheduler); "
        "exclusive: each requests nvidia.com/gpu: 1.",
    )
    discovery_interval_s: float = Field(60.0, gt=0, description="Seconds between scans of the models folder.")

    # Tuning (not part of the contract).
    reconcile_interval_s: float = Field(
        10.0, gt=0, description="Seconds between reconciles of each model (readiness, pods gone, idle timeout)."
    )
    retry_delay_s: float = Field(
        2.0, gt=0, description="Seconds before a model waiting for room (victims' pods to go) is retried."
    )
    offload_auto: bool = Field(
        False,
        description="Offload models with placement auto above offload_gpu_gb (`llmi operator` takes "
        "LLM_ENABLE_GPU_MEMORY_OFFLOAD when this is not set).",
    )
    budget_utilization: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Fraction of each node budget planned (`llmi operator` takes LLM_GPU_MEMORY_UTILIZATION "
        "when this is not set).",
    )
    offload_gpu_gb: float = Field(
        4.0, gt=0, description="GiB of GPU memory a model with placement offload takes from the node budget."
    )
    max_model_len: int = Field(
        16384, ge=16, description="Context length the catalog assumes when it estimates chat models (tokens)."
    )
    termination_grace_s: int = Field(
        45, ge=1, description="Seconds a runtime pod gets to drain (the runtime itself waits 30 s for requests)."
    )
    startup_probe_failures: int = Field(
        180, ge=1, description="Startup probe attempts, 5 s apart, before a loading pod is restarted (15 min)."
    )
    request_timeout_s: float = Field(30.0, gt=0, description="Timeout of one Kubernetes API call (s).")
    drain_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Seconds a victim may take to finish its requests in flight before it is scaled to zero "
        "anyway (what is still running then is cut).",
    )
    drain_grace_s: float = Field(
        3.0,
        ge=0,
        description="Seconds after marking a victim before its routers' reports are believed: time for every "
        "router to see the mark and report what it admitted just before.",
    )
    report_stale_s: float = Field(
        90.0,
        gt=0,
        description="A router's in-flight report older than this is ignored (that router is gone); routers "
        "refresh busy reports every 30 s.",
    )

    @property
    def node_budget_bytes(self) -> int:
        return int(self.node_budget_gb * GIB)

    @property
    def offload_gpu_bytes(self) -> int:
        return int(self.offload_gpu_gb * GIB)
