"""The kind end-to-end suite: a real cluster, the real images, the chart, tiny models.

Runs where Docker (with a running engine) and kind exist, when selected with ``-m e2e``
(``make e2e``). Everywhere else every test is skipped at collection, with the reason (``-rs``
shows it), so the default ``python -m pytest`` collects this folder and moves on at once.

The session, in order: tiny models are built into a host folder; a kind cluster is created with
that folder mounted at /models on its node; the control-plane and runtime images are built with
``docker build --target ...`` and loaded with ``kind load docker-image``; the chart is installed
with ``models.hostPath=/models``, a 1 GiB node budget and short discovery and reconcile intervals;
the router's Service is port-forwarded. On a failure the report gains a section with
``kubectl get/describe/logs`` output. The cluster is always deleted at the end.

Environment knobs: ``LLMI_E2E_KEEP_CLUSTER=1`` keeps the cluster for a post-mortem,
``LLMI_E2E_REUSE_IMAGES=1`` skips ``docker build`` when the images exist,
``LLMI_E2E_TORCH_IMAGE`` overrides the runtime image's base (the Dockerfile's TORCH_IMAGE).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools" / "bin"
NAMESPACE = "llmi"
RELEASE = "llmi"
ROUTER_SERVICE = f"{RELEASE}-router"
IMAGE_TAG = "e2e"
IMAGES = {"control-plane": "llmi-control-plane", "runtime": "llmi-runtime"}
# The models the tests call; discovery names each after its folder.
MODELS = {"tiny-llama-chat": "chat", "tiny-bert-embed": "embedding", "tiny-bert-reranker": "reranker"}
# Each model's memory (the LocalModels are patched to it) and the node budget: room for one, not two.
MODEL_MEMORY = "600Mi"
NODE_BUDGET_GB = "1"
IDLE_TIMEOUT = "60s"

DIAGNOSTICS: pytest.StashKey[Kube | None] = pytest.StashKey()
MAX_DIAGNOSTICS = 3  # a broken cluster fixture fails every test: report the state a few times only


# --------------------------------------------------------------------------------------------
# Skipping


def missing_requirements() -> list[str]:
    """Why the suite cannot run here (empty: it can)."""
    reasons = []
    if shutil.which("docker") is None:
        reasons.append("docker not found on PATH")
    else:
        try:
            info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
            if info.returncode != 0:
                detail = (info.stderr.strip().splitlines() or ["no output"])[-1]
                reasons.append(f"the Docker engine is not reachable (docker info: {detail})")
        except subprocess.TimeoutExpired:
            reasons.append("the Docker engine is not reachable (docker info timed out)")
    if shutil.which("kind") is None:
        reasons.append("kind not found on PATH")
    return reasons


def e2e_selected(config: pytest.Config) -> bool:
    markexpr = str(config.getoption("markexpr", "") or "")
    return "e2e" in markexpr and not re.search(r"\bnot\s+e2e\b", markexpr)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    ours = [item for item in items if here in Path(str(item.path)).parents]
    if not ours:
        return
    reasons = missing_requirements()
    if reasons:
        reason = "kind e2e suite skipped: " + "; ".join(reasons)
    elif not e2e_selected(config):
        reason = "kind e2e suite: builds images and a cluster for minutes; run it with `make e2e` (pytest -m e2e)"
    else:
        return
    for item in ours:
        item.add_marker(pytest.mark.skip(reason=reason))


# --------------------------------------------------------------------------------------------
# Commands


def run(*args: str | Path, timeout: float = 600, env: dict[str, str] | None = None, check: bool = True) -> str:
    command = [str(a) for a in args]
    print(f"$ {' '.join(command)}", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed (rc {done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout + (done.stderr if done.returncode != 0 else "")


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def fetch_tools() -> tuple[Path, Path]:
    """helm and kubectl from .tools/bin (scripts/fetch-helm.sh fetches both)."""
    helm, kubectl = TOOLS / "helm", TOOLS / "kubectl"
    if not (os.access(helm, os.X_OK) and os.access(kubectl, os.X_OK)):
        run(ROOT / "scripts" / "fetch-helm.sh", env={**os.environ, "PYTHON": sys.executable})
    return helm, kubectl


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Kube:
    """kubectl and helm against the test cluster only (its own kubeconfig)."""

    kubectl: Path
    helm: Path
    kubeconfig: Path
    env: dict[str, str] = field(init=False)
    reports: int = 0  # diagnostics sections written so far

    def __post_init__(self) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        return run(self.kubectl, "--namespace", NAMESPACE, *args, timeout=timeout, env=self.env, check=check)

    def helm_run(self, *args: str | Path, timeout: float = 600) -> str:
        return run(self.helm, *args, timeout=timeout, env=self.env)

    def localmodels(self) -> dict[str, dict[str, Any]]:
        items = json.loads(self("get", "localmodels", "-o", "json"))["items"]
        return {item["metadata"]["name"]: item for item in items}

    def replicas(self, model: str) -> int:
        value = self("get", "lm", model, "-o", "jsonpath={.spec.replicas}").strip()
        return int(value or 0)

    def diagnostics(self) -> str:
        """What a human would look at first when something failed."""
        commands = [
            ("get", "all,localmodels,pvc", "-o", "wide"),
            ("get", "localmodels", "-o", "yaml"),
            ("describe", "localmodels"),
            ("describe", "pods"),
            ("get", "events", "--sort-by=.lastTimestamp"),
            ("logs", f"deploy/{RELEASE}-operator", "--tail=300", "--all-containers"),
            ("logs", f"deploy/{RELEASE}-router", "--tail=300", "--all-containers"),
            ("logs", "-l", "app.kubernetes.io/name=llmi-runtime", "--tail=100", "--all-containers", "--prefix"),
        ]
        parts = []
        for command in commands:
            try:
                out = self(*command, timeout=60, check=False)
            except Exception as e:  # diagnostics must not hide the original failure
                out = f"<{type(e).__name__}: {e}>"
            parts.append(f"$ kubectl -n {NAMESPACE} {' '.join(command)}\n{out}")
        return "\n".join(parts)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    kube = item.config.stash.get(DIAGNOSTICS, None)
    if report.failed and kube is not None and kube.reports < MAX_DIAGNOSTICS:
        kube.reports += 1
        report.sections.append(("kubectl diagnostics", kube.diagnostics()))


# --------------------------------------------------------------------------------------------
# The cluster


@dataclass
class Cluster:
    kube: Kube
    base_url: str  # the router, port-forwarded: http://127.0.0.1:PORT

    @property
    def openai_base_url(self) -> str:
        return f"{self.base_url}/v1"


@pytest.fixture(scope="session")
def models_dir() -> Iterator[Path]:
    """Tiny models in a host folder the kind node mounts at /models (world-readable: the pods run
    as unprivileged users)."""
    from tests.tiny_models import build_all  # torch: imported only when the suite runs

    root = Path(tempfile.mkdtemp(prefix="llmi-e2e-models-"))
    try:
        built = build_all(root)
        assert set(MODELS) <= set(built), sorted(built)
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def build_images(cluster_name: str) -> None:
    reuse = os.environ.get("LLMI_E2E_REUSE_IMAGES") == "1"
    build_args = []
    if torch_image := os.environ.get("LLMI_E2E_TORCH_IMAGE"):
        build_args = ["--build-arg", f"TORCH_IMAGE={torch_image}"]
    for target, repository in IMAGES.items():
        image = f"{repository}:{IMAGE_TAG}"
        exists = subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode == 0
        if not (reuse and exists):
            run("docker", "build", "--target", target, "-t", image, *build_args, ".", timeout=3600)
        run("kind", "load", "docker-image", image, "--name", cluster_name, timeout=1200)


def install_chart(kube: Kube) -> None:
    settings = {
        "models.hostPath": "/models",
        "models.keepOnUninstall": "false",
        "images.controlPlane.repository": IMAGES["control-plane"],
        "images.controlPlane.tag": IMAGE_TAG,
        "images.runtime.repository": IMAGES["runtime"],
        "images.runtime.tag": IMAGE_TAG,
        "images.vllm.enabled": "false",  # no GPU in kind: the transformers engine only
        "images.pullPolicy": "IfNotPresent",
        "budget.nodeGB": NODE_BUDGET_GB,
        "discovery.intervalSeconds": "5",
        "logLevel": "DEBUG",
        "operator.extraEnv[0].name": "LLMI_RECONCILE_INTERVAL_S",
        "operator.extraEnv[0].value": "2",
    }
    # values.schema.json wants numbers and booleans typed: those go as --set, the rest (an env value
    # "2" included) as --set-string.
    numbers = {"budget.nodeGB", "discovery.intervalSeconds"}
    sets = []
    for key, value in settings.items():
        sets += ["--set" if key in numbers or value in {"true", "false"} else "--set-string", f"{key}={value}"]
    kube.helm_run(
        "install", RELEASE, ROOT / "charts" / "llmi",
        "--namespace", NAMESPACE, "--create-namespace", *sets, "--wait", "--timeout", "10m",
        timeout=900,
    )  # fmt: skip


@contextlib.contextmanager
def port_forward(kube: Kube) -> Iterator[str]:
    port = free_port()
    command = [str(kube.kubectl), "--namespace", NAMESPACE, "port-forward", f"svc/{ROUTER_SERVICE}", f"{port}:15530"]
    print(f"$ {' '.join(command)}", flush=True)
    process = subprocess.Popen(command, env=kube.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"kubectl port-forward exited: {process.stdout.read() if process.stdout else ''}")
        try:
            return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for("the port-forwarded router", healthy, timeout=60, interval=1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def cluster(
    request: pytest.FixtureRequest, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    helm, kubectl = fetch_tools()
    work = tmp_path_factory.mktemp("kind")
    name = f"llmi-e2e-{uuid.uuid4().hex[:6]}"
    config = work / "kind.yaml"
    config.write_text(
        "kind: Cluster\n"
        "apiVersion: kind.x-k8s.io/v1alpha4\n"
        "nodes:\n"
        "  - role: control-plane\n"
        "    extraMounts:\n"
        f"      - hostPath: {models_dir}\n"
        "        containerPath: /models\n"
        "        readOnly: true\n",
        encoding="utf-8",
    )
    kube = Kube(kubectl=kubectl, helm=helm, kubeconfig=work / "kubeconfig")
    try:
        run(
            "kind", "create", "cluster", "--name", name, "--config", config,
            "--kubeconfig", kube.kubeconfig, "--wait", "180s",
            timeout=600,
        )  # fmt: skip
        request.config.stash[DIAGNOSTICS] = kube
        build_images(name)
        install_chart(kube)
        with port_forward(kube) as url:
            yield Cluster(kube=kube, base_url=url)
    finally:
        if os.environ.get("LLMI_E2E_KEEP_CLUSTER") == "1":
            print(f"keeping kind cluster {name} (KUBECONFIG={kube.kubeconfig})")
        else:
            request.config.stash[DIAGNOSTICS] = None
            run("kind", "delete", "cluster", "--name", name, timeout=300, check=False)
