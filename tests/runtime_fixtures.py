"""Session-wide `llmi runtime` processes, started on first use and stopped at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.servers import RuntimeProcess, runtime_env, start_runtime

# Small limits so that oversize tests stay cheap; the defaults are tested in unit tests.
RUNTIME_LIMITS = {
    "LLM_MAX_REQUEST_BYTES": str(2 * 1024 * 1024),
    "LLM_MAX_BATCH_INPUTS": "64",
    "LLM_MAX_REQUEST_PIXELS": "50000",
}


@pytest.fixture(scope="session")
def runtimes(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], RuntimeProcess]]:
    started: dict[str, RuntimeProcess] = {}
    logs = tmp_path_factory.mktemp("runtime-logs")

    def get(name: str) -> RuntimeProcess:
        rt = started.get(name)
        if rt is None or rt.proc.poll() is not None:
            rt = started[name] = start_runtime(tiny_models[name], logs, env=runtime_env(**RUNTIME_LIMITS))
        return rt

    yield get
    for rt in started.values():
        rt.stop()
