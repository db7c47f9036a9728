"""`llmi serve`: the embedded mode. Scan the models folder, plan into the memory budget, and
serve every model behind one OpenAI-compatible endpoint on LLM_HOST:LLM_PORT."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from llmi import hardware
from llmi.catalog.measured import store_path
from llmi.catalog.scan import Catalog, scan
from llmi.planner import Budget
from llmi.settings import Settings
from llmi_router.app import build_router_app, serve_app
from llmi_router.embedded.supervisor import Supervisor
from llmi_router.embedded.vllm import VllmLauncher, vllm_command
from llmi_router.embedded.warm import WarmLauncher, default_launcher
from llmi_router.metrics import RouterMetrics

log = logging.getLogger("llmi.serve")


def _scan(models_dir: Path, hf_cache: Path | None, settings: Settings, budget: Budget) -> Catalog:
    return scan(
        models_dir,
        hf_cache=hf_cache,
        max_model_len=settings.vllm_max_model_len,
        device=budget.device,
        launch=hardware.launch(settings),
    )


def run_serve(args: argparse.Namespace, settings: Settings) -> int:
    updates = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "models_dir": args.models_dir,
            "cpu_memory_budget_gb": args.cpu_memory_gb,
        }.items()
        if v is not None
    }
    settings, budget = hardware.machine_budget(settings.model_copy(update=updates), args.gpu_memory_gb)
    models_dir = settings.models_dir.expanduser()
    hf_cache = hardware.hf_cache_dir(args.hf_cache)
    log.info(
        "models folder %s; budget %.2f GiB on %s",
        models_dir.resolve(),
        budget.total_bytes / 2**30,
        "GPU" if budget.gpu else "CPU (no GPU found)",
    )
    if not models_dir.is_dir():
        log.warning(
            "models folder %s does not exist yet; it is scanned again every %.0fs",
            models_dir,
            settings.rescan_interval_s,
        )

    metrics = RouterMetrics()
    command = vllm_command(settings) if budget.gpu else None
    gpu_total = int(args.gpu_memory_gb * 2**30) if args.gpu_memory_gb else hardware.gpu_memory_bytes()
    launcher = default_launcher(hardware.forks_runtimes(settings), spare=settings.spare_runtime)
    supervisor = Supervisor(
        settings,
        budget,
        metrics,
        launcher=launcher,
        host_budget_bytes=host_budget_bytes(settings),
        vllm_launcher=VllmLauncher(settings, command, gpu_total) if command else None,
        measured_store=store_path(settings),
    )
    first = _scan(models_dir, hf_cache, settings, budget)
    _log_catalog(first, None)

    async def startup() -> None:
        if isinstance(launcher, WarmLauncher):
            launcher.prepare()  # imports in the background; serving does not wait for it
        await supervisor.update_catalog(first)

    async def background() -> None:
        previous = first
        while True:
            await asyncio.sleep(settings.rescan_interval_s)
            try:
                catalog = await asyncio.to_thread(_scan, models_dir, hf_cache, settings, budget)
                _log_catalog(catalog, previous)
                await supervisor.update_catalog(catalog)
                previous = catalog
            except Exception:
                log.exception("rescan failed")

    hint = first_run_hint(models_dir, settings)
    if not first.entries:
        log.warning("%s", hint)
    app = build_router_app(supervisor, settings, metrics, background=background, startup=startup, empty_hint=hint)
    return serve_app(app, settings)


def first_run_hint(models_dir: Path, settings: Settings) -> str:
    """What to do when no model was found: where llmi looked, and how to add one."""
    where = models_dir.resolve()
    return (
        f"No models found in {where}. Add one with `llmi pull Qwen/Qwen2.5-0.5B-Instruct --models-dir {models_dir}` "
        f"(any Hugging Face repo id), or copy a model folder (config.json and weights) into {where}; "
        f"it is picked up within {settings.rescan_interval_s:.0f} s, no restart needed."
    )


def host_budget_bytes(settings: Settings) -> int:
    """Host memory parked models may hold (LLM_HOST_MEMORY_BUDGET_GB, default half the RAM)."""
    if settings.host_memory_budget_gb is not None:
        return int(settings.host_memory_budget_gb * 2**30)
    return hardware.host_memory_bytes() // 2


def _log_catalog(catalog: Catalog, previous: Catalog | None) -> None:
    known = {e.name for e in previous.entries} if previous else set()
    for entry in catalog.entries:
        if entry.name not in known and previous is not None:
            log.info("new model %s (%s) at %s", entry.name, entry.type, entry.path)
    if previous is None:
        log.info("found %d models: %s", len(catalog.entries), ", ".join(e.name for e in catalog.entries) or "none")
    old_problems = {(str(p.path), p.reason) for p in previous.problems} if previous else set()
    for problem in catalog.problems:
        if (str(problem.path), problem.reason) not in old_problems:
            log.warning("skipping %s: %s", problem.path, problem.reason)
