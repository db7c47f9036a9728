"""The warm launcher's fork server: import the runtime's libraries once, fork one runtime per model.

A fresh `llmi runtime` spends 3-7 s importing torch and transformers before loading weights that
take 0.1-0.6 s. This process pays the import once; each child it forks starts with every module
loaded and runs the normal runtime code with the usual arguments.

It talks to `llmi serve` over one ``SOCK_SEQPACKET`` socket (a socketpair end inherited as
``--control-fd``), one JSON object per message:

- to the router: ``{"op": "ready", "pid"}`` once imported; ``{"op": "started", "id", "pid"}`` or
  ``{"op": "error", "id", "message"}`` per start; ``{"op": "exited", "pid", "code"}`` when a child
  is reaped (``code`` negative for a signal, as asyncio reports it) — the router is not the
  children's parent, so it cannot wait for them itself; ``{"op": "spare", "pid"}`` when a spare
  is made (its memory is the launcher's, counted in the budget); ``{"op": "spare-warm", "pid"}``
  when it has warmed up (its copy-on-write faults taken: the pages it copied are no longer shared
  with the runtimes, so their PSS shares grew and are measured again).
- from the router: ``{"op": "start", "id", "argv", "env", "nice"}`` with the write end of the
  child's output pipe attached (``socket.send_fds``).

With ``--spare`` one child is forked ahead and waits, having run what every runtime runs before
its model is known (its argument parser, settings and server config, once, to warm their caches
and take their copy-on-write faults); a start hands it the request over its own socket. That
takes the fork (16-25 ms of a 2-core machine for a process that holds torch) and about 20 ms of
start-up off a switch; and the spare loads and drops a model of a few kilobytes
(``rehearsal``), which takes another 20 ms off the real model's first load. The spare is made
right after each start, in the fork server's session and at its priority (low while it boots in
the background); a start that comes while it still warms up ends the warm-up at its next step.
At its start the spare leaves that session (``setsid``), so the runtime runs at the normal
priority.

Forking is safe here because no other thread exists at the fork: the parent never touches
``torch.cuda`` or runs a torch op (so no CUDA context, no OpenMP pool), has no Python threads
(checked before serving), and the two idle OS threads that ``import numpy`` / ``scipy`` start are
OpenBLAS pools that OpenBLAS itself shuts down around ``fork`` (its ``pthread_atfork`` handler).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.util
import json
import logging
import os
import select
import selectors
import signal
import socket
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmi_runtime import rehearsal
from llmi_runtime.lifeline import die_with_parent

MAX_MESSAGE = 1 << 20
PRELOAD = (
    "torch",
    "transformers",
    "sentence_transformers",
    "fastapi",
    "uvicorn",
    "llmi.cli",
    "llmi.runtime_args",
    "llmi.catalog.estimate",
    "llmi_runtime.server",
    "llmi_runtime.engines.chat",
    "llmi_runtime.engines.embedding",
    "llmi_runtime.engines.rerank",
    "llmi_runtime.engines.vision",
    "llmi_runtime.images",
    # Imported lazily by the first load of any model: pay them here, once.
    "transformers.generation.utils",
    "transformers.masking_utils",
    "transformers.modeling_layers",
    # What uvicorn imports when a child configures its server (it runs without websockets).
    "uvicorn.protocols.http.auto",
    "uvicorn.lifespan.on",
    "uvicorn.loops.asyncio",
)
# The per-architecture modules of transformers a load imports lazily (``model_modules``).
MODEL_PARTS = ("configuration", "modeling", "tokenization", "image_processing", "processing")
# A load compiles one regex per checkpoint tensor (its rename); ``re`` caches 512 patterns, so
# a checkpoint's are compiled here only where they fit beside others.
WARM_KEYS_MAX = 400


@dataclass(frozen=True)
class Spare:
    """A forked child waiting for a start on ``sock``; ``pidfd`` tells the server when it exits."""

    pid: int
    pidfd: int
    sock: socket.socket


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(json.dumps(message).encode())


def preload() -> None:
    """Import everything a runtime needs, without running a single torch op."""
    for name in PRELOAD:
        importlib.import_module(name)
    warm_conversions()
    check_no_threads()


def warm_conversions() -> None:
    """Build the checkpoint conversion table that transformers builds on its first load (about a
    thousand regex compiles: 0.15-0.45 s of every child's load), so that no child builds it.
    Best effort: where transformers no longer has it, the child builds what it needs itself."""
    with contextlib.suppress(Exception):
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping

        get_checkpoint_conversion_mapping("llama")  # any type: the first call builds the whole table


def check_no_threads() -> None:
    if threading.active_count() != 1:
        raise RuntimeError(f"threads exist before forking: {[t.name for t in threading.enumerate()]}")


def model_modules(folder: Path) -> list[str]:
    """The transformers modules that loading ``folder`` would import lazily: its model type's
    configuration, modeling, tokenizer and processor code (those that exist)."""
    try:
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(model_type, str) or not model_type.replace("-", "_").isidentifier():
        return []
    from transformers.models.auto.configuration_auto import model_type_to_module_name

    module = model_type_to_module_name(model_type)
    names = [f"transformers.models.{module}.{part}_{module}" for part in MODEL_PARTS]
    return [name for name in names if _exists(name)]


def _exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def checkpoint_keys(folder: Path) -> list[str]:
    """The tensor names of the folder's safetensors files (their headers only; no tensor is read)."""
    from safetensors import safe_open

    keys: list[str] = []
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="numpy") as handle:
            keys.extend(handle.keys())
    return keys


