"""`llmi router --kubernetes`: the router alone, with LocalModels and the operator as its control
plane. Credentials come from the pod's service account, else the kubeconfig; ``--kube-server`` talks
to an explicit URL without credentials (``kubectl proxy``, tests)."""

from __future__ import annotations

import argparse
import logging
import ssl
import sys
from pathlib import Path

from kubernetes import client, config  # the kube extra; `llmi router` says so when it is missing
from kubernetes.config.config_exception import ConfigException

from llmi.settings import Settings
from llmi_router.app import build_router_app, serve_app
from llmi_router.kube import KubeApi, KubeConnection, KubeControlPlane
from llmi_router.metrics import RouterMetrics

log = logging.getLogger("llmi.router")

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


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
        connection, namespace = load_connection(args.kube_server, args.namespace)
    except Exception as exc:  # the CLI boundary: no usable kubeconfig or service account is one line
        print(f"llmi router: no Kubernetes configuration: {exc}", file=sys.stderr)
        return 2

    metrics = RouterMetrics()
    control = KubeControlPlane(
        KubeApi(connection, namespace), settings, metrics, touch_interval_s=args.last_request_interval
    )
    app = build_router_app(control, settings, metrics, startup=control.start)
    log.info(
        "router on %s:%d; LocalModels in namespace %s at %s", settings.host, settings.port, namespace, connection.server
    )
    serve_app(app, settings)
    return 0


def load_connection(server: str | None, namespace: str | None) -> tuple[KubeConnection, str]:
    """The API server and credentials: explicit URL, else in-cluster, else kubeconfig. The
    kubernetes package only reads the configuration; requests go through httpx (async)."""
    if server:
        return KubeConnection(server=server), namespace or "default"
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
        namespace = namespace or (SERVICE_ACCOUNT / "namespace").read_text().strip()
    except ConfigException:
        config.load_kube_config(client_configuration=cfg)
        _, current = config.list_kube_config_contexts()
        namespace = namespace or (current or {}).get("context", {}).get("namespace")
    verify: ssl.SSLContext | bool = True
    if str(cfg.host).startswith("https"):
        verify = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
        if cfg.cert_file and cfg.key_file:
            verify.load_cert_chain(cfg.cert_file, cfg.key_file)
        if not cfg.verify_ssl:
            verify.check_hostname = False
            verify.verify_mode = ssl.CERT_NONE

    def authorization() -> str | None:
        # Calls the refresh hook: a rotated service-account token, an exec credential plugin.
        token: str | None = cfg.get_api_key_with_prefix("BearerToken")
        if token:
            return token
        return cfg.get_basic_auth_token() if cfg.username else None

    return KubeConnection(server=str(cfg.host), verify=verify, authorization=authorization), namespace or "default"
