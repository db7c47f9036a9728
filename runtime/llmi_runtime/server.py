"""`llmi runtime`: serve one model folder over HTTP."""

from __future__ import annotations

import argparse
import contextlib
import logging
import socket
import sys
from pathlib import Path

import uvicorn

from llmi.catalog.classify import NotAModel, detect_type
from llmi.modeltypes import ModelType
from llmi.settings import Settings
from llmi_runtime.app import build_app
from llmi_runtime.engines.base import LoadOptions
from llmi_runtime.http_protocol import OneWriteHttpToolsProtocol
from llmi_runtime.lifeline import die_with_parent
from llmi_runtime.state import RuntimeState

EXIT_LOAD_FAILED = 3


def unix_socket(path: Path) -> socket.socket:
    """A listening Unix socket at ``path`` (a stale one a killed runtime left is replaced).

    llmi serve's front relays requests to its runtimes over it: a Unix socket costs both sides
    about half the CPU of loopback TCP per request. Bound after the TCP port, so a runtime that
    lost the port to another never unlinks that one's socket."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    path.chmod(0o600)
    sock.set_inheritable(True)
    return sock


def run(args: argparse.Namespace, settings: Settings) -> int:
    die_with_parent(args.parent_pid)
    log = logging.getLogger("llmi.runtime")
    folder: Path = args.model.expanduser().resolve()
    if not folder.is_dir():
        log.error("model folder %s does not exist", folder)
        return 2
    try:
        model_type = ModelType(args.type) if args.type else detect_type(folder)
    except NotAModel as exc:
        log.error("%s: %s", folder, exc)
        return 2
    options = LoadOptions(
        device=args.device,
        placement=args.placement,
        dtype=args.dtype,
        max_gpu_memory_bytes=args.max_gpu_memory,
        trust_remote_code=args.trust_remote_code,
    )
    state = RuntimeState(args.name or folder.name, model_type, folder, options, settings)
    config = uvicorn.Config(
        None,  # type: ignore[arg-type]
        # The plain asyncio loop: with uvloop, wake-ups from the model thread made streamed
        # generation 2x slower in bench/runtime_bench.py.
        loop="asyncio",
        ws="none",  # nothing here speaks websockets; and importing them costs a switch 45 ms
        http=OneWriteHttpToolsProtocol,  # a short answer in one send, not two
        server_header=False,  # "server: uvicorn" tells nobody anything; the router parses one header fewer
        host=args.host,
        port=args.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    server = uvicorn.Server(config)

    def stop() -> None:
        server.should_exit = True

    config.app = build_app(state, on_load_failure=stop)
    config.loaded = False
    sockets = [config.bind_socket()]
    if args.uds is not None:
        sockets.append(unix_socket(args.uds))
    server.run(sockets=sockets)
    if state.error:
        print(f"llmi runtime: loading {folder} failed: {state.error}", file=sys.stderr)
        return EXIT_LOAD_FAILED
    return 0
