"""The `llmi` command. Subcommands import their component lazily, so `llmi serve` on a
control-plane install never needs torch."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llmi import __version__
from llmi.settings import Settings

GIB = 1024**3
DEFAULT_HF_CACHE = "<default>"  # the same sentinel as llmi.hardware.DEFAULT_HF_CACHE
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


# Subcommands that live in a component package, imported only when run.
COMPONENTS = {
    "runtime": ("llmi_runtime.server", "run", "needs the runtime extra (pip install 'llmi[runtime]')"),
    "serve": ("llmi_router.embedded.serve", "run_serve", "could not start"),
    "router": ("llmi_router.kube_main", "run_router", "needs the kube extra (pip install 'llmi[kube]')"),
    "operator": ("llmi_operator.main", "run_operator", "needs the kube extra (pip install 'llmi[kube]')"),
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The CLI's parser; for a `runtime` command line only its own subcommand, since a runtime's
    start is part of every model switch and the other subcommands' parsers cost it milliseconds."""
    parser = argparse.ArgumentParser(prog="llmi", description="Local LLM Interface")
    parser.add_argument("--version", action="version", version=f"llmi {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    runtime = sub.add_parser("runtime", help="serve one model folder (model server)")
    from llmi.runtime_args import add_runtime_arguments

    add_runtime_arguments(runtime)
    if argv and argv[0] == "runtime":
        return parser
    add_models_arguments(sub.add_parser("models", help="list the model folders llmi can serve"))
    add_pull_arguments(sub.add_parser("pull", help="download a model from the Hugging Face Hub"))
    ps = sub.add_parser("ps", help="what the running server has loaded (like `ollama ps`)")
    ps.add_argument("--url", default="http://localhost:15530", help="the server (default: http://localhost:15530)")
    ps.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ps.add_argument("--watch", action="store_true", help="follow changes as they happen (/v1/events)")
    add_serve_arguments(sub.add_parser("serve", help="serve every model in the models folder (embedded mode)"))
    add_router_arguments(sub.add_parser("router", help="the router alone, for LocalModels on Kubernetes"))
    add_operator_arguments(sub.add_parser("operator", help="the Kubernetes operator: LocalModels, discovery, budget"))
    return parser


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def add_models_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", type=Path, help="models folder (default: LLM_MODELS_DIR)")
    parser.add_argument(
        "--hf-cache",
        nargs="?",
        const=DEFAULT_HF_CACHE,
        metavar="DIR",
        help="also list the Hugging Face hub cache (default: the hub's own cache folder)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--gpu-memory-gb",
        type=positive_float,
        help="plan as if a GPU with this many GiB existed (sets LLM_AVAILABLE_GPU_MEMORY_GB too)",
    )


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", type=Path, help="models folder (default: LLM_MODELS_DIR, else ./models)")
    parser.add_argument(
        "--hf-cache",
        nargs="?",
        const=DEFAULT_HF_CACHE,
        metavar="DIR",
        help="also serve models from the Hugging Face hub cache",
    )
    parser.add_argument("--host", help="address to listen on (default: LLM_HOST, else 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to listen on (default: LLM_PORT, else 15530)")
    parser.add_argument("--gpu-memory-gb", type=positive_float, help="plan as if a GPU with this many GiB existed")
    parser.add_argument(
        "--cpu-memory-gb",
        type=positive_float,
        help="memory budget in GiB when there is no GPU (default: LLM_CPU_MEMORY_BUDGET_GB)",
    )


def add_router_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubernetes", action="store_true", help="use LocalModels and the llmi operator (required)")
    parser.add_argument("--namespace", help="namespace of the LocalModels (default: the pod's, else the kubeconfig's)")
    parser.add_argument("--host", help="address to listen on (default: LLM_HOST, else 0.0.0.0)")
    parser.add_argument("--port", type=int, help="port to listen on (default: LLM_PORT, else 15530)")
    parser.add_argument(
        "--kube-server", metavar="URL", help="API server URL used without credentials (kubectl proxy, tests)"
    )
    parser.add_argument(
        "--last-request-interval",
        type=positive_float,
        default=30.0,
        metavar="S",
        help="record a model's last request time at most this often (default: 30 s)",
    )
    parser.add_argument(
        "--router-id", help="this replica's name in its in-flight reports to the operator (default: the host name)"
    )


def add_operator_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", help="namespace whose LocalModels to serve (default: LLMI_NAMESPACE)")
    parser.add_argument(
        "--models-dir", type=Path, help="models volume mount in the operator (default: LLMI_MODELS_DIR)"
    )
    parser.add_argument(
        "--standalone",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run without kopf peering (default; the operator runs as one replica)",
    )
    parser.add_argument(
        "--liveness", metavar="URL", help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz"
    )


def add_pull_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hugging Face repo id, e.g. Qwen/Qwen2.5-0.5B-Instruct")
    parser.add_argument("--models-dir", type=Path, help="models folder (default: LLM_MODELS_DIR)")
    parser.add_argument("--revision", help="branch, tag or commit (default: main)")
    parser.add_argument("--name", help="folder name under the models folder (default: the repo's name)")
    parser.add_argument("--force", action="store_true", help="download into an existing non-empty folder")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied request is noise
    if args.command in COMPONENTS:
        module_name, function, hint = COMPONENTS[args.command]
        try:
            run = getattr(importlib.import_module(module_name), function)
        except ImportError as exc:
            print(f"llmi {args.command}: {hint}: {exc}", file=sys.stderr)
            return 2
        return int(run(args, settings))
    if args.command == "models":
        return models_command(args, settings)
    if args.command == "pull":
        return pull_command(args, settings)
    if args.command == "ps":
        from llmi.ps import ps

        return ps(args.url, args.json, args.watch)
    return 2


def human_bytes(n: int) -> str:
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 1024**2:.0f} MiB"


