"""`llmi operator`: run the kopf operator for one namespace."""

from __future__ import annotations

import argparse

import kopf

from llmi.settings import Settings
from llmi_operator.handlers import register
from llmi_operator.settings import OperatorSettings


def operator_settings(args: argparse.Namespace, settings: Settings) -> OperatorSettings:
    """``LLMI_*`` from the environment, with the command line's choices on top.

    The original tool's settings keep their meaning where no ``LLMI_*`` value is set:
    ``LLM_GPU_MEMORY_OFFLOAD_THRESHOLD_GB`` (GPU share of an offloaded model),
    ``LLM_ENABLE_GPU_MEMORY_OFFLOAD`` (offload big models with placement auto) and
    ``LLM_GPU_MEMORY_UTILIZATION`` (fraction of each node budget planned); the chart sets all three.
    """
    overrides = {k: v for k, v in {"namespace": args.namespace, "models_dir": args.models_dir}.items() if v}
    config = OperatorSettings(**overrides)
    inherited = {
        "offload_gpu_gb": settings.gpu_memory_offload_threshold_gb,
        "offload_auto": settings.enable_gpu_memory_offload,
        "budget_utilization": settings.gpu_memory_utilization,
    }
    return config.model_copy(update={k: v for k, v in inherited.items() if k not in config.model_fields_set})


def run_operator(args: argparse.Namespace, settings: Settings) -> int:
    """Serve LocalModels of one namespace until interrupted; standalone (no peering) by default."""
    config = operator_settings(args, settings)
    registry = kopf.OperatorRegistry()
    register(registry, config)
    kopf.run(
        registry=registry,
        standalone=args.standalone,
        clusterwide=False,
        namespaces=[config.namespace],
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(),
    )
    return 0
