"""Running a router: the front door on the public port, the app behind it on a Unix socket.

Shutdown order matters: on SIGINT/SIGTERM the front stops accepting and lets requests in
flight finish (LLM_DRAIN_TIMEOUT_S), then the app drains its own and its lifespan stops the
control plane (and, embedded, every runtime). uvicorn's own signal handling is off: the front
decides when the app may go, so a fast request never outlives its runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import tempfile
from collections.abc import Generator
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from llmi.settings import Settings
from llmi_router.dispatch import GatewayDispatch
from llmi_router.front import Front, FrontLimits

log = logging.getLogger("llmi.router")


class _AppServer(uvicorn.Server):
    """uvicorn without its signal handlers: the front owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def run(app: FastAPI, settings: Settings) -> int:
    """Serve until a signal; the process's exit status."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it exists (not Windows)
        return asyncio.run(serve(app, settings))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(app, settings))


async def serve(app: FastAPI, settings: Settings) -> int:
    with tempfile.TemporaryDirectory(prefix="llmi-router-") as private:
        socket_path = str(Path(private) / "app.sock")
        config = uvicorn.Config(
            app,
            uds=socket_path,
            # Its own lines ("running on unix socket ...") would only confuse: the front says
            # where llmi listens. Warnings and errors (a failed startup) still show.
            log_level=_at_least_warning(settings.log_level),
            access_log=False,
            timeout_graceful_shutdown=int(settings.drain_timeout_s),
            http="httptools",
            ws="none",
            lifespan="on",
            timeout_keep_alive=75,  # the front's pooled connections to the app stay open
        )
        server = _AppServer(config)
        app_task = asyncio.create_task(server.serve(), name="router-app")
        while not server.started:  # uvicorn has no event for it; startup includes the first scan
            if app_task.done():
                return 1  # startup failed; uvicorn logged why
            await asyncio.sleep(0.02)
        limits = FrontLimits(
            max_body_bytes=settings.max_request_bytes,
            read_timeout_s=settings.request_timeout_s,
            connect_timeout_s=settings.upstream_connect_timeout_s,
        )
        front = Front(GatewayDispatch(app.state.gateway, socket_path, app.state.keys), limits)
        try:
            await front.start(settings.host, settings.port)
        except OSError as exc:
            print(f"llmi: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr)
            server.should_exit = True
            await app_task
            return 1
        log.info("llmi listening on http://%s:%d", settings.host, settings.port)
        # What startup made (modules, schemas, the app) lives as long as the process: out of the
        # collector's way, so that a full collection walks only what requests leave behind.
        gc.collect()
        gc.freeze()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({stopping, app_task}, return_when=asyncio.FIRST_COMPLETED)
        log.info("shutting down: draining requests in flight")
        await front.drain(settings.drain_timeout_s)
        server.should_exit = True
        await app_task
        stopping.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if getattr(server.lifespan, "shutdown_failed", False):
        log.error("shutdown failed: the control plane did not stop cleanly (see above)")
        return 1
    log.info("shutdown complete: requests drained, control plane stopped")
    return 0


def _at_least_warning(level: str) -> str:
    return level.lower() if logging.getLevelName(level.upper()) in (logging.ERROR, logging.CRITICAL) else "warning"
