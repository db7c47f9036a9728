"""The peers the benchmarks measure llmi against, each in a virtual environment of its own.

- LiteLLM's proxy (``litellm[proxy]``): the router figures, in front of the same runtimes.
- Infinity (``infinity-emb[server,torch]``): the embedding figures, on the same folder. torch is
  installed first, pinned like the project's (``constraints.txt``), so pip never swaps it for
  another build.
- ``transformers serve --continuous-batching``: the chat figures; it comes with transformers,
  in this interpreter's environment.

A peer that cannot be installed (no package index) is reported missing with the reason, and its
rows in the results say so.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH = "torch==2.13.0"


@dataclass(frozen=True)
class Peer:
    name: str
    packages: tuple[str, ...]
    executable: str
    version_of: str  # the distribution whose version the results name
    torch_first: bool = False


PEERS = {
    "litellm": Peer("litellm", ("litellm[proxy]",), "litellm", "litellm"),
    "infinity": Peer("infinity", ("infinity-emb[server,torch]",), "infinity_emb", "infinity-emb", torch_first=True),
}


def _pip(python: Path, *args: str) -> None:
    subprocess.run([str(python), "-m", "pip", "install", "-q", *args], check=True, capture_output=True, timeout=1800)


def ensure_peer(peer: Peer, venvs: Path) -> Path:
    """The peer's executable, installed into ``venvs/<name>`` if it is not there yet."""
    home = venvs / peer.name
    exe = home / "bin" / peer.executable
    if exe.is_file():
        return exe
    shutil.rmtree(home, ignore_errors=True)
    venv.create(home, with_pip=True)
    python = home / "bin" / "python"
    constraints = ["-c", str(ROOT / "constraints.txt")] if (ROOT / "constraints.txt").is_file() else []
    if peer.torch_first:
        _pip(python, TORCH)
    _pip(python, *constraints, *peer.packages)
    if not exe.is_file():
        raise FileNotFoundError(f"{peer.packages[0]} installed no {peer.executable}")
    return exe


def version(exe: Path, distribution: str) -> str | None:
    python = exe.parent / "python"
    code = f"import importlib.metadata as m; print(m.version({distribution!r}))"
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return out.stdout.strip() or None


def transformers_serve() -> Path | None:
    """``transformers`` of this environment, when its ``serve`` command can start."""
    exe = Path(sys.executable).parent / "transformers"
    if not exe.is_file():
        return None
    probe = subprocess.run([str(exe), "serve", "--help"], capture_output=True, check=False, timeout=120)
    return exe if probe.returncode == 0 else None


def ensure_peers(venvs: Path) -> tuple[dict[str, Path], dict[str, str], dict[str, str]]:
    """Executables by peer, versions by peer, and why a peer is missing."""
    found: dict[str, Path] = {}
    versions: dict[str, str] = {}
    missing: dict[str, str] = {}
    for name, peer in PEERS.items():
        try:
            found[name] = ensure_peer(peer, venvs)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            detail = getattr(exc, "stderr", b"") or b""
            missing[name] = (detail.decode(errors="replace").strip().splitlines() or [str(exc)])[-1]
            continue
        versions[name] = version(found[name], peer.version_of) or "?"
    serve = transformers_serve()
    if serve is None:
        missing["transformers serve"] = "`transformers serve --help` failed in this environment"
    else:
        found["transformers serve"] = serve
        import transformers

        versions["transformers serve"] = transformers.__version__
    return found, versions, missing
