"""Memory a model needs once loaded, estimated from file headers without loading tensors.

Why headers: a safetensors file starts with an 8-byte little-endian length and a JSON
header naming every tensor's dtype, shape and byte range, so parameter bytes are exact
and cost one small read per shard, even for a 70B model on a slow disk.

The estimate depends on the device kind the budget counts (``cpu``: host memory, ``cuda``:
GPU memory) and is ``baseline + weights + overhead + kv_cache``:

- ``baseline``: what a runtime process holds before any weight, ``PROCESS_BASELINE_BYTES``.
  CPU: the interpreter, torch, transformers and the web stack. Calibrated on 2026-12-01 from
  ``/proc/PID/smaps_rollup`` of a cold ``llmi runtime`` serving each tiny test model (weights
  under 0.5 MiB; torch 2.13, transformers 5, x86-64): PSS 392-399 MiB for chat, vision and
  multimodal, of which 292 MiB anonymous (private) and 100-106 MiB library file pages; 445-446
  MiB (332 anonymous) for embedding and reranker, which import sentence-transformers too (the
  40 MiB ``RUNTIME_OVERHEAD_BYTES`` of those types). PSS splits file pages among the processes
  that map them, so a runtime beside others (other runtimes, other torch processes, a launcher
  it was forked from) reads lower than a lone one, down to its anonymous part (nine tiny runtimes
  side by side read 299-305 MiB). The constant, 345 MiB, is about the geometric mean of the lone
  figure (398) and that floor (292), so the estimate is within 25% of either (-13%, +18%). A
  pre-imported launcher whose children share its anonymous pages too lowers the PSS further:
  a runtime forked from the warm launcher's fork server (``launch="forked"``) read 207-212 MiB for
  every tiny type on 2026-12-01 (`bench/switch_bench.py --memory-only`), sentence-transformers
  included, since the fork server imported it: ``FORKED_BASELINE_BYTES`` (205 MiB), with no
  per-type library overhead; the fork server's own memory is counted once, apart
  (``Launcher.reserved_bytes``). Beside a spare runtime (``launch="spare"``) the pages are split
  three ways: 151-160 MiB on 2026-12-02, ``SPARE_BASELINE_BYTES`` (155 MiB); a runtime reads up
  to the forked figure while the spare that replaces the one it took is being forked.
  ``tests/test_memory_truth.py`` and ``tests/test_warm_launcher.py`` compare every type. GPU:
  the CUDA context, not yet calibrated on a GPU (300-600 MiB for torch 2.x with lazy module
  loading).
- ``weights``: tensor bytes from the headers (only the shards a ``*.safetensors.index.json``
  names, so a stray ``consolidated.safetensors`` is not counted twice). On CPU, 16-bit floating
  tensors count at float32: the CPU runtime loads float32 (``LoadOptions.torch_dtype``), so a
  bf16 checkpoint doubles. AWQ/GPTQ/FP8 checkpoints store packed weights, so their header bytes
  are already exact. A bitsandbytes ``quantization_config`` (``load_in_4bit``/``load_in_8bit``)
  over 16/32-bit weights on disk quantizes while loading: each floating parameter then costs
  ``BNB_4BIT_BYTES_PER_PARAM`` (0.5 byte + ~20% for block scales and the layers bitsandbytes
  keeps in 16-bit: embeddings, norms, lm_head) or ``BNB_8BIT_BYTES_PER_PARAM`` (1 byte + ~10%).
  Checkpoints saved already quantized (integer tensors on disk) are taken as they are. Without
  safetensors, the sizes of ``pytorch_model*.bin``/``*.pt``/``*.pth`` files stand in.
- ``overhead``: ``RUNTIME_OVERHEAD_BYTES`` per device kind and type (the libraries an engine
  adds on CPU; sampling buffers and allocator slack for chat on a GPU) plus
  ``ACTIVATION_FRACTION`` (10%) of the weights for activations, which grow with hidden size and
  hence roughly with the weights.
- ``kv_cache`` (chat only): ``2 (K and V) x layers x kv_heads x head_dim x max_model_len x
  bytes per element`` with ``max_model_len = min(max_position_embeddings, LLM_VLLM_MAX_MODEL_LEN)``,
  ``head_dim = head_dim or hidden_size // num_attention_heads`` and 2 bytes per element for
  16-bit configs (4 for float32). On a GPU it is a reserve for one full-length sequence. On CPU
  the transformers engine's cache grows with the tokens in flight and what is measured after the
  first answer replaces the estimate, so the reserve is for ``CPU_KV_RESERVE_TOKENS`` (2048)
  tokens: a full-context reserve made the first plan of a 135M-parameter model 28% above the
  memory it then measured, and every later plan the measurement. Nested ``text_config``
  (LLaVA/Gemma 3/Mistral 3 style) is read when the top level lacks the fields. Without the
  fields, ``KV_FALLBACK_FRACTION`` of the weights is reserved instead. Sliding windows and MLA
  are ignored: the estimate errs high.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llmi.catalog.classify import NotAModel, read_json
from llmi.modeltypes import ModelType
from llmi.planner import DeviceKind

MIB = 1024 * 1024
MAX_HEADER_BYTES = 100_000_000  # the limit the safetensors library itself enforces

# Bits per element of every dtype the safetensors format defines.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "F4": 4,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "C64": 64,
    "I64": 64,
    "U64": 64,
    "F64": 64,
}
FLOAT_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
HALF_DTYPES = ("F16", "BF16")  # loaded as float32 on CPU
INTEGER_DTYPES = {"U8", "I8", "I16", "U16", "I32", "U32"}

DEVICE_KINDS: tuple[DeviceKind, ...] = ("cpu", "cuda")

# What a runtime process holds before its weights (see the module docstring for how measured).
PROCESS_BASELINE_BYTES: dict[DeviceKind, int] = {
    "cpu": 345 * MIB,  # `llmi runtime` with a tiny model: PSS 392-399 MiB alone, 292 of it private
    "cuda": 512 * MIB,  # the CUDA context; not yet calibrated on a GPU
}
# A runtime forked from the fork server, which imported the libraries: PSS 207-212 MiB (tiny models).
FORKED_BASELINE_BYTES = 205 * MIB
# The same beside a spare runtime, a third process that maps those pages: PSS 151-160 MiB (tiny models).
SPARE_BASELINE_BYTES = 155 * MIB
# How a runtime is started, which decides its share of the libraries' pages on a CPU:
# a fresh interpreter, forked from the fork server, or forked beside a spare (``hardware.launch``).
Launch = Literal["cold", "forked", "spare"]
FORKED_BASELINES: dict[Launch, int] = {"forked": FORKED_BASELINE_BYTES, "spare": SPARE_BASELINE_BYTES}
RUNTIME_OVERHEAD_BYTES: dict[DeviceKind, dict[ModelType, int]] = {
    "cpu": {
        ModelType.CHAT: 0,
        ModelType.EMBEDDING: 40 * MIB,  # sentence-transformers: 332 MiB anonymous vs 292
        ModelType.RERANKER: 40 * MIB,  # the rerank engines import sentence-transformers too
        ModelType.VISION: 0,
        ModelType.MULTIMODAL: 0,
    },
    "cuda": {
        ModelType.CHAT: 128 * MIB,  # sampling buffers over the vocabulary, allocator slack
        ModelType.EMBEDDING: 0,
        ModelType.RERANKER: 0,
        ModelType.VISION: 0,
        ModelType.MULTIMODAL: 0,
    },
}
ACTIVATION_FRACTION = 0.10
KV_FALLBACK_FRACTION = 0.20
CPU_KV_RESERVE_TOKENS = 2048
BNB_4BIT_BYTES_PER_PARAM = 0.6
BNB_8BIT_BYTES_PER_PARAM = 1.1
PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth")


@dataclass(frozen=True)
class Estimate:
    """The estimate for one device kind; ``total_bytes`` is what the planner counts."""

    weights_bytes: int
    overhead_bytes: int
    kv_cache_bytes: int
    total_bytes: int
    baseline_bytes: int = 0
    device: DeviceKind = "cuda"


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of one safetensors file, validated before it is trusted."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise NotAModel(f"{path.name}: too short to be a safetensors file")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise NotAModel(f"{path.name}: header length {length} exceeds {MAX_HEADER_BYTES} bytes")
            if 8 + length > size:
                raise NotAModel(f"{path.name}: header length {length} exceeds the file size {size}")
            raw = f.read(length)
    except OSError as exc:
        raise NotAModel(f"{path.name} is unreadable: {exc}") from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise NotAModel(f"{path.name}: header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise NotAModel(f"{path.name}: header is not a JSON object")
    data_size = size - 8 - length
    for name, info in header.items():
        if name != "__metadata__":
            _check_tensor(path.name, name, info, data_size)
    return header


def _check_tensor(file: str, name: str, info: Any, data_size: int) -> None:
    if not isinstance(info, dict):
        raise NotAModel(f"{file}: tensor {name!r} is not described by an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise NotAModel(f"{file}: tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise NotAModel(f"{file}: tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise NotAModel(f"{file}: tensor {name!r} has invalid data_offsets {offsets!r}")
    start, end = offsets
    if not start <= end <= data_size:
        raise NotAModel(f"{file}: tensor {name!r} lies outside the file ({start}..{end} of {data_size} bytes)")
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if bits % 8 == 0 and end - start != bits // 8:
        raise NotAModel(f"{file}: tensor {name!r} spans {end - start} bytes, its shape needs {bits // 8}")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _indexed_shards(folder: Path) -> list[Path] | None:
    """Shards named by ``*.safetensors.index.json`` files, or None when there is no index."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if not indexes:
        return None
    names: set[str] = set()
    for index in indexes:
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise NotAModel(f"{index.name} has no weight_map object")
        for shard in weight_map.values():
            if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard in {"", ".", ".."}:
                raise NotAModel(f"{index.name} names an invalid shard {shard!r}")
            names.add(shard)
    shards = [folder / name for name in sorted(names)]
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise NotAModel(f"{indexes[0].name} names missing shards: {', '.join(missing[:3])}")
    return shards


