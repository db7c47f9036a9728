"""The operator tests' fixture: the emulated API server shared with the router's tests
(tests/kube_fixtures.py), with KUBECONFIG pointing at it for kopf and the official client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import kubernetes.config.kube_config
import pytest
import pytest_asyncio

from tests.kube.realism import Emulator
from tests.kube_fixtures import NAMESPACE, ApiServer, api_server


@dataclass
class KubeEnv:
    """A running emulated API server: the emulator (state, writes), its URL and the test namespace."""

    emulator: Emulator
    url: str
    namespace: str
    api: ApiServer


@pytest_asyncio.fixture(loop_scope="function")
async def kube_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubeEnv]:
    """An API server with the built-in resources, the LocalModel CRD and a namespace; KUBECONFIG points at it."""
    async with api_server(NAMESPACE) as api:
        config = api.kubeconfig(tmp_path / "kubeconfig")
        monkeypatch.setenv("KUBECONFIG", str(config))
        # The client reads KUBECONFIG when it is imported; a process started with it set does the same.
        monkeypatch.setattr(kubernetes.config.kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(config))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield KubeEnv(api.emulator, api.url, api.namespace, api)