def model_rows(args: argparse.Namespace, settings: Settings) -> tuple[list[dict[str, Any]], str]:
    """One row per folder (usable or not) and a line describing the budget it was planned against.

    ``memory_bytes`` is what the planner counts: a folder's ``memory`` override, else the figure a
    runtime measured for this placement and device (remembered in LLM_STATE_DIR), else the estimate.
    """
    from llmi.catalog import measured
    from llmi.catalog.scan import scan
    from llmi.hardware import hf_cache_dir, launch, machine_budget
    from llmi.planner import Placement, placement

    settings, budget = machine_budget(settings, args.gpu_memory_gb)
    hf_cache = hf_cache_dir(args.hf_cache)
    models_dir = args.models_dir or settings.models_dir
    catalog = scan(
        models_dir,
        hf_cache=hf_cache,
        max_model_len=settings.vllm_max_model_len,
        device=budget.device,
        launch=launch(settings),
    )
    store = measured.load(measured.store_path(settings))
    rows: list[dict[str, Any]] = []
    for entry in catalog.entries:
        where = placement(entry.memory_bytes, budget, entry.placement)
        kind, problems = (where.kind, []) if isinstance(where, Placement) else (None, [where.reason])
        device = "cpu" if kind == "cpu" else budget.device
        seen = store.get(entry.path, kind, device, known_fingerprint=entry.weights_fingerprint) if kind else None
        rows.append(
            {
                "name": entry.name,
                "type": entry.type.value,
                "path": str(entry.path),
                "memory_bytes": measured.counted_bytes(entry, seen),
                "memory_estimated_bytes": entry.estimate.total_bytes,
                "memory_measured_bytes": seen,
                "placement": kind,
                "problems": problems,
            }
        )
    for problem in catalog.problems:
        rows.append(
            {
                "name": problem.name or None,
                "type": None,
                "path": str(problem.path),
                "memory_bytes": None,
                "memory_estimated_bytes": None,
                "memory_measured_bytes": None,
                "placement": None,
                "problems": [problem.reason],
            }
        )
    memory = "GPU" if budget.gpu else "host memory"
    offload = f", offload above {human_bytes(budget.offload_threshold_bytes)}" if budget.offload_enabled else ""
    return rows, f"budget: {human_bytes(budget.total_bytes)} of {memory}{offload}"


