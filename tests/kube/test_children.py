"""The desired Deployment and Service of a LocalModel (pure functions, no cluster)."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest

from llmi.localmodel import label_value
from llmi.modeltypes import ModelType
from llmi_operator.children import (
    ANNOTATION_SPEC_HASH,
    ChildConfig,
    Placed,
    child_name,
    desired_deployment,
    desired_service,
    endpoint,
    patch_ops,
    resolve_engine,
)
from llmi_operator.localmodel import InvalidSpec, ModelRef, ModelSpec, parse_spec
from llmi_operator.observe import placed_from_deployment

GIB = 1024**3
REF = ModelRef("qwen-7b", "llmi", "uid-1")
CONFIG = ChildConfig("llmi-runtime:1", "vllm/vllm-openai:1", "models", "shared", 45, 180)
GPU = Placed("node-a", "gpu", 5 * GIB, 5 * GIB, gpu_memory_bytes=20 * GIB)


def spec(**fields: Any) -> ModelSpec:
    return parse_spec({"path": "Qwen/Qwen2.5-7B", "type": "chat", **fields})


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]


def test_names_are_dns_labels_and_long_ones_get_a_hash() -> None:
    assert child_name("qwen-7b") == "llmi-qwen-7b"
    long = "m" * 80
    name = child_name(long)
    assert len(name) == 63
    assert name.startswith("llmi-mmm")
    assert name != child_name("m" * 81)
    assert len(label_value(long)) == 63
    assert endpoint(REF) == "http://llmi-qwen-7b.llmi.svc:8000"


def test_transformers_runtime_pod() -> None:
    model = spec(
        resources={"limits": {"memory": "16Gi"}},
        nodeSelector={"gpu": "a100"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        engineArgs=["--dtype", "bfloat16"],
        engine="transformers",
    )
    deployment = desired_deployment(REF, model, GPU, 1, CONFIG)
    labels = {
        "app.kubernetes.io/name": "llmi-runtime",
        "app.kubernetes.io/managed-by": "llmi-operator",
        "llmi.dev/model": "qwen-7b",
    }
    assert deployment["metadata"]["name"] == "llmi-qwen-7b"
    assert deployment["metadata"]["labels"] == labels
    assert deployment["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "llmi.dev/v1alpha1",
            "kind": "LocalModel",
            "name": "qwen-7b",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "a100", "kubernetes.io/hostname": "node-a"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["terminationGracePeriodSeconds"] == 45
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert {"name": "models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod["volumes"]
    c = container(deployment)
    assert c["name"] == "runtime"
    assert c["image"] == "llmi-runtime:1"
    assert c["command"] + c["args"] == [
        "llmi", "runtime", "--model", "/models/Qwen/Qwen2.5-7B", "--name", "qwen-7b", "--type", "chat",
        "--host", "0.0.0.0", "--port", "8000", "--placement", "gpu", "--dtype", "bfloat16",
    ]  # fmt: skip
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] == 900
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["HF_HOME"].startswith("/tmp/")
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert c["resources"] == {"limits": {"memory": "16Gi"}}  # shared GPU: no nvidia.com/gpu request


def test_placements_become_runtime_flags() -> None:
    offload = desired_deployment(REF, spec(), Placed("node-a", "offload", 4 * GIB, 12 * GIB), 1, CONFIG)
    assert container(offload)["args"][-4:] == ["--placement", "offload", "--max-gpu-memory", str(4 * GIB)]
    cpu = desired_deployment(REF, spec(placement="cpu"), Placed(None, "cpu", 0, 12 * GIB), 1, CONFIG)
    assert container(cpu)["args"][-4:] == ["--placement", "cpu", "--device", "cpu"]
    pod = cpu["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod  # cpu models are left to the scheduler
    assert "NVIDIA_VISIBLE_DEVICES" not in {e["name"] for e in container(cpu)["env"]}


def test_exclusive_gpu_mode_requests_a_gpu() -> None:
    exclusive = ChildConfig("llmi-runtime:1", "", "models", "exclusive", 45, 180)
    model = spec(resources={"limits": {"memory": "16Gi"}})
    c = container(desired_deployment(REF, model, GPU, 1, exclusive))
    assert c["resources"] == {"limits": {"memory": "16Gi", "nvidia.com/gpu": 1}}
    assert "NVIDIA_VISIBLE_DEVICES" not in {e["name"] for e in c["env"]}
    assert model.resources == {"limits": {"memory": "16Gi"}}  # the spec is not changed


def test_vllm_serves_chat_on_a_gpu_with_its_share_of_memory() -> None:
    deployment = desired_deployment(REF, spec(engine="vllm"), GPU, 1, CONFIG)
    c = container(deployment)
    assert c["image"] == "vllm/vllm-openai:1"
    assert c["command"] == ["vllm", "serve"]
    assert c["args"] == [
        "/models/Qwen/Qwen2.5-7B", "--served-model-name", "qwen-7b", "--host", "0.0.0.0", "--port", "8000",
        "--gpu-memory-utilization", "0.250",
    ]  # fmt: skip
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    given = spec(engine="vllm", engineArgs=["--gpu-memory-utilization=0.5"])
    assert container(desired_deployment(REF, given, GPU, 1, CONFIG))["args"][-1] == "--gpu-memory-utilization=0.5"
    offload = Placed("node-a", "offload", 4 * GIB, 10 * GIB)
    assert container(desired_deployment(REF, spec(engine="vllm"), offload, 1, CONFIG))["args"][-2:] == [
        "--cpu-offload-gb",
        "6",
    ]


def test_engine_choice() -> None:
    assert resolve_engine(spec(), "gpu", "vllm:1") == "vllm"  # auto: chat on a GPU with a vLLM image
    assert resolve_engine(spec(), "gpu", "") == "transformers"
    assert resolve_engine(spec(), "offload", "vllm:1") == "transformers"
    assert resolve_engine(spec(type="embedding"), "gpu", "vllm:1") == "transformers"
    with pytest.raises(InvalidSpec, match="needs a GPU"):
        resolve_engine(spec(engine="vllm"), "cpu", "vllm:1")
    with pytest.raises(InvalidSpec, match="LLMI_VLLM_IMAGE"):
        resolve_engine(spec(engine="vllm"), "gpu", "")
    with pytest.raises(InvalidSpec, match="chat models only"):
        parse_spec({"path": "x", "type": "embedding", "engine": "vllm"})


def test_service() -> None:
    service = desired_service(REF)
    assert service["metadata"]["name"] == "llmi-qwen-7b"
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "llmi-runtime", "llmi.dev/model": "qwen-7b"}
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]


def test_desired_children_are_deterministic() -> None:
    """Each desired-state function called twice gives the same object, hash included."""
    model = spec(tolerations=[{"key": "k", "operator": "Exists"}], resources={"limits": {"cpu": "2"}})
    assert desired_deployment(REF, model, GPU, 1, CONFIG) == desired_deployment(REF, model, GPU, 1, CONFIG)
    assert desired_service(REF) == desired_service(REF)
    one = desired_deployment(REF, model, GPU, 1, CONFIG)["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
    zero = desired_deployment(REF, model, GPU, 0, CONFIG)["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
    assert one != zero


def test_patch_ops_are_empty_when_hashes_agree_and_converge_otherwise() -> None:
    model = spec(tolerations=[{"key": "k", "operator": "Exists"}])
    old = desired_deployment(REF, model, GPU, 1, CONFIG)
    observed = copy.deepcopy(old)
    observed["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = "3"  # someone else's key
    observed["metadata"]["resourceVersion"] = "42"
    assert patch_ops(observed, old) == []
    new = desired_deployment(REF, spec(), GPU, 0, CONFIG)  # tolerations dropped, scaled to zero
    patched = jsonpatch.apply_patch(observed, patch_ops(observed, new))
    assert patched["spec"] == new["spec"]
    assert "tolerations" not in patched["spec"]["template"]["spec"]
    assert patched["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    assert (
        patched["metadata"]["annotations"][ANNOTATION_SPEC_HASH] == new["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
    )
    assert patch_ops(patched, new) == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"path": "/abs"}, "relative"),
        ({"path": "a/../b"}, "relative"),
        ({"type": "audio"}, "type"),
        ({"replicas": 2}, "replicas"),
        ({"memory": "lots"}, "memory"),
        ({"idleTimeout": "soon"}, "idleTimeout"),
        ({"placement": "tpu"}, "placement"),
    ],
)
def test_invalid_specs_say_which_field(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        parse_spec({"path": "m", "type": "chat", **fields})


def test_spec_values() -> None:
    model = parse_spec({"path": "m", "type": "reranker", "memory": "1.5Gi", "idleTimeout": "0", "replicas": 1})
    assert model.type is ModelType.RERANKER
    assert model.memory_bytes == int(1.5 * GIB)
    assert model.idle_timeout_s is None
    assert parse_spec({"path": "m", "type": "chat", "memory": "6G"}).memory_bytes == 6 * 10**9
    assert parse_spec({"path": "m", "type": "chat", "memory": 123}).memory_bytes == 123
    assert parse_spec({"path": "m", "type": "chat"}).idle_timeout_s == 600


def test_the_placement_read_back_from_a_deployment_derives_the_same_child() -> None:
    """A later pass rebuilds the running Deployment from what it carries: no rollout by itself."""
    for model, placed in ((spec(engine="vllm"), GPU), (spec(), Placed("node-b", "offload", 4 * GIB, 12 * GIB))):
        running = desired_deployment(REF, model, placed, 1, CONFIG)
        kept = placed_from_deployment(running, placed.memory_bytes)
        assert kept == placed
        assert desired_deployment(REF, model, kept, 1, CONFIG) == running


def test_pods_start_vllm_with_the_same_command_as_llmi_serve() -> None:
    """One builder (llmi/vllm.py): the operator's args are the embedded launcher's but for host and port."""
    from dataclasses import replace

    from llmi.vllm import VllmLaunch
    from llmi.vllm import vllm_args as shared

    config = replace(CONFIG, vllm_max_model_len=8192, vllm_dtype="bfloat16", vllm_tensor_parallel_size=2)
    pod = container(desired_deployment(REF, spec(engine="vllm"), GPU, 1, config))["args"]
    embedded = shared(
        VllmLaunch("/models/qwen", "qwen-7b", "127.0.0.1", 9, "gpu", 5 * GIB, 5 * GIB, 20 * GIB, 8192, "bfloat16", 2)
    )
    flags = lambda args: {a: args[i + 1] for i, a in enumerate(args[:-1]) if a.startswith("--")}  # noqa: E731
    differ = {"--host", "--port"}
    assert {k: v for k, v in flags(pod).items() if k not in differ} == {
        k: v for k, v in flags(embedded).items() if k not in differ
    }
    assert flags(pod)["--max-model-len"] == "8192"
