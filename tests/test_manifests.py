"""The LocalModel CRD, the rendered manifests and the LocalModel examples (docs/kubernetes.md, "Contract").

manifests/llmi.yaml is the Helm chart (charts/llmi) rendered with its default values by
scripts/render-manifests.sh; the RBAC checks below read the rendered Roles and bindings, so the
chart is the single source of the permissions (tests/test_chart.py keeps the file in step with it).

Four kinds of checks, all offline and fast:

- every Kubernetes object under crds/ and manifests/ validates with kubernetes-validate in strict
  mode against the oldest and the newest Kubernetes version we support;
- every LocalModel under manifests/ validates against the CRD's own openAPIV3Schema (converted to
  JSON Schema: kubernetes-validate knows no custom resources), plus the CRD's CEL rules mirrored
  in Python;
- what kubernetes-validate cannot see: the schema is structural, its defaults and patterns are valid;
- the contract: names, subresources, printer columns, fields, defaults, and the RBAC each
  component ends up with.

The negative tests show that each check rejects what it should.
"""

from __future__ import annotations

import copy
import importlib.resources
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from llmi.localmodel import PHASES

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="kubernetes-validate (dev extra) is not installed"
)
jsonschema = pytest.importorskip("jsonschema")

from kubernetes_validate import utils as kv_utils  # noqa: E402
from referencing.exceptions import Unresolvable  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CRD_PATH = ROOT / "crds" / "localmodels.llmi.dev.yaml"
RENDERED_PATH = ROOT / "manifests" / "llmi.yaml"  # scripts/render-manifests.sh
EXAMPLES_DIR = ROOT / "manifests" / "examples"
MANIFEST_DIRS = (ROOT / "crds", ROOT / "manifests")

GROUP = "llmi.dev"
NAMESPACE = "llmi"

# The oldest Kubernetes we support: the CRD uses CEL validation rules with fieldPath/reason (GA in
# 1.29). The newest is whatever the installed kubernetes-validate ships.
OLDEST_SUPPORTED = "1.29"
NEWEST_SHIPPED = kv_utils.major_minor(kubernetes_validate.latest_version())
K8S_VERSIONS = sorted({OLDEST_SUPPORTED, NEWEST_SHIPPED}, key=lambda v: tuple(map(int, v.split("."))))

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# --------------------------------------------------------------------------------------------
# Loading