def models_command(args: argparse.Namespace, settings: Settings) -> int:
    rows, budget_line = model_rows(args, settings)
    status = 0 if (args.models_dir or settings.models_dir).is_dir() else 1
    if args.json:
        print(json.dumps(rows, indent=2))
        return status
    print(budget_line)
    table = [("NAME", "TYPE", "MEMORY", "ESTIMATED", "MEASURED", "PLACEMENT", "PATH")]
    for row in rows:
        if row["type"] is not None:
            seen = row["memory_measured_bytes"]
            table.append(
                (
                    row["name"],
                    row["type"],
                    human_bytes(row["memory_bytes"]),
                    human_bytes(row["memory_estimated_bytes"]),
                    "-" if seen is None else human_bytes(seen),
                    row["placement"] or "refused",
                    row["path"],
                )
            )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]) - 1)]
    for r in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=False)) + "  " + r[-1])
    problems = [(row, reason) for row in rows for reason in row["problems"]]
    if problems:
        print("\nproblems:")
        for row, reason in problems:
            print(f"  {row['name'] or row['path']} ({row['path']}): {reason}")
    return status


def pull_command(args: argparse.Namespace, settings: Settings) -> int:
    """Download a hub repo into the models folder; one clear line and exit 1 on failure."""
    from llmi.names import valid_name

    repo_id: str = args.repo_id
    if not REPO_ID_RE.match(repo_id) or ".." in repo_id or "--" in repo_id:
        print(f"llmi pull: {repo_id!r} is not a repo id such as 'org/name' or 'name'", file=sys.stderr)
        return 2
    name: str = args.name or repo_id.rsplit("/", 1)[-1]
    if not valid_name(name):
        print(f"llmi pull: --name {name!r} is not a valid model name", file=sys.stderr)
        return 2
    target = (args.models_dir or settings.models_dir) / name
    existed = target.exists()
    if existed and not args.force and (not target.is_dir() or any(target.iterdir())):
        print(f"llmi pull: {target} exists and is not empty (use --force to download into it)", file=sys.stderr)
        return 1
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if constants.HF_HUB_OFFLINE:
        print(
            f"llmi pull: cannot download {repo_id}: HF_HUB_OFFLINE is set, so the Hub is out of reach", file=sys.stderr
        )
        return 1
    try:
        # Ask the Hub first: snapshot_download quietly returns an existing local_dir when it cannot connect.
        HfApi().repo_info(repo_id, revision=args.revision)
        path = snapshot_download(repo_id, revision=args.revision, local_dir=target)
    except Exception as exc:  # the CLI boundary: any download failure (HTTP, Xet, disk) is one line
        if not existed:
            _remove_if_empty(target)
        if isinstance(exc, RevisionNotFoundError):
            reason = f"revision {args.revision!r} not found"
        elif isinstance(exc, RepositoryNotFoundError):
            reason = "repository not found (private or gated repos need `hf auth login`)"
        else:
            reason = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or ['no details'])[0]}"
        if not existed and target.exists():
            reason += f" (partial download kept in {target}; rerun with --force to resume)"
        print(f"llmi pull: cannot download {repo_id}: {reason}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _remove_if_empty(folder: Path) -> None:
    """Undo a failed download's empty folder (huggingface_hub may leave only its .cache)."""
    if folder.is_dir() and all(p.is_dir() for p in folder.rglob("*")):
        shutil.rmtree(folder)


if __name__ == "__main__":
    sys.exit(main())
