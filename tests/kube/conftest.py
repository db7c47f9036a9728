"""Fixtures for tests against an emulated Kubernetes API server (kmock plus tests/kube/realism.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import kmock
import kubernetes.config.kube_config
import pytest
import pytest_asyncio

from tests.kube.realism import Emulator, kubeconfig, load_crd

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "localmodels.llmi.dev.yaml"
NAMESPACE = "llmi-test"
# Used only until crds/localmodels.llmi.dev.yaml exists: what discovery and kopf need to know.
MINIMAL_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "localmodels.llmi.dev"},
    "spec": {
        "group": "llmi.dev",
        "scope": "Namespaced",
        "names": {"kind": "LocalModel", "plural": "localmodels", "singular": "localmodel", "shortNames": ["lm"]},
        "versions": [
            {
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "subresources": {
                    "status": {},
                    "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"},
                },
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }
        ],
    },
}


@dataclass
class KubeEnv:
    """A running emulated API server: the emulator (state, writes), its URL and the test namespace."""

    emulator: Emulator
    url: str
    namespace: str


@pytest_asyncio.fixture(loop_scope="function")
async def kube_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubeEnv]:
    """An API server with the built-in resources, the LocalModel CRD and a namespace; KUBECONFIG points at it."""
    async with Emulator() as emulator, kmock.Server(emulator) as server:
        emulator.declare_builtins()
        crd = load_crd(CRD_PATH, MINIMAL_CRD)
        emulator.declare_crd(crd)
        await emulator.apply_create(kmock.resource("apiextensions.k8s.io/v1/customresourcedefinitions"), None, crd)
        await emulator.apply_create(kmock.resource("v1/namespaces"), None, {"metadata": {"name": NAMESPACE}})
        url = str(server.url).rstrip("/")
        config = tmp_path / "kubeconfig"
        config.write_text(kubeconfig(url, NAMESPACE))
        monkeypatch.setenv("KUBECONFIG", str(config))
        # The client reads KUBECONFIG when it is imported; a process started with it set does the same.
        monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(config))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield KubeEnv(emulator, url, NAMESPACE)
