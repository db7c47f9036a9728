"""The warm launcher: runtimes forked from a fork server that has imported the libraries once, so a
model switch costs the weights' load, not an interpreter's start (docs/embedded.md, "Warm runtimes").

The fork server starts in the background and at a low CPU priority; a start that comes while it is
still importing waits for it (that is sooner than a cold start, which imports from scratch). When it
dies it is noticed, logged and started again with a back-off; starts meanwhile are cold ones.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable

from llmi_router.embedded.forkclient import ForkServerClient, ForkServerGone
from llmi_router.embedded.launch import Launcher, RuntimeSpec
from llmi_router.embedded.process import (
    ProcessLauncher,
    RuntimeClient,
    RuntimeHandle,
    free_port,
    runtime_argv,
    spawn_runtime,
)

log = logging.getLogger("llmi.supervisor")
READY_TIMEOUT_S = 300.0
BACKGROUND_NICE = 10  # the fork server's priority while nobody waits for it
RESTART_DELAYS_S = (1.0, 5.0, 30.0, 120.0)
PSS_MAX_AGE_S = 30.0


class WarmLauncher(RuntimeClient):
    """Forks each runtime from a pre-imported fork server; cold `llmi runtime` when there is none."""

    def __init__(self, env: dict[str, str] | None = None, spare: bool = False) -> None:
        super().__init__()
        self._env = dict(os.environ) if env is None else env
        self._spare = spare  # the fork server keeps a runtime forked ahead
        self._server: ForkServerClient | None = None  # ready
        self._spawning: ForkServerClient | None = None  # still importing
        self._hurry = False  # someone waits for the boot under way: let it import at full priority
        self._booting: asyncio.Task[ForkServerClient | None] | None = None
        self._failures = 0  # boots in a row that did not reach ready; reset by a good one
        self._closed = False
        self._pss: tuple[int, float, int] | None = None  # (server pid, read at, PSS)
        self._reading: asyncio.Task[None] | None = None
        self._notify: Callable[[], None] | None = None  # the supervisor's: measure the runtimes again

    def prepare(self) -> None:
        """Start the fork server in the background, if it is not running or starting already."""
        if self._closed or self._booting is not None or (self._server and not self._server.gone.done()):
            return
        self._booting = asyncio.create_task(self._boot())

    async def warm(self) -> int | None:
        """Wait until the fork server is ready, starting it if needed, at full priority (for a caller
        about to start runtimes): its pid, or None if it could not start."""
        self.prepare()
        server = await self._wait_boot()
        return server.pid if server else None

    async def _wait_boot(self) -> ForkServerClient | None:
        if (booting := self._booting) is not None:
            self._hurry = True
            if self._spawning is not None:
                self._spawning.set_priority(0)
            await asyncio.shield(booting)
        return self._live()

    def _live(self) -> ForkServerClient | None:
        return self._server if self._server is not None and not self._server.gone.done() else None

    async def _boot(self) -> ForkServerClient | None:
        delay = RESTART_DELAYS_S[min(self._failures, len(RESTART_DELAYS_S)) - 1] if self._failures else 0.0
        await asyncio.sleep(delay)  # a back-off, not a synchronisation: a crashing server is not respawned hot
        server: ForkServerClient | None = None
        try:
            server = self._spawning = await ForkServerClient.spawn(self._env, spare=self._spare)
            server.set_priority(0 if self._hurry else BACKGROUND_NICE)
            pid = await asyncio.wait_for(asyncio.shield(server.ready), READY_TIMEOUT_S)
        except (OSError, ForkServerGone, TimeoutError) as exc:
            self._failures += 1
            log.error("warm runtimes: the fork server did not start (%s); runtimes start cold", exc)
            if server is not None:
                await server.close(grace_s=2)
            self._booting, self._spawning, self._hurry = None, None, False
            if not self._closed:
                self.prepare()
            return None
        except asyncio.CancelledError:
            if server is not None:
                await server.close(grace_s=2)
            raise
        log.info("warm runtimes: fork server %d ready", pid)
        if self._spare:  # a start is a hand-off to the spare; the spares' warm-ups yield to the runtimes
            server.set_priority(BACKGROUND_NICE)
        self._failures = 0
        self._server = server
        server.on_spare_warm = lambda: self._spare_warmed(server)
        self._booting, self._spawning, self._hurry = None, None, False
        server.gone.add_done_callback(lambda _: self._lost(server))
        return server

    def _lost(self, server: ForkServerClient) -> None:
        if self._server is server:
            self._server = None
        if not self._closed:
            self._failures += 1
            log.warning("warm runtimes: fork server %d exited (%s); starting it again", server.pid, server.reason())
            self.prepare()

    async def _ready_server(self) -> ForkServerClient | None:
        """The ready fork server; during the first boot wait for it (sooner than a cold import), while
        a dead one is being replaced none (start cold meanwhile)."""
        self.prepare()
        return await self._wait_boot() if self._failures == 0 else self._live()

    async def start(self, spec: RuntimeSpec) -> RuntimeHandle:
        name, env = spec.name, dict(spec.env)
        args = (spec.path, spec.model_type, spec.placement, spec.max_gpu_memory)
        server = await self._ready_server()
        if server is not None:
            port = free_port()
            socket_path = self.sockets.for_port(port)
            argv = runtime_argv(name, *args, port, socket_path)
            try:
                return await _fork(server, name, port, argv, env, socket_path)
            except ForkServerGone as exc:
                log.warning("warm runtimes: fork server failed to start %s (%s); starting it cold", name, exc)
        return await spawn_runtime(name, *args, env, self.sockets)

    def reserved_bytes(self) -> int:
        """The fork server's own PSS and its spare's; pages its children still share with it are
        split between them.

        Reading smaps_rollup of a process that holds the libraries takes tens of milliseconds of
        CPU, so it is read at once only for a new server, then again when the figure is
        PSS_MAX_AGE_S old, on a thread while the old figure stands. Not at each fork (the read sat
        between a runtime's readiness and its first request) nor at each exit (in a switch it
        would compete with the next model's load, and read the server between the victim's exit
        and the next fork, at its highest). A fork only lowers it (the server's pages become
        shared): the figure kept is an over-count then."""
        server = self._live() or self._spawning
        if server is None:
            return 0
        cached = self._pss
        if cached is None or cached[0] != server.pid:
            cached = self._pss = (server.pid, time.monotonic(), server.pss())
        elif time.monotonic() - cached[1] > PSS_MAX_AGE_S and self._reading is None:
            self._reading = asyncio.create_task(self._read_pss(server))
        return cached[2]

    async def _read_pss(self, server: ForkServerClient, then: Callable[[], None] | None = None) -> None:
        try:
            pss = await asyncio.to_thread(server.pss)
            if self._pss is not None and self._pss[0] == server.pid:
                self._pss = (server.pid, time.monotonic(), pss)
        finally:
            self._reading = None
        if then is not None:
            then()

    def on_shift(self, notify: Callable[[], None]) -> None:
        self._notify = notify

    def spare_state(self) -> str | None:
        server = self._live()
        if server is None or server.spare is None:
            return None
        return "warm" if server.spare_warm else "warming"

    def _spare_warmed(self, server: ForkServerClient) -> None:
        """The spare has taken its copy-on-write faults: its PSS (ours) is read anew, then the
        runtimes are measured again (the pages it copied are shared by one process fewer)."""
        if self._closed or self._reading is not None or self._server is not server:
            if self._notify is not None and not self._closed:
                self._notify()
            return
        self._reading = asyncio.create_task(self._read_pss(server, then=self._notify))

    async def close(self) -> None:
        self._closed = True
        if self._reading is not None:
            await asyncio.wait({self._reading})
        if self._booting is not None:
            self._booting.cancel()
            await asyncio.wait({self._booting})
        if self._server is not None:
            await self._server.close()
        await super().close()


async def _fork(
    server: ForkServerClient, name: str, port: int, argv: list[str], env: dict[str, str], socket_path: str | None
) -> RuntimeHandle:
    read_fd, write_fd = os.pipe()
    try:
        pid, exited = await server.fork(argv, env, write_fd)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    handle = RuntimeHandle(name, port, pid, exited, socket=socket_path)
    output = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(output), os.fdopen(read_fd, "rb", 0))
    except BaseException:
        await handle.stop(grace_s=0)  # nobody else knows of this child
        raise
    handle.relay(output)
    return handle


def default_launcher(warm: bool, spare: bool = False) -> Launcher:
    """The warm launcher where asked and it can work (``hardware.forks_runtimes``), else the cold one."""
    if warm and hasattr(os, "pidfd_open"):
        return WarmLauncher(spare=spare)
    return ProcessLauncher()
