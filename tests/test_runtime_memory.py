"""The runtime's memory arithmetic over simulated readings (a fake torch.cuda and NVML: no GPU here)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from llmi_runtime.engines.base import LoadOptions
from llmi_runtime.memory import GpuReading, MemoryProbe, ProcessReading, gpu_held, probe_for, read_process, report

MIB = 1024 * 1024
GIB = 1024 * MIB
HOST = ProcessReading(rss_bytes=900 * MIB, pss_bytes=700 * MIB)


def test_on_cpu_the_measured_figure_is_the_pss() -> None:
    got = report(HOST, None, "cpu")
    assert (got.measured_bytes, got.pss_bytes, got.rss_bytes, got.device) == (700 * MIB, 700 * MIB, 900 * MIB, "cpu")
    assert (got.gpu_bytes, got.gpu_context_bytes) == (None, None)


def test_without_pss_the_rss_stands_in() -> None:
    assert report(ProcessReading(900 * MIB, None), None, "cpu").measured_bytes == 900 * MIB


def test_nvml_gives_what_the_process_holds_and_the_context_outside_the_allocator() -> None:
    reading = GpuReading(reserved_bytes=1 * GIB, process_used_bytes=1 * GIB + 500 * MIB)
    got = report(HOST, reading, "cuda")
    assert got.measured_bytes == got.gpu_bytes == 1 * GIB + 500 * MIB
    assert got.gpu_context_bytes == 500 * MIB
    assert got.pss_bytes == 700 * MIB  # host memory is still reported, not counted


def test_nvml_below_the_allocator_never_makes_a_negative_context() -> None:
    assert gpu_held(GpuReading(reserved_bytes=1 * GIB, process_used_bytes=900 * MIB)) == (1 * GIB, 0)


def test_without_nvml_the_context_comes_from_mem_get_info_deltas() -> None:
    # Free memory fell by 1.2 GiB during the load while the allocator reserved 1 GiB of it.
    reading = GpuReading(reserved_bytes=1 * GIB, free_at_init=10 * GIB, free_now=10 * GIB - 1 * GIB - 200 * MIB)
    assert gpu_held(reading) == (1 * GIB + 200 * MIB, 200 * MIB)
    got = report(HOST, reading, "cuda")
    assert got.measured_bytes == 1 * GIB + 200 * MIB


def test_deltas_discount_what_the_allocator_held_at_init() -> None:
    reading = GpuReading(
        reserved_bytes=1 * GIB, free_at_init=10 * GIB, free_now=9 * GIB - 100 * MIB, reserved_at_init=100 * MIB
    )
    assert gpu_held(reading) == (1 * GIB + 200 * MIB, 200 * MIB)


def test_memory_freed_by_others_during_the_load_never_goes_below_the_allocator() -> None:
    reading = GpuReading(reserved_bytes=1 * GIB, free_at_init=10 * GIB, free_now=11 * GIB)
    assert gpu_held(reading) == (1 * GIB, 0)


def test_with_only_the_allocator_known_the_context_is_unknown() -> None:
    got = report(HOST, GpuReading(reserved_bytes=1 * GIB), "cuda")
    assert (got.measured_bytes, got.gpu_bytes, got.gpu_context_bytes) == (1 * GIB, 1 * GIB, None)


@dataclass
class FakeCuda:
    """torch.cuda as the probe sees it: free memory and the allocator's reserved bytes."""

    free: int = 80 * GIB
    reserved: int = 0
    calls: list[tuple[str, int]] = field(default_factory=list)

    def mem_get_info(self, index: int) -> tuple[int, int]:
        self.calls.append(("mem_get_info", index))
        return self.free, 80 * GIB

    def memory_reserved(self, index: int) -> int:
        self.calls.append(("memory_reserved", index))
        return self.reserved

    def load(self, weights: int, outside: int) -> None:
        self.reserved += weights
        self.free -= weights + outside


def test_probe_reads_nvml_for_its_own_pid_and_counts_a_parked_process_residue() -> None:
    cuda = FakeCuda()
    seen: list[tuple[int, int]] = []
    held = {"bytes": 0}

    def nvml(index: int, pid: int) -> int:
        seen.append((index, pid))
        return held["bytes"]

    probe = MemoryProbe("cuda", cuda, process=lambda: HOST, nvml=nvml, device_index=1)
    probe.mark_init()
    cuda.load(weights=2 * GIB, outside=100 * MIB)
    held["bytes"] = 500 * MIB + 2 * GIB + 100 * MIB  # context + allocator + cuBLAS workspace
    got = probe.read()
    assert got.device == "cuda"
    assert got.measured_bytes == 2 * GIB + 600 * MIB
    assert got.gpu_context_bytes == 600 * MIB
    assert {index for index, _ in seen} == {1}
    assert {index for _, index in cuda.calls} == {1}
    # Parked: the weights left, the allocator kept a residue, the context stays on the device.
    cuda.reserved, held["bytes"] = 20 * MIB, 500 * MIB + 20 * MIB + 100 * MIB
    parked = probe.read()
    assert parked.measured_bytes == 620 * MIB
    assert parked.gpu_context_bytes == 600 * MIB


def test_probe_without_nvml_uses_the_free_memory_at_init() -> None:
    cuda = FakeCuda()
    probe = MemoryProbe("cuda", cuda, process=lambda: HOST, nvml=lambda index, pid: None)
    probe.mark_init()
    cuda.load(weights=2 * GIB, outside=300 * MIB)
    got = probe.read()
    assert (got.measured_bytes, got.gpu_context_bytes) == (2 * GIB + 300 * MIB, 300 * MIB)


def test_a_cpu_probe_never_touches_cuda() -> None:
    cuda = FakeCuda()
    probe = MemoryProbe("cpu", cuda, process=lambda: HOST)
    probe.mark_init()
    assert probe.read() == report(HOST, None, "cpu")
    assert cuda.calls == []


def test_probe_for_a_cpu_placement_is_a_cpu_probe() -> None:
    assert probe_for(LoadOptions(device="cpu")).device == "cpu"
    assert probe_for(LoadOptions(placement="cpu")).device == "cpu"


def test_this_process_has_a_pss_no_larger_than_its_rss() -> None:
    reading = read_process()
    assert reading.pss_bytes is not None
    assert 0 < reading.pss_bytes <= reading.rss_bytes


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_health_object_has_exactly_the_documented_keys(device: str) -> None:
    got = report(HOST, GpuReading(reserved_bytes=1 * GIB) if device == "cuda" else None, device)  # type: ignore[arg-type]
    assert set(got.as_json()) == {
        "measured_bytes",
        "pss_bytes",
        "rss_bytes",
        "gpu_bytes",
        "gpu_context_bytes",
        "device",
    }
