"""`llmi runtime` as a process: start-up failures are clear and exit non-zero."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.servers import runtime_env, start_runtime

pytestmark = pytest.mark.slow


def run_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmi.cli", *args],
        capture_output=True,
        text=True,
        env=runtime_env(),
        timeout=timeout,
        check=False,
    )


def test_missing_folder_exits_2(tmp_path: Path) -> None:
    out = run_cli("runtime", "--model", str(tmp_path / "nope"), "--port", "1")
    assert out.returncode == 2
    assert "does not exist" in out.stderr


def test_unclassifiable_folder_exits_2(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    out = run_cli("runtime", "--model", str(tmp_path / "m"), "--port", "1")
    assert out.returncode == 2
    assert "no config.json" in out.stderr


def test_corrupt_weights_exit_3_with_the_reason(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken-chat"
    shutil.copytree(tiny_models["tiny-llama-chat"], broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"\x00" * 100)
    rt = start_runtime(broken, tmp_path, wait=False)
    assert rt.proc.wait(timeout=180) == 3
    assert "failed" in rt.output()


def test_health_reports_the_model(runtimes, tiny_models: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    rt = runtimes("tiny-bert-embed")
    health = httpx.get(f"{rt.url}/v1/health", timeout=30).json()
    assert health["status"] == "ok"
    assert health["model"] == "tiny-bert-embed"
    assert health["type"] == "embedding"
    assert health["device"] == "cpu"
    assert health["placement"] == "cpu"
    assert health["parameters"] > 0
    assert health["memory_bytes"] > 0
    models = httpx.get(f"{rt.url}/v1/models", timeout=30).json()
    assert models["data"][0]["id"] == "tiny-bert-embed"
    assert models["data"][0]["state"] == "ready"
    metrics = httpx.get(f"{rt.url}/metrics", timeout=30).text
    assert 'llmi_runtime_ready{model="tiny-bert-embed",type="embedding"} 1.0' in metrics


def test_uds_serves_on_the_socket_as_well_as_the_port(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """What llmi serve's front relays through; a socket file a killed runtime left is replaced."""
    socket_path = tmp_path / "rt.sock"
    socket_path.write_text("left behind")
    rt = start_runtime(tiny_models["tiny-bert-embed"], tmp_path, "--uds", str(socket_path))
    try:
        body = {"model": "tiny-bert-embed", "input": "hello"}
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(socket_path)), base_url="http://rt") as over_socket:
            via_socket = over_socket.post("/v1/embeddings", json=body, timeout=60)
        via_port = httpx.post(f"{rt.url}/v1/embeddings", json=body, timeout=60)
        assert via_socket.status_code == via_port.status_code == 200
        assert via_socket.json()["data"] == via_port.json()["data"]
        assert oct(socket_path.stat().st_mode & 0o777) == "0o600"  # only this user's processes connect
    finally:
        rt.stop()


def test_a_runtime_command_line_parses_alike_with_the_runtime_parser_alone(tmp_path: Path) -> None:
    """A runtime's start builds only its own subcommand's parser: the same namespace as the
    whole CLI's, and the other subcommands are not known to it."""
    from llmi.cli import build_parser

    argv = ["runtime", "--model", str(tmp_path), "--port", "9", "--name", "m", "--placement", "cpu"]
    whole = build_parser()
    alone = build_parser(argv)
    assert vars(alone.parse_args(argv)) == vars(whole.parse_args(argv))
    assert "serve" in whole._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(alone._subparsers._group_actions[0].choices) == {"runtime"}  # type: ignore[union-attr]
