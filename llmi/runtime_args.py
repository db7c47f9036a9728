"""Arguments of `llmi runtime`, apart from the runtime so the CLI parses them without torch."""

from __future__ import annotations

import argparse
from pathlib import Path

from llmi.modeltypes import ModelType


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model folder")
    parser.add_argument("--type", choices=[t.value for t in ModelType], help="model type (detected if omitted)")
    parser.add_argument("--name", help="model name clients use (default: the folder name)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=15531, help="port to listen on (default 15531)")
    parser.add_argument(
        "--uds", type=Path, default=None, help="also listen on this Unix socket (llmi serve relays requests through it)"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--placement",
        choices=["auto", "gpu", "offload", "cpu"],
        default="auto",
        help="gpu: all on the GPU; offload: GPU then CPU memory; cpu: no GPU",
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "float16", "bfloat16"],
        default="auto",
        help="auto: float32 on CPU, the checkpoint's dtype on GPU",
    )
    parser.add_argument(
        "--max-gpu-memory", type=int, default=None, help="bytes of GPU memory an offloaded model may use"
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow model folders to run their own Python code"
    )
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process dies (set by llmi serve)")