def load_documents(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def manifest_files() -> list[Path]:
    files: list[Path] = []
    for folder in MANIFEST_DIRS:
        files += sorted(p for p in folder.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())
    return files


def all_documents() -> list[tuple[str, dict[str, Any]]]:
    """(id, document) for every YAML document under crds/ and manifests/."""
    out = []
    for path in manifest_files():
        for index, doc in enumerate(load_documents(path)):
            name = doc.get("metadata", {}).get("name", "?")
            out.append((f"{path.relative_to(ROOT)}#{index}:{doc.get('kind')}/{name}", doc))
    return out


def is_custom_resource(doc: dict[str, Any]) -> bool:
    return str(doc.get("apiVersion", "")).split("/")[0] == GROUP


DOCUMENTS = all_documents()
KUBERNETES_OBJECTS = [(i, d) for i, d in DOCUMENTS if not is_custom_resource(d)]
LOCAL_MODELS = [(i, d) for i, d in DOCUMENTS if is_custom_resource(d)]


def params(docs: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    return [pytest.param(doc, id=doc_id) for doc_id, doc in docs]


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    (doc,) = load_documents(CRD_PATH)
    return doc


def openapi_schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]


# --------------------------------------------------------------------------------------------
# kubernetes-validate, strictly offline


class NetworkAttemptError(RuntimeError):
    """Something tried to open a network connection during an offline check."""


@contextmanager
def no_network() -> Iterator[None]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise NetworkAttemptError(f"network access attempted: {args[1:] or args}")

    with (
        mock.patch.object(socket.socket, "connect", refuse),
        mock.patch.object(socket.socket, "connect_ex", refuse),
        mock.patch.object(socket, "create_connection", refuse),
        mock.patch.object(socket, "getaddrinfo", refuse),
    ):
        yield


def schemas_shipped(version: str) -> bool:
    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    return (folder / f"v{version}.0-local-strict" / "_definitions.json").is_file()


def k8s_validate(doc: dict[str, Any], version: str) -> None:
    """kubernetes-validate in strict mode for exactly `version`; skips (with the reason) where that
    would need schemas that are not shipped offline."""
    if not schemas_shipped(version):
        pytest.skip(f"kubernetes-validate {kubernetes_validate.__version__} ships no offline schemas for {version}")
    try:
        with no_network():
            validated = kubernetes_validate.validate(copy.deepcopy(doc), version, strict=True)
    except NetworkAttemptError as e:
        pytest.skip(
            f"kubernetes-validate would fetch a schema for Kubernetes {version} online ({e}); tests stay offline"
        )
    except Unresolvable as e:
        pytest.skip(f"kubernetes-validate's schemas for {version} reference something not shipped offline: {e}")
    # validate() silently falls back to the newest older schema it has; we want the exact one.
    assert validated == version


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_validate_ships_the_schemas_offline(version: str) -> None:
    assert schemas_shipped(version), f"no offline schemas for Kubernetes {version}"


def test_every_document_is_checked() -> None:
    assert KUBERNETES_OBJECTS, "no Kubernetes objects found under crds/ and manifests/"
    assert LOCAL_MODELS, "no LocalModel examples found under manifests/"
    for doc_id, doc in LOCAL_MODELS:
        assert doc.get("kind") == "LocalModel", f"{doc_id}: only LocalModels belong to {GROUP}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("doc", params(KUBERNETES_OBJECTS))
def test_kubernetes_objects_validate_strictly(doc: dict[str, Any], version: str) -> None:
    try:
        k8s_validate(doc, version)
    except kubernetes_validate.SchemaNotFoundError as e:
        pytest.fail(f"kubernetes-validate knows no schema for this object: {e.message}")


def _mutate(doc: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    change(doc)
    return doc


def _crd_version(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["versions"][0]


BROKEN_CRDS: dict[str, Callable[[dict[str, Any]], None]] = {
    "versions-not-a-list": lambda d: d["spec"].update(versions={"name": "v1alpha1"}),
    "scope-missing": lambda d: d["spec"].pop("scope"),
    "names-typo": lambda d: d["spec"]["names"].update(shortName=["lm"]),
    "scale-without-status-path": lambda d: _crd_version(d)["subresources"]["scale"].pop("statusReplicasPath"),
    "served-not-boolean": lambda d: _crd_version(d).update(served="yes"),
    "minimum-not-a-number": lambda d: _crd_version(d)["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "replicas"
    ].update(minimum="zero"),
    "printer-column-without-jsonpath": lambda d: _crd_version(d)["additionalPrinterColumns"][0].pop("jsonPath"),
}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("breakage", sorted(BROKEN_CRDS))
def test_kubernetes_validate_rejects_a_broken_crd(crd: dict[str, Any], breakage: str, version: str) -> None:
    broken = _mutate(crd, BROKEN_CRDS[breakage])
    with pytest.raises(kubernetes_validate.ValidationError):
        k8s_validate(broken, version)


def test_kubernetes_validate_rejects_a_broken_role() -> None:
    role = next(d for d in load_documents(RENDERED_PATH) if d["kind"] == "Role")
    typo = _mutate(role, lambda d: d["rules"][0].update(resource=d["rules"][0].pop("resources")))
    not_a_list = _mutate(role, lambda d: d["rules"][0].update(verbs="get"))
    for broken in (typo, not_a_list):
        with pytest.raises(kubernetes_validate.ValidationError):
            k8s_validate(broken, NEWEST_SHIPPED)


# --------------------------------------------------------------------------------------------
# LocalModels against the CRD's schema


def to_json_schema(node: Any) -> Any:
    """The OpenAPI v3 schema of a CRD as JSON Schema (draft 4, which OpenAPI 3.0 follows).

    `x-kubernetes-int-or-string` becomes anyOf integer/string; `nullable` adds null; an object with
    `properties` and without `x-kubernetes-preserve-unknown-fields` rejects other fields (what the
    API server does with kubectl's default strict field validation); other `x-` keys are dropped.
    """
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key == "nullable":
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in {"items", "additionalProperties", "not"}:
            out[key] = to_json_schema(value)
        elif key in {"anyOf", "allOf", "oneOf"}:
            out[key] = [to_json_schema(sub) for sub in value]
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def cel_vllm_only_for_chat(spec: dict[str, Any]) -> bool:
    return spec.get("engine", "auto") != "vllm" or spec.get("type") == "chat"


def cel_vllm_needs_a_gpu(spec: dict[str, Any]) -> bool:
    return spec.get("engine", "auto") != "vllm" or spec.get("placement", "auto") != "cpu"


# Each CEL rule on spec, mirrored in Python so that the examples and the negative tests exercise it.
CEL_MIRRORS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "!has(self.engine) || self.engine != 'vllm' || self.type == 'chat'": cel_vllm_only_for_chat,
    "!has(self.engine) || self.engine != 'vllm' || !has(self.placement) || self.placement != 'cpu'": (
        cel_vllm_needs_a_gpu
    ),
}


def localmodel_errors(crd: dict[str, Any], obj: dict[str, Any]) -> list[str]:
    """Every schema or CEL-rule violation of a LocalModel, as readable strings."""
    validator = jsonschema.Draft4Validator(to_json_schema(openapi_schema(crd)))
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(obj)]
    spec = obj.get("spec")
    if not errors and isinstance(spec, dict):
        for rule in openapi_schema(crd)["properties"]["spec"].get("x-kubernetes-validations", []):
            if not CEL_MIRRORS[rule["rule"]](spec):
                errors.append(f"spec{rule.get('fieldPath', '')}: {rule['message']}")
    return errors


def test_converted_schema_is_valid_json_schema(crd: dict[str, Any]) -> None:
    jsonschema.Draft4Validator.check_schema(to_json_schema(openapi_schema(crd)))


def test_every_cel_rule_has_a_python_mirror(crd: dict[str, Any]) -> None:
    rules = [r["rule"] for r in openapi_schema(crd)["properties"]["spec"].get("x-kubernetes-validations", [])]
    assert sorted(rules) == sorted(CEL_MIRRORS)


@pytest.mark.parametrize("doc", params(LOCAL_MODELS))
def test_localmodel_examples_match_the_crd(crd: dict[str, Any], doc: dict[str, Any]) -> None:
    assert localmodel_errors(crd, doc) == []
    assert doc["apiVersion"] == f"{GROUP}/{crd['spec']['versions'][0]['name']}"
    name = doc["metadata"]["name"]
    # The API model name clients use; children are llmi-NAME, which should not need truncating.
    assert DNS1123_LABEL.match(name), name
    assert len(f"llmi-{name}") <= 63, name
    assert "status" not in doc  # status belongs to the operator


def test_the_examples_cover_every_model_type() -> None:
    types = {doc["spec"]["type"] for _, doc in LOCAL_MODELS}
    assert types == {"chat", "embedding", "reranker", "vision", "multimodal"}


@pytest.fixture(scope="module")
def example(crd: dict[str, Any]) -> dict[str, Any]:
    doc = next(d for _, d in LOCAL_MODELS if d["spec"]["type"] == "chat")
    assert localmodel_errors(crd, doc) == []
    return doc


BAD_SPECS: dict[str, dict[str, Any]] = {
    "replicas-2": {"replicas": 2},
    "replicas-negative": {"replicas": -1},
    "type-banana": {"type": "banana"},
    "engine-unknown": {"engine": "llamacpp"},
    "placement-unknown": {"placement": "tpu"},
    "path-dotdot": {"path": "../etc"},
    "path-absolute": {"path": "/etc/passwd"},
    "path-dotdot-inside": {"path": "models/../../etc"},
    "path-dotdot-last": {"path": "models/.."},
    "path-dot": {"path": "./model"},
    "path-empty-segment": {"path": "a//b"},
    "path-trailing-slash": {"path": "model/"},
    "path-empty": {"path": ""},
    "memory-bad-unit": {"memory": "6GB"},
    "memory-negative": {"memory": "-1Gi"},
    "memory-float": {"memory": 1.5},
    "idle-no-unit": {"idleTimeout": "600"},
    "idle-integer": {"idleTimeout": 600},
    "idle-days": {"idleTimeout": "1d"},
    "idle-compound": {"idleTimeout": "1h30m"},
    "pinned-string": {"pinned": "yes"},
    "engine-args-not-strings": {"engineArgs": ["--max-model-len", 8192]},
    "node-selector-not-strings": {"nodeSelector": {"gpu": True}},
    "unknown-field": {"gpus": 1},
    "vllm-for-embeddings": {"engine": "vllm", "type": "embedding"},
    "vllm-on-cpu": {"engine": "vllm", "placement": "cpu"},
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_schema_rejects_bad_specs(crd: dict[str, Any], example: dict[str, Any], case: str) -> None:
    bad = _mutate(example, lambda d: d["spec"].update(BAD_SPECS[case]))
    assert localmodel_errors(crd, bad), f"{case} was accepted"


@pytest.mark.parametrize("field", ["path", "type"])
def test_schema_requires_path_and_type(crd: dict[str, Any], example: dict[str, Any], field: str) -> None:
    assert localmodel_errors(crd, _mutate(example, lambda d: d["spec"].pop(field)))


def test_schema_requires_spec(crd: dict[str, Any], example: dict[str, Any]) -> None:
    assert localmodel_errors(crd, _mutate(example, lambda d: d.pop("spec")))


GOOD_SPECS: dict[str, dict[str, Any]] = {
    "path-nested": {"path": "embeddings/bge-m3"},
    "path-dots-in-name": {"path": "Qwen2.5-7B-Instruct-AWQ"},
    "path-hidden-folder": {"path": ".cache/model"},
    "path-dotdot-prefix-name": {"path": "..weird-but-legal"},
    "path-hf-cache": {"path": "hub/models--Qwen--Qwen2.5-0.5B/snapshots/0123abcd"},
    "memory-bytes": {"memory": 6442450944},
    "memory-bytes-string": {"memory": "6442450944"},
    "memory-gi": {"memory": "6Gi"},
    "memory-mi": {"memory": "512Mi"},
    "memory-g": {"memory": "6G"},
    "memory-fraction": {"memory": "1.5Gi"},
    "idle-never": {"idleTimeout": "0"},
    "idle-seconds": {"idleTimeout": "90s"},
    "idle-hours": {"idleTimeout": "1h"},
    "replicas-1": {"replicas": 1},
    "minimal": {},
}


@pytest.mark.parametrize("case", sorted(GOOD_SPECS))
def test_schema_accepts_good_specs(crd: dict[str, Any], case: str) -> None:
    obj = {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "LocalModel",
        "metadata": {"name": "m"},
        "spec": {"path": "m", "type": "chat", **GOOD_SPECS[case]},
    }
    assert localmodel_errors(crd, obj) == []


def test_status_as_the_operator_writes_it_is_valid(crd: dict[str, Any], example: dict[str, Any]) -> None:
    status = {
        "phase": "Ready",
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "RuntimeReady",
                "message": "serving",
                "lastTransitionTime": "2025-01-01T00:00:00Z",
                "observedGeneration": 3,
            },
            {"type": "Scheduled", "status": "True", "reason": "BudgetFits"},
        ],
        "node": "gpu-node-1",
        "endpoint": "http://llmi-qwen.llmi.svc:8000",
        "placement": "offload",
        "memory": 12884901888,
        "replicas": 1,
        "lastRequestTime": "2025-01-01T00:05:00Z",
        "message": "",
        "observedGeneration": 3,
    }
    assert localmodel_errors(crd, {**example, "status": status}) == []
    for bad in ({"phase": "Running"}, {"placement": "auto"}, {"replicas": -1}, {"conditions": [{"type": "Ready"}]}):
        assert localmodel_errors(crd, {**example, "status": {**status, **bad}}), bad


