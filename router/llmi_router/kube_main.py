"""`llmi router --kubernetes`: the router alone, with LocalModels and the operator as its control
plane. Credentials come from the pod's service account, else the kubeconfig; ``--kube-server`` talks
to an explicit URL without credentials (``kubectl proxy``, tests)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys

from llmi.settings import Settings
from llmi_router.app import serve_app
from llmi_router.kube.app import build_kube_app
from llmi_router.kube.client import KubeClient, connect
from llmi_router.kube.control import KubeControlPlane
from llmi_router.kube.publish import Timing
from llmi_router.metrics import RouterMetrics

log = logging.getLogger("llmi.router")


def run_router(args: argparse.Namespace, settings: Settings) -> int:
    if not args.kubernetes:
        print(
            "llmi router: only the Kubernetes backend exists for `router` (add --kubernetes); "
            "to serve the models of this machine, run `llmi serve`",
            file=sys.stderr,
        )
        return 2
    updates = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    settings = settings.model_copy(update=updates)
    try:
        configuration, namespace = asyncio.run(connect(args.kube_server, args.namespace))
    except Exception as exc:  # the CLI boundary: no usable kubeconfig or service account is one line
        print(f"llmi router: no Kubernetes configuration: {exc}", file=sys.stderr)
        return 2
    router_id = args.router_id or socket.gethostname()  # the pod's name in a pod
    timing = Timing(touch_s=args.last_request_interval)
    metrics = RouterMetrics()
    control = KubeControlPlane(
        KubeClient(configuration, namespace), settings, metrics, router_id=router_id, timing=timing
    )
    app = build_kube_app(control, settings, metrics)
    log.info(
        "router %s on %s:%d; LocalModels in namespace %s at %s",
        router_id,
        settings.host,
        settings.port,
        namespace,
        configuration.host,
    )
    return serve_app(app, settings)
