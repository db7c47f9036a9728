"""The planner's promises, checked over random budgets, loaded sets and demands."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

from hypothesis import event, given, settings
from hypothesis import strategies as st

from llmi.modeltypes import ModelType
from llmi.planner import (
    Budget,
    Load,
    Loaded,
    Placement,
    Ready,
    Refusal,
    Refuse,
    Wait,
    budget_from_settings,
    lru_key,
    placement,
    plan,
)
from llmi.settings import Settings

GIB = 1024**3
TYPES = list(ModelType)
PROPERTY = settings(max_examples=400, deadline=None, database=None)


# --- placement examples -------------------------------------------------------------------


def gpu_budget(total_gb: float = 8, offload: bool = True) -> Budget:
    return Budget(
        int(total_gb * GIB), gpu=True, offload_enabled=offload, offload_threshold_bytes=4 * GIB, cache_size_per_type=1
    )


def test_small_model_goes_on_the_gpu() -> None:
    assert placement(2 * GIB, gpu_budget()) == Placement("gpu", 2 * GIB)


def test_large_model_is_offloaded_with_the_threshold_on_the_gpu() -> None:
    assert placement(15 * GIB, gpu_budget()) == Placement("offload", 4 * GIB)


def test_without_offload_a_large_model_is_refused_and_a_medium_one_fits() -> None:
    refusal = placement(15 * GIB, gpu_budget(offload=False))
    assert isinstance(refusal, Refusal)
    assert "offload is disabled" in refusal.reason
    assert placement(6 * GIB, gpu_budget(offload=False)) == Placement("gpu", 6 * GIB)


def test_without_a_gpu_models_run_on_the_cpu_within_host_memory() -> None:
    cpu = Budget(8 * GIB, gpu=False, offload_enabled=False, offload_threshold_bytes=4 * GIB, cache_size_per_type=1)
    assert placement(15 * GIB - 1, replace(cpu, total_bytes=16 * GIB)) == Placement("cpu", 15 * GIB - 1)
    assert placement(2 * GIB, cpu) == Placement("cpu", 2 * GIB)
    assert isinstance(placement(9 * GIB, cpu), Refusal)
    assert "no GPU" in placement(1, cpu, "gpu").reason  # type: ignore[union-attr]
    assert isinstance(placement(1, cpu, "offload"), Refusal)


def test_overrides_are_honoured() -> None:
    budget = gpu_budget()
    assert placement(15 * GIB, budget, "cpu") == Placement("cpu", 0)
    assert placement(6 * GIB, budget, "gpu") == Placement("gpu", 6 * GIB)
    assert isinstance(placement(9 * GIB, budget, "gpu"), Refusal)
    assert placement(2 * GIB, budget, "offload") == Placement("offload", 2 * GIB)
    assert placement(6 * GIB, gpu_budget(offload=False), "offload") == Placement("offload", 4 * GIB)


def test_offload_threshold_above_the_budget_is_refused() -> None:
    assert isinstance(placement(15 * GIB, gpu_budget(total_gb=3)), Refusal)


def settings_for(**values: object) -> Settings:
    base: dict[str, object] = {
        "available_gpu_memory_gb": 8,
        "gpu_memory_utilization": 0.8,
        "enable_gpu_memory_offload": True,
        "gpu_memory_offload_threshold_gb": 4,
        "model_cache_size": 2,
        "cpu_memory_budget_gb": None,
    }
    return Settings(_env_file=None, **(base | values))  # type: ignore[arg-type]


def test_budget_from_settings() -> None:
    big_gpu = budget_from_settings(settings_for(), 80 * GIB, 64 * GIB)
    assert big_gpu == Budget(int(8 * GIB * 0.8), True, True, 4 * GIB, 2)
    small_gpu = budget_from_settings(settings_for(), 6 * GIB, 64 * GIB)
    assert small_gpu.total_bytes == int(6 * GIB * 0.8)
    no_gpu = budget_from_settings(settings_for(), None, 64 * GIB)
    assert (no_gpu.total_bytes, no_gpu.gpu, no_gpu.offload_enabled) == (32 * GIB, False, False)
    assert budget_from_settings(settings_for(cpu_memory_budget_gb=10), None, 64 * GIB).total_bytes == 10 * GIB
    assert not budget_from_settings(settings_for(enable_gpu_memory_offload=False), 8 * GIB, GIB).offload_enabled


# --- plan examples ------------------------------------------------------------------------


def model(name: str, footprint: int, last_used: float, **kwargs: object) -> Loaded:
    kw: dict[str, object] = {"type": ModelType.CHAT} | kwargs
    return Loaded(name, footprint_bytes=footprint, last_used=last_used, **kw)  # type: ignore[arg-type]


def budget(total: int, cache: int = 10) -> Budget:
    return Budget(total, gpu=True, offload_enabled=True, offload_threshold_bytes=total, cache_size_per_type=cache)


def test_plan_examples() -> None:
    loaded = [model("a", 4, 3.0), model("b", 3, 1.0), model("c", 2, 2.0)]
    assert plan(budget(10), loaded, "a", ModelType.CHAT, 4) == Ready()
    assert plan(budget(10), loaded, "d", ModelType.CHAT, 1) == Load(())
    assert plan(budget(10), loaded, "d", ModelType.CHAT, 3) == Load(("b",))
    assert plan(budget(10), loaded, "d", ModelType.CHAT, 6) == Load(("b", "c"))
    assert plan(budget(10), loaded, "d", ModelType.CHAT, 11) == Refuse("d needs 0.0 GiB, the budget is 0.0 GiB")
    pinned = [replace(m, pinned=True) if m.name == "a" else m for m in loaded]
    assert isinstance(plan(budget(10), pinned, "d", ModelType.CHAT, 7), Refuse)
    busy = [replace(m, in_flight=1) if m.name == "b" else m for m in loaded]
    assert plan(budget(10), busy, "d", ModelType.CHAT, 3) == Load(("c",))
    assert isinstance(plan(budget(10), busy, "d", ModelType.CHAT, 8), Wait)
    loading = [replace(m, loading=True) for m in loaded]
    assert isinstance(plan(budget(10), loading, "d", ModelType.CHAT, 2), Wait)


def test_cache_size_per_type_evicts_the_lru_model_of_that_type() -> None:
    loaded = [
        model("chat-old", 1, 1.0),
        model("emb", 1, 0.0, type=ModelType.EMBEDDING),
        model("chat-new", 1, 2.0),
        model("chat-pinned", 1, 0.5, pinned=True),
    ]
    assert plan(budget(100, cache=2), loaded, "chat-3", ModelType.CHAT, 1) == Load(("chat-old",))
    assert plan(budget(100, cache=1), loaded, "chat-3", ModelType.CHAT, 1) == Load(("chat-old", "chat-new"))
    assert plan(budget(100, cache=1), loaded, "emb-2", ModelType.EMBEDDING, 1) == Load(("emb",))
    busy = [replace(m, in_flight=2) for m in loaded]
    assert isinstance(plan(budget(100, cache=2), busy, "chat-3", ModelType.CHAT, 1), Wait)


# --- properties ---------------------------------------------------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Budget, list[Loaded]]:
    total = draw(st.integers(0, 1000))
    budget = Budget(
        total,
        gpu=True,
        offload_enabled=True,
        offload_threshold_bytes=total,
        cache_size_per_type=draw(st.integers(1, 3)),
    )
    loaded: list[Loaded] = []
    used = 0
    for i in range(draw(st.integers(0, 10))):
        footprint = draw(st.integers(0, max(total - used, 0)))
        used += footprint
        loaded.append(
            Loaded(
                f"m{i}",
                draw(st.sampled_from(TYPES)),
                footprint,
                last_used=float(draw(st.integers(0, 20))),
                pinned=draw(st.sampled_from([False, False, False, False, True])),
                in_flight=draw(st.sampled_from([0, 0, 0, 1, 3])),
                loading=draw(st.sampled_from([False, False, False, True])),
            )
        )
    return budget, loaded


@st.composite
def demands(draw: st.DrawFn, budget: Budget) -> tuple[str, ModelType, int]:
    """Mostly models not loaded yet, sized around the budget (sometimes more than all of it)."""
    name = draw(st.sampled_from(["new"] * 8 + ["m0", "m3"]))
    return name, draw(st.sampled_from(TYPES)), draw(st.integers(0, budget.total_bytes * 11 // 10 + 1))


@st.composite
def scenarios_with_demand(draw: st.DrawFn) -> tuple[Budget, list[Loaded], tuple[str, ModelType, int]]:
    budget, loaded = draw(scenarios())
    return budget, loaded, draw(demands(budget))


def fits(budget: Budget, models: Sequence[Loaded], type_: ModelType) -> bool:
    """Memory and the per-type count hold once the requested model has been added to models."""
    unpinned_of_type = sum(1 for m in models if m.type == type_ and not m.pinned)
    return (
        sum(m.footprint_bytes for m in models) <= budget.total_bytes and unpinned_of_type <= budget.cache_size_per_type
    )


@PROPERTY
@given(scenarios_with_demand())
def test_plan_keeps_its_promises(scenario: tuple[Budget, list[Loaded], tuple[str, ModelType, int]]) -> None:
    budget, loaded, (name, type_, footprint) = scenario
    result = plan(budget, loaded, name, type_, footprint)
    event(f"{type(result).__name__}{' with evictions' if isinstance(result, Load) and result.evict else ''}")
    by_name = {m.name: m for m in loaded}
    if name in by_name:
        assert result == Ready()
        return
    new = Loaded(name, type_, footprint, last_used=100.0)
    pinned_total = sum(m.footprint_bytes for m in loaded if m.pinned)
    idle = [m for m in loaded if m.evictable]
    kept_if_all_idle_evicted = [m for m in loaded if not m.evictable]
    possible = pinned_total + footprint <= budget.total_bytes
    feasible_now = possible and fits(budget, [*kept_if_all_idle_evicted, new], type_)

    if isinstance(result, Refuse):
        assert not possible, "refused although evicting every unpinned model would make room"
    elif isinstance(result, Wait):
        assert possible
        assert not feasible_now, "waited although evicting idle models would make room"
        assert any(not m.pinned and (m.in_flight or m.loading) for m in loaded)
    else:
        assert isinstance(result, Load)
        assert possible
        assert feasible_now
        victims = [by_name[v] for v in result.evict]
        assert len(set(result.evict)) == len(victims)
        assert all(v.evictable for v in victims), "evicted a pinned, busy or loading model"
        assert [lru_key(v) for v in victims] == sorted(lru_key(v) for v in victims)
        after = [m for m in loaded if m.name not in result.evict] + [new]
        assert fits(budget, after, type_)
        if victims:
            one_fewer = [m for m in loaded if m.name not in result.evict[:-1]] + [new]
            assert not fits(budget, one_fewer, type_), "evicted more than needed"
        spared = [m for m in idle if m.name not in result.evict and m.footprint_bytes > 0]
        for victim in victims:
            # Victims are the least recently used: of their type, and (if evicted for room) of all
            # the models that free room; a model of another type can only be evicted for room.
            assert victim.type == type_ or victim.footprint_bytes > 0
            rivals = spared if victim.type != type_ else [m for m in spared if m.type == type_]
            assert all(lru_key(victim) < lru_key(m) for m in rivals)
    if not isinstance(result, Refuse):
        assert possible
    if feasible_now:
        assert isinstance(result, Load)


# A pool the simulation draws requests from: (name, type, footprint, pinned).
POOL = [
    ("chat-a", ModelType.CHAT, 300, False),
    ("chat-b", ModelType.CHAT, 500, False),
    ("chat-c", ModelType.CHAT, 200, True),
    ("emb-a", ModelType.EMBEDDING, 100, False),
    ("emb-b", ModelType.EMBEDDING, 50, True),
    ("rr-a", ModelType.RERANKER, 150, False),
    ("vis-a", ModelType.VISION, 0, False),
    ("mm-a", ModelType.MULTIMODAL, 700, False),
    ("huge", ModelType.CHAT, 2000, False),
]
events = st.tuples(st.sampled_from(["request", "request", "begin", "end", "loaded"]), st.integers(0, len(POOL) - 1))


@PROPERTY
@given(st.integers(0, 1200), st.integers(1, 3), st.lists(events, max_size=60))
def test_simulated_request_streams_never_exceed_the_budget(
    total: int, cache: int, steps: list[tuple[str, int]]
) -> None:
    budget = Budget(total, gpu=True, offload_enabled=True, offload_threshold_bytes=total, cache_size_per_type=cache)
    loaded: dict[str, Loaded] = {}
    for clock, (kind, index) in enumerate(steps):
        name, type_, footprint, pinned = POOL[index]
        current = loaded.get(name)
        if kind == "request":
            result = plan(budget, list(loaded.values()), name, type_, footprint)
            event(type(result).__name__)
            if isinstance(result, Ready):
                assert current is not None
                loaded[name] = replace(current, last_used=float(clock))
            elif isinstance(result, Load):
                for victim in result.evict:
                    assert loaded.pop(victim).evictable
                loaded[name] = Loaded(name, type_, footprint, float(clock), pinned=pinned, loading=True)
            elif isinstance(result, Refuse):
                pinned_total = sum(m.footprint_bytes for m in loaded.values() if m.pinned)
                assert pinned_total + footprint > total
        elif current is not None and kind == "begin" and not current.loading:
            loaded[name] = replace(current, in_flight=current.in_flight + 1, last_used=float(clock))
        elif current is not None and kind == "end" and current.in_flight:
            loaded[name] = replace(current, in_flight=current.in_flight - 1)
        elif current is not None and kind == "loaded":
            loaded[name] = replace(current, loading=False)
        assert sum(m.footprint_bytes for m in loaded.values()) <= total
        per_type = Counter(m.type for m in loaded.values() if not m.pinned)
        assert all(n <= cache for n in per_type.values())
