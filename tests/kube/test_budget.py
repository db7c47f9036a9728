"""The per-node budget decision (pure): where a model scales up and who makes room."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from llmi.localmodel import ANNOTATION_DRAIN, Drain, encode_drain, encode_report, report_key
from llmi.modeltypes import ModelType
from llmi_operator.budget import Demand, Evict, Node, Occupant, Place, Unschedulable, Wait, decide, tolerates
from llmi_operator.observe import node_from, occupants

GIB = 1024**3
OFFLOAD = 4 * GIB


def ready(name: str, node: str, gib: int, last_used: float, pinned: bool = False) -> Occupant:
    return Occupant(name, node, ModelType.CHAT, gib * GIB, last_used, pinned=pinned, evictable=True)


def demand(name: str, gib: float, **kwargs: object) -> Demand:
    return Demand(name, ModelType.CHAT, int(gib * GIB), **kwargs)  # type: ignore[arg-type]


def test_fits_without_eviction() -> None:
    nodes = [Node("a", 8 * GIB)]
    assert decide(nodes, [ready("m5", "a", 5, 1.0)], demand("m3", 3), OFFLOAD) == Place("a", "gpu", 3 * GIB)


def test_least_recently_used_is_evicted_first_and_only_as_many_as_needed() -> None:
    nodes = [Node("a", 8 * GIB)]
    held = [ready("m5", "a", 5, 1.0), ready("m3", "a", 3, 2.0)]
    assert decide(nodes, held, demand("m4", 4), OFFLOAD) == Evict("a", ("m5",), "gpu", 4 * GIB)
    held = [ready("m5", "a", 5, 3.0), ready("m3", "a", 3, 2.0)]
    assert decide(nodes, held, demand("m2", 2), OFFLOAD) == Evict("a", ("m3",), "gpu", 2 * GIB)


def test_pinned_models_are_never_victims() -> None:
    nodes = [Node("a", 8 * GIB)]
    held = [ready("m5", "a", 5, 1.0, pinned=True), ready("m3", "a", 3, 2.0)]
    assert decide(nodes, held, demand("m3b", 3), OFFLOAD) == Evict("a", ("m3",), "gpu", 3 * GIB)
    decision = decide(nodes, held, demand("m4", 4), OFFLOAD)
    assert isinstance(decision, Unschedulable)
    assert "pinned" in decision.reason


def test_models_still_going_away_make_it_wait() -> None:
    nodes = [Node("a", 8 * GIB)]
    stopping = Occupant("old", "a", ModelType.CHAT, 6 * GIB, 1.0, evictable=False)
    decision = decide(nodes, [stopping], demand("m4", 4), OFFLOAD)
    assert isinstance(decision, Wait)
    assert decide(nodes, [], demand("m4", 4), OFFLOAD) == Place("a", "gpu", 4 * GIB)


def test_a_model_bigger_than_every_budget_is_unschedulable() -> None:
    decision = decide([Node("a", 8 * GIB), Node("b", 6 * GIB)], [], demand("big", 12), OFFLOAD)
    assert isinstance(decision, Unschedulable)
    assert "12.0 GiB" in decision.reason
    assert "8.0 GiB" in decision.reason


def test_offload_takes_its_gpu_share_and_cpu_takes_nothing() -> None:
    nodes = [Node("a", 8 * GIB)]
    assert decide(nodes, [], demand("big", 12, placement="offload"), OFFLOAD) == Place("a", "offload", OFFLOAD)
    assert decide(nodes, [], demand("big", 12, placement="cpu"), OFFLOAD) == Place(None, "cpu", 0)


def test_original_offload_and_utilization_settings_apply_to_auto_placement() -> None:
    """LLM_ENABLE_GPU_MEMORY_OFFLOAD and LLM_GPU_MEMORY_UTILIZATION mean what they mean in `llmi serve`."""
    nodes = [Node("a", 8 * GIB)]
    big = demand("big", 12)
    assert decide(nodes, [], big, OFFLOAD, offload_auto=True) == Place("a", "offload", OFFLOAD)
    assert isinstance(decide(nodes, [], big, OFFLOAD, offload_auto=False), Unschedulable)
    seven = demand("seven", 3.5)
    assert decide(nodes, [ready("x", "a", 4, 1.0)], seven, OFFLOAD) == Place("a", "gpu", int(3.5 * GIB))
    # 80% of 8 GiB is 6.4 GiB: 4 + 3.5 no longer fit, so the idle model goes first.
    assert decide(nodes, [ready("x", "a", 4, 1.0)], seven, OFFLOAD, utilization=0.8) == Evict(
        "a", ("x",), "gpu", int(3.5 * GIB)
    )


def test_node_choice_prefers_no_eviction_then_best_fit() -> None:
    nodes = [Node("a", 8 * GIB), Node("b", 16 * GIB), Node("c", 8 * GIB)]
    held = [ready("x", "a", 6, 1.0), ready("y", "c", 2, 1.0)]
    assert decide(nodes, held, demand("m4", 4), OFFLOAD) == Place("c", "gpu", 4 * GIB)  # tightest fit
    full = [ready("x", "a", 6, 1.0), ready("y", "b", 14, 1.0), ready("z", "c", 7, 1.0)]
    assert decide(nodes, full, demand("m4", 4), OFFLOAD) == Evict("a", ("x",), "gpu", 4 * GIB)  # fewest bytes


def test_selectors_taints_and_gpu_nodes() -> None:
    tainted = Node("t", 8 * GIB, taints=({"key": "gpu", "value": "yes", "effect": "NoSchedule"},))
    plain = Node("p", 8 * GIB, labels={"pool": "small"})
    cpu_only = Node("c", 8 * GIB, gpu=False)
    cordoned = Node("x", 8 * GIB, schedulable=False)
    nodes = [tainted, plain, cpu_only, cordoned]
    assert decide(nodes, [], demand("m", 1), OFFLOAD) == Place("p", "gpu", GIB)
    toleration = {"key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoSchedule"}
    assert decide([tainted], [], demand("m", 1, tolerations=(toleration,)), OFFLOAD) == Place("t", "gpu", GIB)
    assert isinstance(decide(nodes, [], demand("m", 1, node_selector={"pool": "big"}), OFFLOAD), Unschedulable)
    assert tolerates([{"operator": "Exists"}], {"key": "any", "effect": "NoExecute"})
    assert tolerates([], {"key": "soft", "effect": "PreferNoSchedule"})


def test_nodes_and_occupants_from_api_objects() -> None:
    raw = {
        "metadata": {"name": "a", "annotations": {"llmi.dev/memory-budget": "16Gi"}, "labels": {}},
        "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]},
        "status": {},
    }
    n = node_from(raw, 8 * GIB)
    assert (n.name, n.budget_bytes, n.gpu, len(n.taints)) == ("a", 16 * GIB, True, 1)
    assert not node_from({"metadata": {"name": "cpu"}, "status": {"capacity": {"cpu": "8"}}}, GIB).gpu
    gfd = node_from({"metadata": {"name": "g", "labels": {"nvidia.com/gpu.memory": "24576"}}}, GIB)
    assert gfd.gpu_memory_bytes == 24 * GIB
    model = {
        "metadata": {"name": "m", "annotations": {"llmi.dev/last-request-time": "2026-01-01T00:00:00Z"}},
        "spec": {"path": "m", "type": "chat", "replicas": 1, "memory": "3Gi"},
        "status": {"phase": "Ready"},
    }
    template = {"metadata": {"annotations": {"llmi.dev/footprint": str(3 * GIB), "llmi.dev/placement": "gpu"}}}
    template["spec"] = {"nodeSelector": {"kubernetes.io/hostname": "a"}}  # type: ignore[assignment]
    deployment = {
        "metadata": {"name": "llmi-m", "labels": {"llmi.dev/model": "m"}},
        "spec": {"replicas": 1, "template": template},
    }
    orphan = {
        "metadata": {
            "name": "gone-1",
            "labels": {"llmi.dev/model": "gone"},
            "annotations": {"llmi.dev/footprint": "7"},
        },
        "spec": {"nodeName": "b"},
        "status": {"phase": "Running"},
    }
    found = occupants([model], [deployment], [orphan])
    assert [(o.name, o.node, o.footprint_bytes, o.evictable) for o in found] == [
        ("m", "a", 3 * GIB, True),
        ("pod/gone-1", "b", 7, False),
    ]
    assert found[0].last_used == 1767225600.0


budgets = st.integers(min_value=1, max_value=24)


@st.composite
def situations(draw: st.DrawFn) -> tuple[list[Node], list[Occupant], Demand]:
    nodes = [Node(f"n{i}", draw(budgets) * GIB) for i in range(draw(st.integers(1, 3)))]
    held: list[Occupant] = []
    for i in range(draw(st.integers(0, 8))):
        node = draw(st.sampled_from(nodes))
        used = sum(o.footprint_bytes for o in held if o.node == node.name)
        room = (node.budget_bytes - used) // GIB
        if room < 1:
            continue
        held.append(
            Occupant(
                f"m{i}",
                node.name,
                draw(st.sampled_from(list(ModelType))),
                draw(st.integers(1, room)) * GIB,
                draw(st.floats(0, 1000)),
                pinned=draw(st.booleans()),
                evictable=draw(st.booleans()),
            )
        )
    want = Demand("new", draw(st.sampled_from(list(ModelType))), draw(st.integers(1, 30)) * GIB)
    return nodes, held, want


@settings(max_examples=300, deadline=None)
@given(situations())
def test_no_node_is_ever_planned_beyond_its_budget(case: tuple[list[Node], list[Occupant], Demand]) -> None:
    nodes, held, want = case
    decision = decide(nodes, held, want, OFFLOAD)
    by_name = {o.name: o for o in held}
    if isinstance(decision, Place | Evict):
        assert decision.node is not None
        victims = decision.victims if isinstance(decision, Evict) else ()
        budget = next(n.budget_bytes for n in nodes if n.name == decision.node)
        kept = sum(o.footprint_bytes for o in held if o.node == decision.node and o.name not in victims)
        assert kept + decision.footprint_bytes <= budget
        for victim in victims:
            assert by_name[victim].node == decision.node
            assert not by_name[victim].pinned
            assert by_name[victim].evictable
    if isinstance(decision, Unschedulable):
        for node in nodes:  # even evicting every unpinned model would not make room anywhere
            pinned = sum(o.footprint_bytes for o in held if o.node == node.name and o.pinned)
            assert pinned + want.memory_bytes > node.budget_bytes


def busy(name: str, node: str, gib: int, last_used: float, in_flight: int = 1) -> Occupant:
    return Occupant(name, node, ModelType.CHAT, gib * GIB, last_used, evictable=True, in_flight=in_flight)


def test_idle_models_go_before_busy_ones_even_when_busy_ones_are_older() -> None:
    nodes = [Node("a", 8 * GIB)]
    held = [busy("old-busy", "a", 3, 1.0), ready("new-idle", "a", 3, 9.0)]
    assert decide(nodes, held, demand("m4", 4), OFFLOAD) == Evict("a", ("new-idle",), "gpu", 4 * GIB)


def test_an_idle_victim_on_another_node_beats_a_busy_one_here() -> None:
    nodes = [Node("a", 8 * GIB), Node("b", 8 * GIB)]
    held = [busy("busy", "a", 6, 1.0), ready("idle", "b", 7, 9.0)]
    assert decide(nodes, held, demand("m4", 4), OFFLOAD) == Evict("b", ("idle",), "gpu", 4 * GIB)


def test_busy_models_are_drained_only_when_nothing_idle_would_do() -> None:
    nodes = [Node("a", 8 * GIB)]
    held = [busy("b1", "a", 4, 2.0), busy("b2", "a", 4, 1.0, in_flight=5)]
    assert decide(nodes, held, demand("m4", 4), OFFLOAD) == Evict("a", ("b2",), "gpu", 4 * GIB)
    draining = Occupant("d", "a", ModelType.CHAT, 8 * GIB, 1.0, evictable=False, draining_for="other")
    assert isinstance(decide(nodes, [draining], demand("m4", 4), OFFLOAD), Wait)  # already going: not twice


def test_router_reports_become_in_flight_and_drain_marks_block_a_second_eviction() -> None:
    def model(name: str, annotations: dict[str, str]) -> dict[str, object]:
        return {
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"path": name, "type": "chat", "memory": "3Gi", "replicas": 1},
            "status": {"phase": "Ready"},
        }

    deployment = {
        "metadata": {"labels": {"llmi.dev/model": "x"}},
        "spec": {"replicas": 1, "template": {"metadata": {"annotations": {}}, "spec": {}}},
    }
    fresh, stale = encode_report(2, 1000.0), encode_report(4, 800.0)
    found = occupants(
        [
            model("busy", {report_key("r1"): fresh, report_key("r2"): stale}),
            model("draining", {ANNOTATION_DRAIN: encode_drain(Drain("big", 990.0))}),
        ],
        [deployment],
        [
            {"metadata": {"labels": {"llmi.dev/model": n}}, "spec": {"nodeName": "a"}, "status": {"phase": "Running"}}
            for n in ("busy", "draining")
        ],
        now=1010.0,
        stale_s=90.0,
    )
    by_name = {o.name: o for o in found}
    assert (by_name["busy"].in_flight, by_name["busy"].evictable) == (2, True)
    assert (by_name["draining"].draining_for, by_name["draining"].evictable) == ("big", False)
