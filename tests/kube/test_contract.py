"""The LocalModel contract is spelled once (llmi/localmodel.py) and both sides use it.

A scan of the router's Kubernetes package and of the operator finds every string literal that
names a piece of the contract (anything under ``llmi.dev``, the group, version, plural and kind,
the label keys, the report prefix) and every phase compared or set; each must come from the
contract module instead. The ``*_bites`` tests prove the scan can fail.
"""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import yaml

from llmi import localmodel as contract
from llmi.localmodel import (
    PHASES,
    Drain,
    Report,
    busy,
    drain_of,
    drain_state,
    encode_drain,
    encode_report,
    parse_quantity,
    report_key,
    reports_of,
)
from llmi_operator import status

ROOT = Path(__file__).resolve().parents[2]
SIDES = {
    "router": [
        *sorted((ROOT / "router" / "llmi_router" / "kube").glob("*.py")),
        ROOT / "router/llmi_router/kube_main.py",
    ],
    "operator": sorted((ROOT / "operator" / "llmi_operator").glob("*.py")),
}
NAMES = {contract.GROUP, contract.VERSION, contract.PLURAL, contract.KIND, contract.API_VERSION, contract.SINGULAR}
POD_PHASES = {"Pending", "Running", "Succeeded", "Failed", "Unknown"}  # Kubernetes' own, for pods
PREFIXES = ("llmi.dev", "inflight.", "app.kubernetes.io/", "kubernetes.io/service-name")


def findings(source: str, where: str = "<snippet>") -> list[str]:
    """Contract names spelled outside the contract module, and phases that are not the contract's."""
    found: list[str] = []
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        for phase in phases_used(node):
            if phase.value not in PHASES and phase.value not in POD_PHASES:
                found.append(f"{where}:{phase.lineno}: {phase.value!r} is not a phase of the contract")
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in docstrings:
            continue
        text = node.value
        if text in NAMES or text.startswith(PREFIXES):
            found.append(f"{where}:{node.lineno}: {text!r} belongs in llmi/localmodel.py")
    return found


def _is_phase(node: ast.AST) -> bool:
    """``x.phase`` or ``x.get("phase")``."""
    if isinstance(node, ast.Attribute):
        return node.attr == "phase"
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get"
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and node.args[0].value == "phase"
    )


def phases_used(node: ast.AST) -> list[ast.Constant]:
    """String constants used as a phase: compared with one, in ``Outcome(PHASE, ...)``, as ``{"phase": ...}``."""
    candidates: list[ast.AST] = []
    if isinstance(node, ast.Compare) and any(_is_phase(n) for n in [node.left, *node.comparators]):
        for n in [node.left, *node.comparators]:
            candidates.extend(n.elts if isinstance(n, ast.Tuple | ast.List | ast.Set) else [n])
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Outcome" and node.args:
        candidates.append(node.args[0])
    elif isinstance(node, ast.Dict):
        candidates.extend(
            v for k, v in zip(node.keys, node.values, strict=True) if isinstance(k, ast.Constant) and k.value == "phase"
        )
    return [c for c in candidates if isinstance(c, ast.Constant) and isinstance(c.value, str)]


def test_neither_side_spells_a_contract_name_itself() -> None:
    problems = [p for files in SIDES.values() for f in files for p in findings(f.read_text(), str(f.relative_to(ROOT)))]
    assert problems == []


def test_both_sides_import_the_contract_module() -> None:
    for side, files in SIDES.items():
        importers = [
            f
            for f in files
            if "from llmi.localmodel import" in f.read_text() or "llmi import localmodel" in f.read_text()
        ]
        assert importers, f"the {side} does not use llmi/localmodel.py"


def test_the_scan_bites_on_a_respelled_name() -> None:
    assert findings('ANNOTATION = "llmi.dev/last-request"') != []
    assert findings('PLURAL = "localmodels"') != []
    assert findings('if view.phase == "Evicting": pass') != []
    assert findings('if status.get("phase") in ("Ready", "Runing"): pass') != []
    assert findings('Outcome("Drained", "x")') != []
    assert findings('patch = {"status": {"phase": "Evict"}}') != []
    assert findings('Outcome("Draining", "Draining")') == []
    assert findings('"""Docstrings may mention llmi.dev/drain."""') == []
    assert findings("from llmi.localmodel import GROUP") == []


