"""Memory truth on real `llmi runtime` processes: what a runtime reports is what /proc says, and
the catalog's estimate, made before any load, is close to it (issue 8, acceptance 4)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llmi.catalog.scan import scan
from llmi.settings import Settings
from llmi_router.embedded.process import measure
from tests.servers import RuntimeProcess
from tests.tiny_models import TINY_TYPES

MIB = 1024 * 1024
MEASURED_TOLERANCE = 0.10
ESTIMATE_TOLERANCE = 0.25


def proc_pss_bytes(pid: int) -> int:
    """The process's proportional set size, read the way the kernel reports it."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no Pss line in /proc/{pid}/smaps_rollup")


@pytest.mark.parametrize("name", sorted(TINY_TYPES))
def test_measured_memory_is_the_pss_and_the_estimate_is_near_it(
    name: str, runtimes: Callable[[str], RuntimeProcess], tiny_models: dict[str, Path]
) -> None:
    rt = runtimes(name)
    health = httpx.get(f"{rt.url}/v1/health", timeout=30).json()
    pss = proc_pss_bytes(rt.proc.pid)
    assert health["pid"] == rt.proc.pid
    memory = health["memory"]
    assert set(memory) == {"measured_bytes", "pss_bytes", "rss_bytes", "gpu_bytes", "gpu_context_bytes", "device"}
    assert memory["device"] == "cpu"
    assert memory["gpu_bytes"] is None
    assert memory["gpu_context_bytes"] is None
    assert memory["measured_bytes"] == memory["pss_bytes"] <= memory["rss_bytes"]
    assert abs(memory["measured_bytes"] - pss) <= MEASURED_TOLERANCE * pss

    # The estimate the planner would have used before this model was ever loaded.
    catalog = scan(tiny_models[name].parent, max_model_len=Settings().vllm_max_model_len, device="cpu")
    entry = catalog.get(name)
    assert entry is not None
    estimated = entry.memory_bytes
    print(
        f"{name}: PSS {pss / MIB:.0f} MiB, measured {memory['measured_bytes'] / MIB:.0f}, "
        f"RSS {memory['rss_bytes'] / MIB:.0f}, estimated {estimated / MIB:.0f} ({estimated / pss - 1:+.0%})"
    )
    assert abs(estimated - pss) <= ESTIMATE_TOLERANCE * pss

    # The runtime's own card shows both figures, and its metrics export them.
    (card,) = httpx.get(f"{rt.url}/v1/models", timeout=30).json()["data"]
    assert card["memory_estimated_bytes"] == estimated
    assert abs(card["memory_measured_bytes"] - pss) <= MEASURED_TOLERANCE * pss
    assert card["memory_bytes"] == card["memory_measured_bytes"]
    gauges = {
        family.name: sample.value
        for family in text_string_to_metric_families(httpx.get(f"{rt.url}/metrics", timeout=30).text)
        for sample in family.samples
        if sample.labels.get("model") == name
    }
    assert gauges["llmi_model_memory_estimated_bytes"] == estimated
    assert abs(gauges["llmi_model_memory_measured_bytes"] - pss) <= MEASURED_TOLERANCE * pss


def test_a_cpu_runtime_refuses_to_park_and_keeps_serving(runtimes: Callable[[str], RuntimeProcess]) -> None:
    rt = runtimes("tiny-bert-embed")
    parked = httpx.post(f"{rt.url}/admin/park", timeout=30)
    assert parked.status_code == 409
    error = parked.json()["error"]
    assert error["code"] == "cannot_park"
    assert "CPU" in error["message"]
    answer = httpx.post(f"{rt.url}/v1/embeddings", json={"model": "tiny-bert-embed", "input": "hi"}, timeout=60)
    assert answer.status_code == 200
    assert httpx.get(f"{rt.url}/v1/health", timeout=30).json()["status"] == "ok"


async def test_the_routers_measure_reads_the_runtimes_figure(runtimes: Callable[[str], RuntimeProcess]) -> None:
    rt = runtimes("tiny-llama-chat")
    async with httpx.AsyncClient() as client:
        got = await measure(rt.url, client)
    pss = proc_pss_bytes(rt.proc.pid)
    assert got is not None
    assert abs(got - pss) <= MEASURED_TOLERANCE * pss
