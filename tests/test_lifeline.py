"""PR_SET_PDEATHSIG set by the child itself: it dies with its parent, and exits if the parent is gone."""

from __future__ import annotations

import subprocess
import sys

from tests.servers import wait_gone


def test_lifeline_exits_when_the_parent_is_already_gone() -> None:
    code = "from llmi_runtime.lifeline import die_with_parent; die_with_parent(1); print('alive')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1
    assert "alive" not in out.stdout


def test_lifeline_kills_the_child_with_its_parent() -> None:
    # A middle process starts a grandchild that sets its lifeline to the middle one, then waits forever.
    grandchild = (
        "import signal, sys; from llmi_runtime.lifeline import die_with_parent; "
        "die_with_parent(int(sys.argv[1])); print('armed', flush=True); signal.pause()"
    )
    middle = (
        "import os, subprocess, sys; "
        f"p = subprocess.Popen([sys.executable, '-c', {grandchild!r}, str(os.getpid())], stdin=subprocess.PIPE); "
        "print(p.pid, flush=True); sys.stdin.read()"
    )
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
    with subprocess.Popen([sys.executable, "-c", middle], **pipes) as p:  # type: ignore[call-overload]
        assert p.stdout is not None
        pid = int(p.stdout.readline())
        assert p.stdout.readline().strip() == "armed"
        p.kill()
    assert wait_gone(pid)