def warm_renames(folder: Path) -> None:
    """Compile, into ``re``'s cache, the rename pattern that loading compiles for each tensor of
    the checkpoint (0.3 s of a 135M-parameter model's first load), so that the child finds them."""
    keys = checkpoint_keys(folder)
    if not keys or len(keys) > WARM_KEYS_MAX:
        return
    from transformers.core_model_loading import WeightRenaming

    for key in keys:
        WeightRenaming(key, key)


_warmed: set[Path] = set()  # folders whose modules and renames are warm in this process


def warm_for(argv: list[str]) -> None:
    """Import the modules the child's model needs and compile its tensors' renames, in this
    process, so that this child and every later one for the same model skips them. Best effort:
    a module that fails to import is the child's to report, when it loads."""
    if "--model" not in argv[:-1]:
        return
    folder = Path(argv[argv.index("--model") + 1])
    if folder in _warmed:
        return
    for name in model_modules(folder):
        with contextlib.suppress(Exception):
            importlib.import_module(name)
    with contextlib.suppress(Exception):
        warm_renames(folder)
    _warmed.add(folder)


class ForkServer:
    """Owns the control socket and the children: forks on request, reaps through pidfds."""

    def __init__(self, sock: socket.socket, spare: bool = False, rehearsal: Path | None = None) -> None:
        self.sock = sock
        self.selector = selectors.DefaultSelector()
        self.children: dict[int, int] = {}  # pidfd -> pid
        self.selector.register(sock, selectors.EVENT_READ)
        self.keep_spare = spare
        self.rehearsal = rehearsal  # where spares keep the model they load before a real one
        self.spare: Spare | None = None

    def serve(self) -> None:
        send(self.sock, {"op": "ready", "pid": os.getpid()})
        self._replenish()
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is self.sock:
                    if not self._request():
                        return  # the router closed its end (or died): our children die with us
                elif key.data == "spare":
                    self._spare_said(key.fileobj)  # type: ignore[arg-type]
                else:
                    self._reap(key.fd)

    def _request(self) -> bool:
        data, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, 1)
        if not data:
            return False
        message = json.loads(data)
        if message.get("op") != "start" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            send(self.sock, {"op": "error", "id": message.get("id"), "message": "bad request"})
            return True
        try:
            pid = spared = self._hand_to_spare(message, fds[0])
            if pid is None:
                pid = self._fork(message, fds[0])
                pidfd = os.pidfd_open(pid)
                self.children[pidfd] = pid
                self.selector.register(pidfd, selectors.EVENT_READ)
        except (OSError, RuntimeError) as exc:
            send(self.sock, {"op": "error", "id": message["id"], "message": f"fork failed: {exc}"})
            return True
        finally:
            os.close(fds[0])
        send(self.sock, {"op": "started", "id": message["id"], "pid": pid})
        if spared is not None:
            warm_for(message["argv"])  # for the spares to come (a fork warms it before forking)
        self._replenish()
        return True

    def _hand_to_spare(self, message: dict[str, Any], out_fd: int) -> int | None:
        """The spare's pid once it has the start, or None when there is none (or it just died).
        A spare still warming up takes it too: it stops warming at its next step."""
        spare, self.spare = self.spare, None
        if spare is None:
            return None
        with contextlib.suppress(KeyError):  # unregistered already if it ended
            self.selector.unregister(spare.sock)
        try:
            socket.send_fds(spare.sock, [json.dumps(message).encode()], [out_fd])
        except OSError:
            self._let_go(spare)
            return None
        finally:
            spare.sock.close()
        self.children[spare.pidfd] = spare.pid
        return spare.pid

    def _replenish(self) -> None:
        """Fork the next spare, if spares are kept and none waits. Best effort: without one,
        starts fork as they come."""
        if not self.keep_spare or self.spare is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = self._fork_child(lambda parent: wait_as_spare(parent, theirs, self.rehearsal), close=[ours])
        except (OSError, RuntimeError) as exc:
            ours.close()
            print(f"no spare runtime: {exc}", file=sys.stderr, flush=True)
            return
        finally:
            theirs.close()
        pidfd = os.pidfd_open(pid)
        self.selector.register(pidfd, selectors.EVENT_READ)
        self.spare = Spare(pid, pidfd, ours)
        self.selector.register(ours, selectors.EVENT_READ, "spare")
        send(self.sock, {"op": "spare", "pid": pid})

    def _spare_said(self, sock: socket.socket) -> None:
        """The spare's one message: it is warm (relayed); an end of file is its exit (its pidfd reaps it)."""
        spare = self.spare
        if spare is None or sock is not spare.sock:
            return
        with contextlib.suppress(OSError, ValueError):  # a garbled message counts as none
            data = sock.recv(MAX_MESSAGE)
            if data and json.loads(data).get("op") == "warm":
                send(self.sock, {"op": "spare-warm", "pid": spare.pid})
                return
        self.selector.unregister(sock)  # it ended: never readable again, reaped when its pidfd says so

    def _let_go(self, spare: Spare) -> None:
        """A spare that died (or was not wanted): reaped here, never reported (nobody knew it)."""
        with contextlib.suppress(KeyError):
            self.selector.unregister(spare.sock)
        spare.sock.close()
        self.selector.unregister(spare.pidfd)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(spare.pid, 0)
        os.close(spare.pidfd)

    def _reap(self, pidfd: int) -> None:
        if self.spare is not None and pidfd == self.spare.pidfd:
            spare, self.spare = self.spare, None
            self._let_go(spare)
            return
        pid = self.children.pop(pidfd)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        send(self.sock, {"op": "exited", "pid": pid, "code": os.waitstatus_to_exitcode(status)})

    def _fork(self, message: dict[str, Any], out_fd: int) -> int:
        warm_for(message["argv"])
        argv, env, nice = message["argv"], message["env"], int(message.get("nice", 0))
        return self._fork_child(lambda parent: run_child(parent, argv, env, nice, out_fd))

    def _fork_child(self, body: Callable[[int], int], close: Sequence[socket.socket] = ()) -> int:
        """Fork a child that runs ``body(parent pid)`` and exits with its code; the child's pid."""
        check_no_threads()  # an import must not have started one: refuse rather than fork unsafely
        sys.stdout.flush()
        sys.stderr.flush()
        # Out of the collector's sight in the child: a collection there would otherwise walk (and
        # so copy, page by page) the half a million objects the imports made here. A 135M-param
        # model's first load in the child: 0.80 s -> 0.69 s on 2 cores.
        gc.freeze()
        parent = os.getpid()
        pid = os.fork()
        if pid:
            return pid
        code = 1
        try:
            # Nothing of the server survives in the child: its socket, selector, pidfds, spare.
            self.selector.close()
            for fd in self.children:
                os.close(fd)
            if self.spare is not None:
                os.close(self.spare.pidfd)
                self.spare.sock.close()
            for sock in (self.sock, *close):
                sock.close()
            code = body(parent)
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)