# --------------------------------------------------------------------------------------------
# What kubernetes-validate cannot see: structural schema, defaults, patterns

LOOKAROUND_OR_BACKREF = re.compile(r"\(\?[=!<]|\\[1-9]")


def schema_nodes(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path or "<root>", node
    for name, sub in node.get("properties", {}).items():
        yield from schema_nodes(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from schema_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from schema_nodes(node["additionalProperties"], f"{path}{{}}")


def structural_problems(schema: dict[str, Any]) -> list[str]:
    problems = []
    int_or_string = [{"type": "integer"}, {"type": "string"}]
    for path, node in schema_nodes(schema):
        if node.get("x-kubernetes-int-or-string"):
            if "type" in node:
                problems.append(f"{path}: int-or-string must not set type")
            if "anyOf" in node and node["anyOf"] != int_or_string:
                problems.append(f"{path}: int-or-string anyOf must be exactly [integer, string]")
        elif "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(f"{path}: no type")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties and additionalProperties are mutually exclusive")
        if "pattern" in node:
            try:
                re.compile(node["pattern"])
            except re.error as e:
                problems.append(f"{path}: pattern does not compile: {e}")
            if LOOKAROUND_OR_BACKREF.search(node["pattern"]):
                problems.append(f"{path}: pattern uses look-arounds or back-references (not RE2)")
        if "default" in node:
            errors = list(jsonschema.Draft4Validator(to_json_schema(node)).iter_errors(node["default"]))
            if errors:
                problems.append(f"{path}: default {node['default']!r} is invalid: {errors[0].message}")
        if node.get("x-kubernetes-list-type") == "map":
            required = set(node.get("items", {}).get("required", []))
            for key in node.get("x-kubernetes-list-map-keys", []):
                if key not in required and "default" not in node["items"]["properties"].get(key, {}):
                    problems.append(f"{path}: list-map key {key} must be required or defaulted")
    if schema.get("type") != "object":
        problems.append("<root>: must be an object")
    return problems


def test_crd_schema_is_structural(crd: dict[str, Any]) -> None:
    assert structural_problems(openapi_schema(crd)) == []


def test_structural_check_bites(crd: dict[str, Any]) -> None:
    def field(name: str, **change: Any) -> Callable[[dict[str, Any]], None]:
        return lambda schema: schema["properties"]["spec"]["properties"][name].update(change)

    breakages = [
        lambda schema: schema["properties"]["spec"]["properties"]["path"].pop("type"),
        field("memory", type="string"),
        field("memory", anyOf=[{"type": "integer", "minimum": 0}, {"type": "string"}]),
        field("idleTimeout", default="forever"),
        field("path", pattern=r"^(?!\.\./).*$"),
        field("nodeSelector", properties={"a": {"type": "string"}}),
    ]
    for breakage in breakages:
        assert structural_problems(_mutate(openapi_schema(crd), breakage)), breakage


# --------------------------------------------------------------------------------------------
# The contract (docs/kubernetes.md)

SPEC_FIELDS = {
    "path", "type", "engine", "placement", "memory", "replicas", "idleTimeout", "pinned",
    "engineArgs", "resources", "nodeSelector", "tolerations",
}  # fmt: skip
STATUS_FIELDS = {
    "phase", "conditions", "node", "endpoint", "placement", "memory", "replicas", "lastRequestTime",
    "message", "observedGeneration",
}  # fmt: skip
PRINTER_COLUMNS = [
    ("Type", "string", ".spec.type"),
    ("Phase", "string", ".status.phase"),
    ("Placement", "string", ".status.placement"),
    ("Memory", "string", ".spec.memory"),
    ("Node", "string", ".status.node"),
    ("Age", "date", ".metadata.creationTimestamp"),
]


def contract_problems(crd: dict[str, Any]) -> list[str]:
    problems: list[str] = []

    def expect(what: str, actual: Any, expected: Any) -> None:
        if actual != expected:
            problems.append(f"{what}: {actual!r} != {expected!r}")

    spec = crd.get("spec", {})
    expect("apiVersion", crd.get("apiVersion"), "apiextensions.k8s.io/v1")
    expect("kind", crd.get("kind"), "CustomResourceDefinition")
    expect("metadata.name", crd.get("metadata", {}).get("name"), f"localmodels.{GROUP}")
    expect("group", spec.get("group"), GROUP)
    expect("scope", spec.get("scope"), "Namespaced")
    names = spec.get("names", {})
    for key, value in {"kind": "LocalModel", "plural": "localmodels", "singular": "localmodel"}.items():
        expect(f"names.{key}", names.get(key), value)
    expect("names.shortNames", names.get("shortNames"), ["lm"])
    expect("names.categories", names.get("categories"), ["llmi"])

    versions = spec.get("versions", [])
    expect(
        "versions", [(v.get("name"), v.get("served"), v.get("storage")) for v in versions], [("v1alpha1", True, True)]
    )
    if len(versions) != 1:
        return problems
    version = versions[0]
    subresources = version.get("subresources", {})
    expect("subresources.status", subresources.get("status"), {})
    expect(
        "subresources.scale",
        subresources.get("scale"),
        {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"},
    )
    columns = [(c.get("name"), c.get("type"), c.get("jsonPath")) for c in version.get("additionalPrinterColumns", [])]
    expect("additionalPrinterColumns", columns, PRINTER_COLUMNS)

    schema = version.get("schema", {}).get("openAPIV3Schema", {})
    spec_schema = schema.get("properties", {}).get("spec", {})
    fields = spec_schema.get("properties", {})
    expect("spec fields", set(fields), SPEC_FIELDS)
    expect("spec.required", sorted(spec_schema.get("required", [])), ["path", "type"])
    expect("status fields", set(schema.get("properties", {}).get("status", {}).get("properties", {})), STATUS_FIELDS)

    def field(name: str, key: str) -> Any:
        return fields.get(name, {}).get(key)

    expect("spec.type.enum", field("type", "enum"), ["chat", "embedding", "reranker", "vision", "multimodal"])
    expect("spec.engine.enum", field("engine", "enum"), ["auto", "transformers", "vllm"])
    expect("spec.placement.enum", field("placement", "enum"), ["auto", "gpu", "offload", "cpu"])
    defaults = {name: field(name, "default") for name in ("engine", "placement", "replicas", "idleTimeout", "pinned")}
    expect(
        "defaults",
        defaults,
        {"engine": "auto", "placement": "auto", "replicas": 0, "idleTimeout": "10m", "pinned": False},
    )
    expect(
        "spec.replicas range",
        (field("replicas", "type"), field("replicas", "minimum"), field("replicas", "maximum")),
        ("integer", 0, 1),
    )
    expect("spec.memory int-or-string", field("memory", "x-kubernetes-int-or-string"), True)
    expect("spec.resources preserved", field("resources", "x-kubernetes-preserve-unknown-fields"), True)
    expect(
        "spec.tolerations items preserved",
        (fields.get("tolerations", {}).get("items") or {}).get("x-kubernetes-preserve-unknown-fields"),
        True,
    )
    expect("spec.nodeSelector values", field("nodeSelector", "additionalProperties"), {"type": "string"})
    expect("spec.engineArgs items", field("engineArgs", "items"), {"type": "string"})

    status = schema.get("properties", {}).get("status", {}).get("properties", {})
    expect("status.phase.enum", status.get("phase", {}).get("enum"), list(PHASES))
    condition = status.get("conditions", {}).get("items", {}).get("properties", {})
    expect(
        "status.conditions fields",
        set(condition),
        {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"},
    )
    for name in ("memory", "replicas", "observedGeneration"):
        expect(f"status.{name}.type", status.get(name, {}).get("type"), "integer")
    return problems


def test_crd_follows_the_contract(crd: dict[str, Any]) -> None:
    assert contract_problems(crd) == []


CONTRACT_BREAKAGES: dict[str, Callable[[dict[str, Any]], None]] = {
    # kubernetes-validate accepts any string as scope (the API server would not); the contract
    # check is what catches it.
    "scope-everywhere": lambda d: d["spec"].update(scope="Everywhere"),
    "no-short-name": lambda d: d["spec"]["names"].pop("shortNames"),
    "no-status-subresource": lambda d: _crd_version(d)["subresources"].pop("status"),
    "scale-path": lambda d: _crd_version(d)["subresources"]["scale"].update(specReplicasPath=".spec.size"),
    "column-order": lambda d: _crd_version(d)["additionalPrinterColumns"].reverse(),
    "memory-column-from-status": lambda d: _crd_version(d)["additionalPrinterColumns"][3].update(
        jsonPath=".status.memory"
    ),
    "idle-default": lambda d: _crd_version(d)["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "idleTimeout"
    ].update(default="5m"),
}


@pytest.mark.parametrize("breakage", sorted(CONTRACT_BREAKAGES))
def test_contract_check_bites(crd: dict[str, Any], breakage: str) -> None:
    assert contract_problems(_mutate(crd, CONTRACT_BREAKAGES[breakage]))


def test_chart_ships_the_same_crd() -> None:
    copies = sorted((ROOT / "charts").glob("*/crds/localmodels.llmi.dev.yaml"))
    if not copies:
        pytest.skip("no Helm chart with a crds/ folder yet")
    for chart_copy in copies:
        assert chart_copy.read_text(encoding="utf-8") == CRD_PATH.read_text(encoding="utf-8"), chart_copy


# --------------------------------------------------------------------------------------------
# RBAC: what each service account can do, in total


def effective_permissions(docs: list[dict[str, Any]], account: str) -> set[tuple[str, str, str, str]]:
    """(scope, apiGroup, resource, verb) granted to ServiceAccount llmi/`account` by these documents;
    scope is the namespace for a RoleBinding, "cluster" for a ClusterRoleBinding."""
    roles = {
        (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
        for d in docs
        if d["kind"] in {"Role", "ClusterRole"}
    }
    granted: set[tuple[str, str, str, str]] = set()
    for binding in (d for d in docs if d["kind"] in {"RoleBinding", "ClusterRoleBinding"}):
        subject = {"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}
        if not any({k: s.get(k) for k in subject} == subject for s in binding.get("subjects", [])):
            continue
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        role = roles[(ref["kind"], namespace if ref["kind"] == "Role" else None, ref["name"])]
        scope = namespace or "cluster"
        for rule in role["rules"]:
            for group in rule.get("apiGroups", []):
                for resource in rule.get("resources", []):
                    for verb in rule["verbs"]:
                        granted.add((scope, group, resource, verb))
    return granted


def perms(scope: str, group: str, resource: str, verbs: str) -> set[tuple[str, str, str, str]]:
    return {(scope, group, resource, verb) for verb in verbs.split()}


OPERATOR_PERMISSIONS = (
    perms(NAMESPACE, GROUP, "localmodels", "get list watch create patch")
    | perms(NAMESPACE, GROUP, "localmodels/status", "patch")
    | perms(NAMESPACE, GROUP, "localmodels/finalizers", "update")
    | perms(NAMESPACE, "apps", "deployments", "get list watch create patch delete")
    | perms(NAMESPACE, "", "services", "get create patch delete")
    | perms(NAMESPACE, "", "pods", "list")
    | perms(NAMESPACE, "", "events", "create patch")
    | perms(NAMESPACE, "events.k8s.io", "events", "create patch")
    | perms("cluster", "", "nodes", "list")
    | perms("cluster", "apiextensions.k8s.io", "customresourcedefinitions", "list watch")
    | perms("cluster", "", "namespaces", "list watch")
)
ROUTER_PERMISSIONS = (
    perms(NAMESPACE, GROUP, "localmodels", "list watch patch")
    | perms(NAMESPACE, GROUP, "localmodels/scale", "patch")
    | perms(NAMESPACE, "discovery.k8s.io", "endpointslices", "list watch")
)


RBAC_KINDS = {"ServiceAccount", "Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}


def rbac_documents(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") in RBAC_KINDS]


@pytest.fixture(scope="module")
def rbac() -> list[dict[str, Any]]:
    """The RBAC of the rendered chart (manifests/llmi.yaml)."""
    docs = rbac_documents(load_documents(RENDERED_PATH))
    assert docs, f"no RBAC in {RENDERED_PATH.relative_to(ROOT)}; run scripts/render-manifests.sh"
    return docs


def test_rbac_service_accounts(rbac: list[dict[str, Any]]) -> None:
    accounts = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in rbac if d["kind"] == "ServiceAccount"}
    assert accounts == {(NAMESPACE, "llmi-operator"), (NAMESPACE, "llmi-router")}


def test_operator_gets_exactly_what_it_needs(rbac: list[dict[str, Any]]) -> None:
    assert effective_permissions(rbac, "llmi-operator") == OPERATOR_PERMISSIONS


def test_router_gets_exactly_what_it_needs(rbac: list[dict[str, Any]]) -> None:
    assert effective_permissions(rbac, "llmi-router") == ROUTER_PERMISSIONS


def test_rbac_has_no_wildcards_and_names_real_resources(rbac: list[dict[str, Any]], crd: dict[str, Any]) -> None:
    plural = crd["spec"]["names"]["plural"]
    subresources = {plural, *(f"{plural}/{s}" for s in (*_crd_version(crd)["subresources"], "finalizers"))}
    for role in (d for d in rbac if d["kind"] in {"Role", "ClusterRole"}):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), (role["metadata"]["name"], rule)
            assert "resourceNames" not in rule
            assert "nonResourceURLs" not in rule
            if GROUP in rule["apiGroups"]:
                assert set(rule["resources"]) <= subresources, rule


def test_permission_check_bites(rbac: list[dict[str, Any]]) -> None:
    widened = copy.deepcopy(rbac)
    router_role = next(d for d in widened if d["kind"] == "Role" and d["metadata"]["name"] == "llmi-router")
    router_role["rules"][0]["verbs"].append("delete")
    assert effective_permissions(widened, "llmi-router") != ROUTER_PERMISSIONS
    unbound = [d for d in rbac if d["kind"] != "ClusterRoleBinding"]
    assert effective_permissions(unbound, "llmi-operator") != OPERATOR_PERMISSIONS
