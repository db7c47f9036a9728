"""Model folders made of real headers and sparse data, so a 7B model costs a few kilobytes.

The safetensors files are valid (8-byte length, JSON header, data region of the right size);
the data region is a hole made with ``truncate``, so nothing reads or writes gigabytes.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I32": 4, "I8": 1, "U8": 1, "I64": 8}

Tensors = dict[str, tuple[str, list[int]]]

QWEN25_7B_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32768,
    "vocab_size": 152064,
    "torch_dtype": "bfloat16",
    "tie_word_embeddings": False,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-06,
}


def tensor_bytes(dtype: str, shape: list[int]) -> int:
    return math.prod(shape) * DTYPE_BYTES[dtype]


def header_bytes(tensors: Tensors, metadata: dict[str, str] | None = None) -> tuple[bytes, int]:
    """The encoded header (padded to 8 bytes like the safetensors library) and the data size."""
    header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = tensor_bytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8), offset


def write_raw(path: Path, header: bytes, data_size: int, declared_length: int | None = None) -> Path:
    """A safetensors-shaped file; declared_length lets a test lie about the header length."""
    length = len(header) if declared_length is None else declared_length
    with path.open("wb") as f:
        f.write(struct.pack("<Q", length))
        f.write(header)
        f.truncate(8 + len(header) + data_size)
    return path


def write_safetensors(path: Path, tensors: Tensors) -> Path:
    header, size = header_bytes(tensors)
    return write_raw(path, header, size)


def qwen25_7b_tensors() -> Tensors:
    """The tensor names and shapes of Qwen2.5-7B-Instruct (bf16)."""
    c = QWEN25_7B_CONFIG
    hidden, inter, vocab = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    kv = c["num_key_value_heads"] * hidden // c["num_attention_heads"]
    tensors: Tensors = {"model.embed_tokens.weight": ("BF16", [vocab, hidden])}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors |= {
            p + "input_layernorm.weight": ("BF16", [hidden]),
            p + "post_attention_layernorm.weight": ("BF16", [hidden]),
            p + "self_attn.q_proj.weight": ("BF16", [hidden, hidden]),
            p + "self_attn.q_proj.bias": ("BF16", [hidden]),
            p + "self_attn.k_proj.weight": ("BF16", [kv, hidden]),
            p + "self_attn.k_proj.bias": ("BF16", [kv]),
            p + "self_attn.v_proj.weight": ("BF16", [kv, hidden]),
            p + "self_attn.v_proj.bias": ("BF16", [kv]),
            p + "self_attn.o_proj.weight": ("BF16", [hidden, hidden]),
            p + "mlp.gate_proj.weight": ("BF16", [inter, hidden]),
            p + "mlp.up_proj.weight": ("BF16", [inter, hidden]),
            p + "mlp.down_proj.weight": ("BF16", [hidden, inter]),
        }
    tensors |= {"model.norm.weight": ("BF16", [hidden]), "lm_head.weight": ("BF16", [vocab, hidden])}
    return tensors


def write_sharded(folder: Path, tensors: Tensors, shards: int) -> int:
    """Shards ``model-0000i-of-0000n.safetensors`` plus the index; returns the total tensor bytes."""
    names = list(tensors)
    per = math.ceil(len(names) / shards)
    weight_map: dict[str, str] = {}
    for i in range(shards):
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[i * per : (i + 1) * per]}
        write_safetensors(folder / file, part)
        weight_map |= dict.fromkeys(part, file)
    total = sum(tensor_bytes(*spec) for spec in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return total


def small_chat_model(folder: Path, *, hidden: int = 64, layers: int = 2, vocab: int = 1000, **config: Any) -> Path:
    """A Llama-shaped chat model folder with a one-file safetensors header."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "vocab_size": vocab,
        "torch_dtype": "bfloat16",
    } | config
    (folder / "config.json").write_text(json.dumps(cfg))
    tensors: Tensors = {"model.embed_tokens.weight": ("BF16", [vocab, hidden])}
    for i in range(layers):
        tensors[f"model.layers.{i}.mlp.up_proj.weight"] = ("BF16", [4 * hidden, hidden])
    write_safetensors(folder / "model.safetensors", tensors)
    return folder