def wait_as_spare(parent: int, sock: socket.socket, rehearsal_dir: Path | None) -> int:
    """In a spare: warm up, then wait for a start and run it; exit quietly if the server lets go.
    A start that comes while it warms up ends the warm-up at its next step (tens of ms)."""
    die_with_parent(parent)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import setproctitle

    setproctitle.setproctitle("llmi runtime-spare")

    def start_waiting() -> bool:
        return bool(select.select([sock], [], [], 0)[0])

    if not start_waiting():
        rehearsal.start_up()
    warm = False
    if rehearsal_dir is not None:
        with contextlib.suppress(Exception):
            warm = rehearsal.load(rehearsal_dir, stop=start_waiting)
    if warm and not start_waiting():
        gc.collect()  # what the rehearsal left, before its pages are measured
        with contextlib.suppress(OSError):
            send(sock, {"op": "warm"})
    data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 1)
    sock.close()
    if not data or len(fds) != 1:
        return 0
    message = json.loads(data)
    return run_child(parent, message["argv"], message["env"], int(message.get("nice", 0)), fds[0])


def run_child(parent: int, argv: list[str], env: dict[str, str], nice: int, out_fd: int) -> int:
    """In the forked child: become a normal `llmi runtime ARGV` process, then run it."""
    os.setsid()  # its own process group, so a stop reaches everything it starts
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    die_with_parent(parent)
    with contextlib.suppress(OSError):  # the router's priority, where we were niced (needs privileges)
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.environ.clear()
    os.environ.update(env)  # before anything reads it: CUDA_VISIBLE_DEVICES, LLM_* settings
    import setproctitle
    import torch

    setproctitle.setproctitle(" ".join(["llmi", "runtime", *argv]))
    threads = env.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:
        torch.set_num_threads(int(threads))
    logging.root.handlers.clear()  # llmi.cli configures logging for this process afresh
    from llmi.cli import main

    sys.argv = ["llmi", "runtime", *argv]
    try:
        return main(["runtime", *argv])
    except SystemExit as exc:  # argparse errors
        return exc.code if isinstance(exc.code, int) else 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmi_runtime.forkserver", description=__doc__)
    parser.add_argument("--control-fd", type=int, required=True, help="inherited SOCK_SEQPACKET socket")
    parser.add_argument("--parent-pid", type=int, help="exit when this process (llmi serve) dies")
    parser.add_argument("--spare", action="store_true", help="keep one child forked ahead for the next start")
    args = parser.parse_args(argv)
    die_with_parent(args.parent_pid)
    sock = socket.socket(fileno=args.control_fd)
    sock.set_inheritable(False)
    preload()
    import setproctitle

    setproctitle.setproctitle(f"llmi runtime-launcher --parent-pid {args.parent_pid}")
    if not args.spare:
        ForkServer(sock).serve()
        return 0
    with tempfile.TemporaryDirectory(prefix="llmi-rehearsal-") as rehearsal_dir:
        ForkServer(sock, spare=True, rehearsal=Path(rehearsal_dir)).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
