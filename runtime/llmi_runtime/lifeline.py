"""Die with the parent: a runtime must never outlive the `llmi serve` (or fork server) that started it.

The child sets ``PR_SET_PDEATHSIG`` on itself, first thing, instead of the parent doing it through
``preexec_fn`` (unsafe in a multithreaded parent). The parent may already have died before the call,
so the child then compares ``getppid()`` with the pid it was told to expect.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


@functools.cache
def _libc() -> ctypes.CDLL:
    """glibc by its soname; ``find_library`` only where that fails (it runs ``ldconfig -p`` in a
    subprocess: 2 ms here, more from a forked runtime whose pages the fork copies). Cached: the fork
    server looks it up once and every runtime it forks inherits the handle."""
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def die_with_parent(expected_parent: int | None, sig: int = signal.SIGKILL) -> None:
    """Have the kernel send ``sig`` when our parent exits; exit at once if it already has.

    SIGKILL by default: a runtime stuck in a native call (CUDA) ignores SIGTERM, and nobody is left
    to escalate. Without ``expected_parent`` (run by hand) nothing is done.
    """
    if expected_parent is None:
        return
    if sys.platform == "linux":
        if _libc().prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != expected_parent:
        # Reparented before the call took effect: the parent is gone, and so must we be.
        os._exit(1)


def main(argv: list[str]) -> None:
    """``python -m llmi_runtime.lifeline PARENT_PID CMD ...``: the lifeline for a server that
    cannot call it itself (vLLM); PR_SET_PDEATHSIG survives the exec."""
    die_with_parent(int(argv[0]))
    os.execvp(argv[1], argv[1:])


if __name__ == "__main__":
    main(sys.argv[1:])
