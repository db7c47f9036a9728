"""Memory estimates from safetensors headers: exact weights, documented overhead, hostile files."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmi.catalog.classify import NotAModel
from llmi.catalog.estimate import (
    ACTIVATION_FRACTION,
    BNB_4BIT_BYTES_PER_PARAM,
    DEVICE_KINDS,
    FORKED_BASELINE_BYTES,
    PROCESS_BASELINE_BYTES,
    RUNTIME_OVERHEAD_BYTES,
    SPARE_BASELINE_BYTES,
    estimate,
    kv_cache_bytes,
    safetensors_bytes,
)
from llmi.catalog.scan import scan
from llmi.modeltypes import ModelType
from tests.fake_models import (
    QWEN25_7B_CONFIG,
    header_bytes,
    qwen25_7b_tensors,
    small_chat_model,
    write_raw,
    write_safetensors,
    write_sharded,
)
from tests.servers import runtime_env
from tests.tiny_models import TINY_TYPES

MIB = 1024 * 1024
GIB = 1024**3
QWEN25_7B_BYTES = 15_231_233_024  # total_size in the real model.safetensors.index.json


BNB_4BIT = {"quant_method": "bitsandbytes", "load_in_4bit": True}


def models_json(*args: str) -> list[dict[str, Any]]:
    """`llmi models --json` as a real process."""
    out = subprocess.run(
        [sys.executable, "-m", "llmi.cli", "models", "--json", *args],
        capture_output=True,
        text=True,
        env=runtime_env(),
        timeout=60,
        check=True,
    )
    return list(json.loads(out.stdout))


@pytest.fixture
def qwen7b(tmp_path: Path) -> Path:
    folder = tmp_path / "models" / "Qwen2.5-7B-Instruct"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(QWEN25_7B_CONFIG))
    assert write_sharded(folder, qwen25_7b_tensors(), shards=4) == QWEN25_7B_BYTES
    # A stray single-file copy next to the shards must not be counted (the index names the shards).
    write_safetensors(folder / "consolidated.safetensors", {"w": ("BF16", [1024, 1024, 1024])})
    return folder


def test_7b_weights_are_the_exact_tensor_bytes(qwen7b: Path) -> None:
    total, per_dtype = safetensors_bytes(qwen7b)
    assert total == QWEN25_7B_BYTES
    assert per_dtype == {"BF16": QWEN25_7B_BYTES}


def test_7b_estimate_follows_the_documented_formula(qwen7b: Path) -> None:
    est = estimate(qwen7b, ModelType.CHAT, max_model_len=16384)
    # 2 (K, V) x 28 layers x 4 KV heads x 128 head dim x min(32768, 16384) tokens x 2 bytes (bf16)
    assert est.kv_cache_bytes == 2 * 28 * 4 * 128 * 16384 * 2 == 896 * MIB
    assert est.weights_bytes == QWEN25_7B_BYTES
    assert est.overhead_bytes == 128 * MIB + math.ceil(QWEN25_7B_BYTES * 0.10)
    assert est.baseline_bytes == PROCESS_BASELINE_BYTES["cuda"] == 512 * MIB
    assert est.total_bytes == est.baseline_bytes + est.weights_bytes + est.overhead_bytes + est.kv_cache_bytes


def test_on_cpu_16_bit_weights_count_at_float32(qwen7b: Path) -> None:
    est = estimate(qwen7b, ModelType.CHAT, max_model_len=16384, device="cpu")
    assert est.device == "cpu"
    assert est.weights_bytes == 2 * QWEN25_7B_BYTES
    assert est.overhead_bytes == RUNTIME_OVERHEAD_BYTES["cpu"][ModelType.CHAT] + math.ceil(2 * QWEN25_7B_BYTES * 0.10)
    assert est.baseline_bytes == PROCESS_BASELINE_BYTES["cpu"]
    assert est.total_bytes == est.baseline_bytes + est.weights_bytes + est.overhead_bytes + est.kv_cache_bytes
    assert est.total_bytes > estimate(qwen7b, ModelType.CHAT, max_model_len=16384, device="cuda").total_bytes
    # The cache grows with use on CPU, and the measurement after the first answer replaces this:
    # a typical sequence's reserve, not the whole context's.
    assert est.kv_cache_bytes == 2 * 28 * 4 * 128 * 2048 * 2


def test_cpu_upcast_leaves_float32_integer_and_bitsandbytes_weights_alone(tmp_path: Path) -> None:
    folder = small_chat_model(tmp_path / "mixed")
    write_safetensors(
        folder / "model.safetensors",
        {"q": ("I32", [64, 32]), "scales": ("F16", [8, 256]), "norm": ("F32", [100]), "e": ("BF16", [10, 10])},
    )
    cpu = estimate(folder, ModelType.CHAT, 128, device="cpu").weights_bytes
    assert cpu == 64 * 32 * 4 + 2 * (8 * 256 * 2) + 400 + 2 * (10 * 10 * 2)
    bnb = small_chat_model(tmp_path / "bnb", quantization_config=BNB_4BIT)
    assert estimate(bnb, ModelType.CHAT, 128, device="cpu").weights_bytes == (
        estimate(bnb, ModelType.CHAT, 128, device="cuda").weights_bytes
    )


def test_cli_plans_a_7b_model_as_offload_on_an_8gb_gpu(qwen7b: Path) -> None:
    (row,) = models_json("--gpu-memory-gb", "8", "--models-dir", str(qwen7b.parent))
    expected = QWEN25_7B_BYTES * 1.10 + 512 * MIB + 128 * MIB + 896 * MIB
    assert row["name"] == "Qwen2.5-7B-Instruct"
    assert row["type"] == "chat"
    assert row["placement"] == "offload"
    assert row["problems"] == []
    assert abs(row["memory_bytes"] - expected) <= 0.10 * expected


def test_kv_cache_of_llama2_7b_is_capped_by_its_context() -> None:
    config = {"num_hidden_layers": 32, "num_attention_heads": 32, "hidden_size": 4096}
    config |= {"max_position_embeddings": 4096, "torch_dtype": "float16"}
    assert kv_cache_bytes(config, 16384) == 2 * GIB
    assert kv_cache_bytes(config, 1024) == 512 * MIB
    assert kv_cache_bytes(config | {"torch_dtype": "float32"}, 1024) == 1024 * MIB


def test_kv_cache_reads_a_nested_text_config_and_explicit_head_dim() -> None:
    text = {"num_hidden_layers": 10, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 256}
    config = {"architectures": ["Gemma3ForConditionalGeneration"], "text_config": text | {"hidden_size": 1000}}
    assert kv_cache_bytes(config, 100) == 2 * 10 * 2 * 256 * 100 * 2
    assert kv_cache_bytes({"architectures": ["X"]}, 100) is None


def test_chat_without_attention_fields_reserves_a_fraction_of_weights(tmp_path: Path) -> None:
    folder = small_chat_model(tmp_path / "m")
    (folder / "config.json").write_text(json.dumps({"architectures": ["MysteryForCausalLM"]}))
    est = estimate(folder, ModelType.CHAT, 4096)
    assert est.kv_cache_bytes == math.ceil(est.weights_bytes * 0.20)


@pytest.mark.parametrize("device", DEVICE_KINDS)
@pytest.mark.parametrize("model_type", [t for t in ModelType if t is not ModelType.CHAT])
def test_encoders_get_no_kv_cache_and_their_documented_overhead(
    tmp_path: Path, model_type: ModelType, device: str
) -> None:
    folder = small_chat_model(tmp_path / "m")
    est = estimate(folder, model_type, 4096, device)  # type: ignore[arg-type]
    assert est.kv_cache_bytes == 0
    extra = RUNTIME_OVERHEAD_BYTES[device][model_type]  # type: ignore[index]
    # On CPU the sentence-transformers engines carry that library's pages (calibrated: +40 MiB).
    assert extra == (40 * MIB if device == "cpu" and model_type in {ModelType.EMBEDDING, ModelType.RERANKER} else 0)
    assert est.overhead_bytes == extra + math.ceil(est.weights_bytes * ACTIVATION_FRACTION)
    assert est.total_bytes == PROCESS_BASELINE_BYTES[device] + est.weights_bytes + est.overhead_bytes  # type: ignore[index]


def test_bitsandbytes_4bit_over_bf16_weights_is_scaled(tmp_path: Path) -> None:
    folder = small_chat_model(tmp_path / "m", quantization_config=BNB_4BIT)
    on_disk, _ = safetensors_bytes(folder)
    assert estimate(folder, ModelType.CHAT, 128).weights_bytes == math.ceil(on_disk // 2 * BNB_4BIT_BYTES_PER_PARAM)


def test_prequantized_and_awq_checkpoints_count_header_bytes(tmp_path: Path) -> None:
    bnb = small_chat_model(tmp_path / "bnb", quantization_config=BNB_4BIT)
    write_safetensors(bnb / "model.safetensors", {"q": ("U8", [1000, 32]), "norm": ("BF16", [64])})
    assert estimate(bnb, ModelType.CHAT, 128).weights_bytes == 32_000 + 128
    awq = small_chat_model(tmp_path / "awq", quantization_config={"quant_method": "awq", "bits": 4})
    write_safetensors(awq / "model.safetensors", {"qweight": ("I32", [64, 32]), "scales": ("F16", [8, 256])})
    assert estimate(awq, ModelType.CHAT, 128).weights_bytes == 64 * 32 * 4 + 8 * 256 * 2


def test_pickle_weights_count_by_file_size(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"\0" * 1234)
    assert safetensors_bytes(folder) == (1234, {"unknown": 1234})
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(NotAModel, match="no weights"):
        safetensors_bytes(folder)


def _header_claiming(path: Path, length: int, file_size: int) -> None:
    with path.open("wb") as f:
        f.write(struct.pack("<Q", length))
        f.truncate(file_size)


def _tensor(dtype: str, shape: list[int], offsets: list[int]) -> bytes:
    return json.dumps({"w": {"dtype": dtype, "shape": shape, "data_offsets": offsets}}).encode()


HOSTILE = {
    "too-short": (lambda p: p.write_bytes(b"\x01\x02\x03"), "too short"),
    "length-past-eof": (lambda p: _header_claiming(p, 10_000, 100), "exceeds the file size"),
    "length-over-100mb": (lambda p: _header_claiming(p, 150_000_000, 200_000_000), "exceeds 100000000"),
    "not-json": (lambda p: write_raw(p, b"{not json", 0), "not JSON"),
    "not-utf8": (lambda p: write_raw(p, b'{"\xff": 1}', 0), "not JSON"),
    "deep-json": (lambda p: write_raw(p, b"[" * 200_000, 0), "not JSON"),
    "json-list": (lambda p: write_raw(p, b"[1, 2]", 0), "not a JSON object"),
    "unknown-dtype": (lambda p: write_raw(p, _tensor("F7", [2], [0, 2]), 2), "unknown dtype"),
    "negative-shape": (lambda p: write_raw(p, _tensor("F32", [-1], [0, 4]), 4), "invalid shape"),
    "bad-offsets": (lambda p: write_raw(p, _tensor("F32", [1], [4]), 4), "invalid data_offsets"),
    "past-data": (lambda p: write_raw(p, _tensor("F32", [1000], [0, 4000]), 10), "outside the file"),
    "shape-mismatch": (lambda p: write_raw(p, _tensor("F32", [10], [0, 4]), 4), "its shape needs 40"),
    "tensor-not-object": (lambda p: write_raw(p, b'{"w": 5}', 0), "not described by an object"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_safetensors_become_problems(tmp_path: Path, case: str) -> None:
    folder = small_chat_model(tmp_path / "models" / case)
    write, reason = HOSTILE[case]
    write(folder / "model.safetensors")
    with pytest.raises(NotAModel, match=reason):
        safetensors_bytes(folder)
    catalog = scan(tmp_path / "models", max_model_len=4096)
    assert catalog.entries == ()
    (problem,) = catalog.problems
    assert problem.path == folder
    assert reason in problem.reason


def test_hostile_files_do_not_stop_the_cli(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for case, (write, _) in HOSTILE.items():
        write(small_chat_model(models / case) / "model.safetensors")
    small_chat_model(models / "good")
    rows = {row["name"]: row for row in models_json("--models-dir", str(models))}
    assert rows["good"]["type"] == "chat"
    for case, (_, reason) in HOSTILE.items():
        assert rows[case]["type"] is None
        assert rows[case]["memory_bytes"] is None
        assert reason in rows[case]["problems"][0]


@pytest.mark.parametrize(
    ("weight_map", "reason"),
    [
        ({"w": "model-00002-of-00002.safetensors"}, "missing shards"),
        ({"w": "../elsewhere.safetensors"}, "invalid shard"),
        ({"w": 3}, "invalid shard"),
        (None, "no weight_map"),
    ],
)
def test_broken_indexes_are_problems(tmp_path: Path, weight_map: object, reason: str) -> None:
    folder = small_chat_model(tmp_path / "m")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(NotAModel, match=reason):
        safetensors_bytes(folder)


def test_sentence_transformers_module_weights_are_counted(tmp_path: Path) -> None:
    folder = small_chat_model(tmp_path / "m")
    (folder / "modules.json").write_text(json.dumps([{"path": ""}, {"path": "2_Dense"}, {"path": "../x"}]))
    (folder / "2_Dense").mkdir()
    write_safetensors(folder / "2_Dense" / "model.safetensors", {"linear.weight": ("F32", [10, 10])})
    before = header_bytes({"model.embed_tokens.weight": ("BF16", [1000, 64])})[1]
    total, per_dtype = safetensors_bytes(folder)
    assert per_dtype["F32"] == 400
    assert total == before + 2 * 4 * 64 * 64 * 2 + 400


def test_every_tiny_model_scans_with_its_type(tiny_models: dict[str, Path]) -> None:
    expected = {name: ModelType(kind) for name, kind in TINY_TYPES.items()}
    roots = {path.parent for path in tiny_models.values()}
    (root,) = roots
    catalog = scan(root, max_model_len=2048)
    assert not [p for p in catalog.problems if p.name in expected]
    entries = {e.name: e for e in catalog.entries}
    assert {name: entries[name].type for name in expected} == expected
    for name in expected:
        est = entries[name].estimate
        assert est.weights_bytes > 0
        assert entries[name].memory_bytes == est.total_bytes
        assert (est.kv_cache_bytes > 0) == (expected[name] is ModelType.CHAT)
        assert est.weights_bytes == sum(safetensors_bytes(tiny_models[name])[1].values())


def test_a_forked_runtime_counts_the_shared_baseline_and_no_library_overhead(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", {"w": ("F32", [256, 256])})
    cold = estimate(folder, ModelType.EMBEDDING, 4096, "cpu")
    forked = estimate(folder, ModelType.EMBEDDING, 4096, "cpu", launch="forked")
    assert cold.baseline_bytes == PROCESS_BASELINE_BYTES["cpu"]
    assert forked.baseline_bytes == FORKED_BASELINE_BYTES < cold.baseline_bytes
    assert forked.weights_bytes == cold.weights_bytes
    assert cold.overhead_bytes - forked.overhead_bytes == RUNTIME_OVERHEAD_BYTES["cpu"][ModelType.EMBEDDING]
    # On a GPU the budget counts each process's CUDA context, forked or not.
    on_gpu = estimate(folder, ModelType.EMBEDDING, 4096, "cuda")
    assert estimate(folder, ModelType.EMBEDDING, 4096, "cuda", launch="forked") == on_gpu


def test_a_runtime_beside_a_spare_counts_a_third_of_the_shared_pages(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    write_safetensors(folder / "model.safetensors", {"w": ("F32", [256, 256])})
    forked = estimate(folder, ModelType.CHAT, 4096, "cpu", launch="forked")
    beside = estimate(folder, ModelType.CHAT, 4096, "cpu", launch="spare")
    assert beside.baseline_bytes == SPARE_BASELINE_BYTES < forked.baseline_bytes
    assert forked.total_bytes - beside.total_bytes == FORKED_BASELINE_BYTES - SPARE_BASELINE_BYTES
    # On a GPU the context is per process, spare or not.
    on_gpu = estimate(folder, ModelType.CHAT, 4096, "cuda")
    assert estimate(folder, ModelType.CHAT, 4096, "cuda", launch="spare") == on_gpu