def test_phases_are_one_type_everywhere_and_in_the_crd() -> None:
    assert typing.get_args(status.Phase) == PHASES
    crd = yaml.safe_load((ROOT / "crds" / "localmodels.llmi.dev.yaml").read_text())
    spec = crd["spec"]
    assert (spec["group"], spec["names"]["plural"], spec["names"]["kind"]) == (
        contract.GROUP,
        contract.PLURAL,
        contract.KIND,
    )
    (version,) = [v for v in spec["versions"] if v["served"]]
    assert version["name"] == contract.VERSION
    phase = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["phase"]
    assert tuple(phase["enum"]) == PHASES
    assert set(contract.PUBLIC_STATE) == set(PHASES)


def test_quantities_are_parsed_by_pydantic_bytesize() -> None:
    assert parse_quantity("6Gi") == 6 * 2**30
    assert parse_quantity("512Mi") == 512 * 2**20
    assert parse_quantity("6G") == 6 * 10**9
    assert parse_quantity("1.5Gi") == 3 * 2**29
    assert parse_quantity("6GiB") == 6 * 2**30
    assert parse_quantity("100k") == 100_000
    assert parse_quantity(1234) == 1234
    assert parse_quantity("12345") == 12345
    for bad in ("lots", None, True, -1, "-5Gi", 1.5, ""):
        assert parse_quantity(bad) is None, bad


def test_reports_and_drain_marks_round_trip() -> None:
    annotations = {
        report_key("router-7f9c"): encode_report(3, 1_000_000),
        report_key("Router_B"): encode_report(0, 1_000_050),
        contract.REPORT_PREFIX + "broken": "{not json",
        contract.ANNOTATION_DRAIN: encode_drain(Drain("big-model", 1_000_000)),
        "unrelated": "x",
    }
    assert reports_of(annotations) == (Report("router-7f9c", 3, 1_000_000.0), Report("router-b", 0, 1_000_050.0))
    assert drain_of(annotations) == Drain("big-model", 1_000_000.0)
    assert drain_of({contract.ANNOTATION_DRAIN: "[]"}) is None
    assert busy(reports_of(annotations), now=1_000_060, stale_s=90) == 3
    assert busy(reports_of(annotations), now=1_000_095, stale_s=90) == 0  # a router that stopped refreshing is gone


def test_drain_state_waits_for_grace_then_zero_and_is_bounded() -> None:
    drain = Drain("b", since=100.0)
    timing = {"grace_s": 3.0, "stale_s": 90.0, "timeout_s": 300.0}
    idle: tuple[Report, ...] = ()
    one = (Report("r1", 1, 101.0),)
    assert drain_state(drain, idle, 101.0, **timing) == "draining"  # routers may not have seen the mark yet
    assert drain_state(drain, idle, 103.0, **timing) == "drained"
    assert drain_state(drain, one, 150.0, **timing) == "draining"
    assert drain_state(drain, one, 192.0, **timing) == "drained"  # that report went stale
    assert drain_state(drain, (Report("r1", 1, 390.0),), 400.0, **timing) == "timed_out"


def test_local_model_view_reads_what_both_sides_need() -> None:
    obj = {
        "metadata": {
            "name": "m",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "annotations": {
                contract.ANNOTATION_LAST_REQUEST: "2026-01-01T00:01:00Z",
                contract.ANNOTATION_DRAIN: encode_drain(Drain("x", 5.0)),
                report_key("r"): encode_report(2, 7.0),
            },
        },
        "spec": {"type": "chat", "memory": "1Gi", "replicas": 1, "pinned": True, "placement": "auto"},
        "status": {"phase": "Ready", "endpoint": "http://llmi-m.ns.svc:8000/"},
    }
    view = contract.LocalModelView.from_object(obj)
    assert (view.name, view.type, view.phase, view.replicas, view.pinned) == ("m", "chat", "Ready", 1, True)
    assert (view.memory_bytes, view.placement, view.endpoint) == (2**30, None, "http://llmi-m.ns.svc:8000")
    assert view.created == 1767225600
    assert view.last_request == 1767225660
    assert view.reports == (Report("r", 2, 7.0),)
    assert not view.ready  # draining: no new requests
    assert contract.LocalModelView.from_object({**obj, "metadata": {"name": "m"}}).ready
