"""The router's side of the fork server (``llmi_runtime.forkserver``): spawn it, ask it to fork,
learn from it when its children exit.

One instance is one fork-server process. It owns the control socket and the futures of the starts
in flight and of the live children; when the server goes away every one of them is settled, so a
caller never waits on a dead server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable

log = logging.getLogger("llmi.runtime.launcher")
MAX_MESSAGE = 1 << 20


class ForkServerGone(Exception):
    """The fork server exited or its socket broke; start the runtime another way."""


def pss_bytes(pid: int) -> int:
    """Proportional set size of a process: pages shared with its forked children count once overall."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class ForkServerClient:
    """A running fork server: ``ready`` resolves once it has imported everything; ``gone`` when it ends."""

    def __init__(self, proc: asyncio.subprocess.Process, sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[int] = loop.create_future()
        self.gone: asyncio.Future[None] = loop.create_future()
        self.tail: deque[str] = deque(maxlen=40)
        self._ids = itertools.count(1)
        self._starts: dict[int, asyncio.Future[int]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self.spare: int | None = None  # the pid of the child it keeps forked ahead, if any
        self.spare_made = asyncio.Event()  # set when it announces a spare, cleared when one is used
        self.spare_warm = False  # the spare has warmed up (its copy-on-write faults taken)
        self.on_spare_warm: Callable[[], None] | None = None  # told when it has
        self._tasks = {asyncio.create_task(self._read()), asyncio.create_task(self._relay())}

    @classmethod
    async def spawn(cls, env: dict[str, str], spare: bool = False) -> ForkServerClient:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = await asyncio.create_subprocess_exec(
                *[sys.executable, "-m", "llmi_runtime.forkserver", "--control-fd", str(theirs.fileno())],
                *["--parent-pid", str(os.getpid())],
                *(["--spare"] if spare else []),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                # NVML's device count, never cuInit: a driver initialised before fork breaks CUDA in children.
                env={**env, "PYTORCH_NVML_BASED_CUDA_CHECK": "1"},
                start_new_session=True,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(proc, ours)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def pss(self) -> int:
        """The server's PSS plus its spare's: the memory the launcher holds apart from runtimes."""
        spare = self.spare
        return pss_bytes(self.pid) + (pss_bytes(spare) if spare is not None else 0)

    def reason(self) -> str:
        return self.tail[-1].strip()[-500:] if self.tail else "no output"

    def set_priority(self, nice: int) -> None:
        """Weigh the server's CPU time like a process at ``nice``: at 10 its import never slows a request
        being served; at 0 (when a start waits for it) it imports like a fresh runtime would.

        With the kernel's autogroup scheduling (most kernels) a nice value weighs only within its
        session, so the server's session (its own) is set instead: that needs no privileges either way,
        and forked children, each in a session of their own, start at the default. Without autogroups
        the process is niced; raising it back then needs privileges (best effort)."""
        if _autogroups():
            with contextlib.suppress(OSError), open(f"/proc/{self.pid}/autogroup", "w") as autogroup:
                autogroup.write(str(nice))
                return
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, self.pid, os.getpriority(os.PRIO_PROCESS, 0) + nice)

    async def fork(self, argv: list[str], env: dict[str, str], out_fd: int) -> tuple[int, asyncio.Future[int]]:
        """Fork a runtime running `llmi runtime ARGV` with ``out_fd`` as its stdout and stderr:
        its pid and a future of its exit code."""
        if self.gone.done():
            raise ForkServerGone(self.reason())
        request_id = next(self._ids)
        started = asyncio.get_running_loop().create_future()
        self._starts[request_id] = started
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        message = {"op": "start", "id": request_id, "argv": argv, "env": env, "nice": nice}
        try:
            await self._send(json.dumps(message).encode(), [out_fd])
            pid = await asyncio.shield(started)
        except OSError as exc:  # a broken socket: the server died under us
            raise ForkServerGone(str(exc)) from exc
        except asyncio.CancelledError:
            started.add_done_callback(_kill_unwanted)  # the child may still come: nobody will stop it
            raise
        finally:
            if started.done():
                self._starts.pop(request_id, None)
        return pid, self._exits[pid]

    async def _send(self, data: bytes, fds: list[int]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                socket.send_fds(self.sock, [data], fds)
                return
            except BlockingIOError:
                await _until(self.sock.fileno(), loop.add_writer, loop.remove_writer)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while data := await loop.sock_recv(self.sock, MAX_MESSAGE):
                self._handle(json.loads(data))
        except (OSError, ValueError) as exc:
            log.warning("fork server connection failed: %s", exc)
        finally:
            await self._settle()

    def _handle(self, message: dict[str, object]) -> None:
        op, pid = message.get("op"), message.get("pid")
        if op == "ready" and isinstance(pid, int) and not self.ready.done():
            self.ready.set_result(pid)
        elif op == "spare" and isinstance(pid, int):
            self.spare, self.spare_warm = pid, False
            self.spare_made.set()
        elif op == "spare-warm" and pid == self.spare:
            self.spare_warm = True
            if self.on_spare_warm is not None:
                self.on_spare_warm()
        elif op == "started" and isinstance(pid, int):
            if pid == self.spare:
                self.spare, self.spare_warm = None, False  # it is a runtime now, counted as one
                self.spare_made.clear()
            self._exits[pid] = asyncio.get_running_loop().create_future()
            _resolve(self._take_start(message.get("id")), lambda f: f.set_result(pid))
        elif op == "error":
            error = ForkServerGone(str(message.get("message")))
            _resolve(self._take_start(message.get("id")), lambda f: f.set_exception(error))
        elif op == "exited" and isinstance(pid, int) and isinstance(code := message.get("code"), int):
            _resolve(self._exits.pop(pid, None), lambda f: f.set_result(code))

    def _take_start(self, request_id: object) -> asyncio.Future[int] | None:
        """The waiting start a server message answers (its ``id``), no longer waiting."""
        return self._starts.pop(request_id, None) if isinstance(request_id, int) else None

    async def _settle(self) -> None:
        """The server is gone: its children die with it (PDEATHSIG); make sure, and say so."""
        with contextlib.suppress(OSError):
            self.sock.close()
        error = ForkServerGone(f"fork server exited: {self.reason()}")
        for started in [*self._starts.values(), self.ready]:
            if not started.done():
                started.set_exception(error)
                started.exception()  # retrieved: nobody may be waiting any more
        for pid, exited in list(self._exits.items()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            await _until_gone(pid)
            _resolve(exited, lambda f: f.set_result(-signal.SIGKILL))
        self._exits.clear()
        _resolve(self.gone, lambda f: f.set_result(None))

    async def _relay(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            if line := raw.decode(errors="replace").rstrip():
                self.tail.append(line)
                log.info("%s", line)

    async def close(self, grace_s: float = 10.0) -> None:
        """Close the socket (the server exits, its children with it); SIGKILL after the grace period."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        try:
            await asyncio.wait_for(self.proc.wait(), grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        await asyncio.wait(self._tasks, timeout=grace_s)


def _kill_unwanted(started: asyncio.Future[int]) -> None:
    if not started.cancelled() and started.exception() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(started.result(), signal.SIGKILL)


def _autogroups() -> bool:
    try:
        with open("/proc/sys/kernel/sched_autogroup_enabled") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def _resolve(future: asyncio.Future[int] | asyncio.Future[None] | None, set_it: Callable[..., object]) -> None:
    if future is not None and not future.done():
        set_it(future)


async def _until_gone(pid: int) -> None:
    """Wait for a process that is not our child to exit (a pidfd turns readable when it does)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return  # already gone
    loop = asyncio.get_running_loop()
    try:
        await _until(pidfd, loop.add_reader, loop.remove_reader, timeout_s=10)
    except TimeoutError:
        log.error("runtime %d did not exit after SIGKILL", pid)
    finally:
        os.close(pidfd)


async def _until(
    fd: int, add: Callable[..., object], remove: Callable[[int], object], timeout_s: float | None = None
) -> None:
    """Wait until the event loop sees ``fd`` ready (``add``: its add_reader or add_writer)."""
    ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def fire() -> None:
        if not ready.done():
            ready.set_result(None)

    add(fd, fire)
    try:
        await asyncio.wait_for(ready, timeout_s)
    finally:
        remove(fd)