def _module_folders(folder: Path) -> list[Path]:
    """The folder plus sentence-transformers module sub-folders (Dense layers keep weights there)."""
    folders = [folder]
    modules_path = folder / "modules.json"
    if modules_path.is_file():
        try:
            modules = json.loads(modules_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise NotAModel(f"modules.json is unreadable: {exc}") from None
        for module in modules if isinstance(modules, list) else []:
            sub = module.get("path") if isinstance(module, dict) else None
            if _is_relative_subfolder(folder, sub):
                folders.append(folder / str(sub))
    return folders


def _is_relative_subfolder(folder: Path, sub: Any) -> bool:
    if not isinstance(sub, str) or not sub or ".." in Path(sub).parts or Path(sub).is_absolute():
        return False
    return (folder / sub).is_dir() and folder / sub != folder


def safetensors_bytes(folder: Path) -> tuple[int, dict[str, int]]:
    """Total parameter bytes of the folder's weights and the bytes per dtype."""
    per_dtype: dict[str, int] = {}
    found = False
    for sub in _module_folders(folder):
        shards = _indexed_shards(sub)
        if shards is None:
            shards = sorted(p for p in sub.glob("*.safetensors") if p.is_file())
        for shard in shards:
            found = True
            for name, info in read_safetensors_header(shard).items():
                if name != "__metadata__":
                    start, end = info["data_offsets"]
                    per_dtype[info["dtype"]] = per_dtype.get(info["dtype"], 0) + end - start
        if not shards:
            pickles = {p for pattern in PICKLE_PATTERNS for p in sub.glob(pattern) if p.is_file()}
            found = found or bool(pickles)
            if pickles:
                per_dtype["unknown"] = per_dtype.get("unknown", 0) + sum(p.stat().st_size for p in pickles)
    if not found:
        raise NotAModel("no weights (*.safetensors, pytorch_model*.bin, *.pt)")
    return sum(per_dtype.values()), per_dtype


def quantized_weight_bytes(per_dtype: dict[str, int], config: dict[str, Any]) -> int:
    """Weight bytes once loaded: bitsandbytes quantizes floating weights at load time."""
    total = sum(per_dtype.values())
    quant = _bnb_bytes_per_param(config)
    if quant is None or any(per_dtype.get(d) for d in INTEGER_DTYPES):
        return total  # not bitsandbytes, or saved after quantization: the header bytes are what loads
    floats = sum(per_dtype.get(d, 0) for d in FLOAT_DTYPES)
    params = sum(per_dtype.get(d, 0) // size for d, size in FLOAT_DTYPES.items())
    return total - floats + math.ceil(params * quant)


def _bnb_bytes_per_param(config: dict[str, Any]) -> float | None:
    quant = config.get("quantization_config")
    if not isinstance(quant, dict):
        return None
    if quant.get("load_in_4bit") or quant.get("_load_in_4bit"):
        return BNB_4BIT_BYTES_PER_PARAM
    if quant.get("load_in_8bit") or quant.get("_load_in_8bit"):
        return BNB_8BIT_BYTES_PER_PARAM
    return None  # AWQ, GPTQ, FP8, compressed-tensors: packed on disk already


def loaded_weight_bytes(per_dtype: dict[str, int], config: dict[str, Any], device: DeviceKind) -> int:
    """Weight bytes once loaded on ``device``: on CPU, 16-bit floats become float32."""
    if device == "cpu" and _bnb_bytes_per_param(config) is None:
        return sum(per_dtype.values()) + sum(per_dtype.get(d, 0) for d in HALF_DTYPES)
    return quantized_weight_bytes(per_dtype, config)


def _text_field(config: dict[str, Any], *keys: str) -> Any:
    """The first of keys found at the top level, else in ``text_config``/``llm_config``."""
    for scope in (config, config.get("text_config"), config.get("llm_config")):
        if isinstance(scope, dict):
            for key in keys:
                value = scope.get(key)
                if value is not None:
                    return value
    return None


def _positive_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def kv_bytes_per_element(config: dict[str, Any]) -> int:
    dtype = str(_text_field(config, "torch_dtype", "dtype") or "").lower()
    return 4 if dtype in {"float32", "float"} else 2


def kv_cache_bytes(config: dict[str, Any], max_model_len: int) -> int | None:
    """The KV-cache reserve for one sequence of max_model_len tokens, or None without the fields."""
    layers = _positive_int(_text_field(config, "num_hidden_layers", "n_layer", "num_layers"))
    heads = _positive_int(_text_field(config, "num_attention_heads", "n_head"))
    hidden = _positive_int(_text_field(config, "hidden_size", "n_embd", "d_model"))
    kv_heads = _positive_int(_text_field(config, "num_key_value_heads", "multi_query_group_num")) or heads
    head_dim = _positive_int(_text_field(config, "head_dim")) or (hidden // heads if hidden and heads else None)
    if not (layers and kv_heads and head_dim):
        return None
    context = _positive_int(_text_field(config, "max_position_embeddings", "n_positions", "seq_length"))
    length = min(context, max_model_len) if context else max_model_len
    return 2 * layers * kv_heads * head_dim * length * kv_bytes_per_element(config)


def estimate(
    folder: Path,
    model_type: ModelType,
    max_model_len: int,
    device: DeviceKind = "cuda",
    *,
    launch: Launch = "cold",
) -> Estimate:
    """The memory ``folder`` needs once loaded as ``model_type`` on ``device`` by a runtime
    started as ``launch``; raises NotAModel when unreadable."""
    config_path = folder / "config.json"
    config = read_json(config_path) if config_path.is_file() else {}
    _, per_dtype = safetensors_bytes(folder)
    weights = loaded_weight_bytes(per_dtype, config, device)
    # A forked runtime shares the libraries' pages with its launcher: no per-type library overhead.
    forked = FORKED_BASELINES.get(launch) if device == "cpu" else None
    libraries = 0 if forked is not None else RUNTIME_OVERHEAD_BYTES[device][model_type]
    overhead = libraries + math.ceil(weights * ACTIVATION_FRACTION)
    kv = 0
    if model_type is ModelType.CHAT:
        reserved_len = min(max_model_len, CPU_KV_RESERVE_TOKENS) if device == "cpu" else max_model_len
        exact = kv_cache_bytes(config, reserved_len)
        kv = exact if exact is not None else math.ceil(weights * KV_FALLBACK_FRACTION)
    baseline = PROCESS_BASELINE_BYTES[device] if forked is None else forked
    return Estimate(weights, overhead, kv, baseline + weights + overhead + kv, baseline, device)
