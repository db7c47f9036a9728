"""A simulated cluster: the real operator and real routers against the emulated API server, at scale.

Run from the repository root (the kube and dev extras installed):

    python -m bench.cluster_sim [--quick] [--nodes 50] [--models 200] [--routers 2] [--burst 60]
                                [--steady-s 60] [--rate 4] [--seed 1] [--json]

What runs: kmock's API server emulator with the project's realism layer (tests/kube/realism.py);
the operator (kopf, its own thread, real settings except shorter retry and drain grace); N
router control planes (KubeControlPlane, as `llmi router --kubernetes` runs them, without the
HTTP gateway: a request is an acquired lease, held for a random time, then released); and
FakeCluster playing the Deployment controller, kubelet and EndpointSlice controller (pods are
ready at once; no runtime processes).

Model sizes are random (1 to 6 GiB) on nodes of 8 GiB, so models keep displacing each other.

Figures:

1. convergence after a burst: ``--burst`` distinct models requested at once at a cold cluster;
   the time until every one of those requests holds a ready model (p50, max);
2. steady state: Poisson requests (``--rate`` per second, Zipf-popular models, each held 0.2 to
   3 s) for ``--steady-s`` seconds; API requests per model per minute, split into the operator's
   and the routers' (by User-Agent), and how requests ended (served, 503 after the deadline);
3. safety, checked over every write the API server accepted: no node's planned memory ever
   exceeded its budget, and no request was in flight on a model when its pod went away (a cut).

``--quick`` is a short run (10 nodes, 40 models, a burst of 15, 20 s steady) for a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmi.errors import LlmiError
from llmi.localmodel import child_name
from llmi.settings import Settings
from llmi_router.kube.control import KubeControlPlane
from llmi_router.kube.publish import Timing
from tests.kube.cluster import (
    GIB,
    LM,
    NODES,
    FakeCluster,
    local_model,
    node,
    operator_settings,
    replay_budget,
    running_operator,
)
from tests.kube_fixtures import api_server, control_plane

NODE_BUDGET = 8 * GIB


@dataclass
class Tally:
    """What the simulated clients saw and what the cluster did to their requests."""

    in_flight: Counter[str] = field(default_factory=Counter)  # model -> leases held now
    cuts: list[str] = field(default_factory=list)  # models whose pod went while a lease was held
    outcomes: Counter[str] = field(default_factory=Counter)
    waits: list[float] = field(default_factory=list)

    def pod_gone(self, deployment: str) -> None:
        for model, n in self.in_flight.items():
            if n and child_name(model) == deployment:
                self.cuts.append(model)


async def request(router: KubeControlPlane, model: str, hold_s: float, tally: Tally, deadline_s: float) -> float | None:
    """One request: wait for the model, hold it ``hold_s`` (the request runs), let go."""
    t0 = time.monotonic()
    try:
        lease = await router.acquire(model, deadline_s)
    except LlmiError as exc:
        tally.outcomes[f"{exc.status} {exc.code or type(exc).__name__}"] += 1
        return None
    waited = time.monotonic() - t0
    tally.in_flight[model] += 1
    try:
        await asyncio.sleep(hold_s)  # the request being served: simulated work, not synchronisation
    finally:
        tally.in_flight[model] -= 1
        lease.release()
    tally.outcomes["served"] += 1
    tally.waits.append(waited)
    return waited


def api_calls(emulator: Any, since: int) -> tuple[Counter[str], Counter[str]]:
    """Requests the API server answered since the ``since``-th: by client (the routers say
    ``llmi-router`` in their User-Agent), and by client, verb and resource."""
    counts: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    for r in list(emulator)[since:]:
        who = "router" if r.headers.get("User-Agent", "").startswith("llmi-router") else "operator"
        counts[who] += 1
        what = r.resource.plural if r.resource is not None else r.url.path
        sub = f"/{r.subresource}" if r.subresource else ""
        watch = " watch" if r.params.get("watch") in ("true", "True") else ""
        kinds[f"{who} {str(r.method.value).upper()}{watch} {what}{sub}"] += 1
    return counts, kinds


def percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def simulate(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    tally = Tally()
    settings = Settings().model_copy(update={"queue_timeout_s": args.deadline_s, "max_queue_per_model": 10_000})
    timing = Timing(report_s=2.0, heartbeat_s=20.0, touch_s=30.0)
    work = Path(tempfile.mkdtemp(prefix="cluster-sim-"))
    async with api_server() as api:
        config = api.kubeconfig(work / "kubeconfig")
        os.environ["KUBECONFIG"] = str(config)
        import kubernetes.config.kube_config as sync_config  # the operator's client reads it at import

        sync_config.KUBE_CONFIG_DEFAULT_LOCATION = str(config)
        os.environ.pop("KUBERNETES_SERVICE_HOST", None)
        e, ns = api.emulator, api.namespace
        for i in range(args.nodes):
            await e.apply_create(NODES, None, node(f"node-{i:03d}", budget="8Gi"))
        sizes = {f"m{i:03d}": rng.choice([1, 2, 3, 4, 5, 6]) for i in range(args.models)}
        for name, size in sizes.items():
            await e.apply_create(LM, ns, local_model(name, memory=f"{size}Gi", idleTimeout="0"))
        op = operator_settings(
            ns,
            work / "absent",
            reconcile_interval_s=10.0,
            retry_delay_s=2.0,
            discovery_interval_s=3600,
            drain_grace_s=1.0,
            drain_timeout_s=args.deadline_s,
        )
        async with (
            FakeCluster(e, ns, on_pod_gone=tally.pod_gone, period_s=0.1),
            running_operator(op, stop_within_s=300),
        ):
            routers = [
                await control_plane(api, settings, router_id=f"router-{i}", timing=timing) for i in range(args.routers)
            ]
            for r in routers:
                await r.start()
            try:
                # 1. A burst at a cold cluster.
                burst_models = rng.sample(sorted(sizes), args.burst)
                t0 = time.monotonic()
                waits = await asyncio.gather(
                    *(
                        request(routers[i % len(routers)], m, 0.5, tally, args.deadline_s)
                        for i, m in enumerate(burst_models)
                    )
                )
                burst_s = time.monotonic() - t0
                burst_waits = [w for w in waits if w is not None]

                # 2. Steady state: Poisson arrivals, Zipf popularity.
                names = sorted(sizes)
                rng.shuffle(names)
                weights = [1 / (k + 1) for k in range(len(names))]
                before_calls = len(list(e))
                tally.waits.clear()
                served_before = tally.outcomes["served"]
                tasks: list[asyncio.Task[float | None]] = []
                start = time.monotonic()
                while time.monotonic() - start < args.steady_s:
                    await asyncio.sleep(rng.expovariate(args.rate))  # the clients' arrival process
                    model = rng.choices(names, weights)[0]
                    router = rng.choice(routers)
                    tasks.append(
                        asyncio.create_task(request(router, model, rng.uniform(0.2, 3.0), tally, args.deadline_s))
                    )
                steady_s = time.monotonic() - start
                calls, kinds = api_calls(e, before_calls)
                await asyncio.gather(*tasks)
            finally:
                for r in routers:
                    await r.close()
            # The figures now: stopping kopf with 200 models' handlers in flight takes a while.
            result = summarize(args, e, tally, burst_s, burst_waits, steady_s, len(tasks), served_before, calls, kinds)
            print(json.dumps(result, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
            sys.stdout.flush()
    return result


def summarize(
    args: argparse.Namespace,
    e: Any,
    tally: Tally,
    burst_s: float,
    burst_waits: list[float],
    steady_s: float,
    requests: int,
    served_before: int,
    calls: Counter[str],
    kinds: Counter[str],
) -> dict[str, Any]:
    try:
        replay_budget(e.writes, {f"node-{i:03d}": NODE_BUDGET for i in range(args.nodes)})
        budget_ok, budget_problem = True, None
    except AssertionError as exc:
        budget_ok, budget_problem = False, str(exc)[:300]
    minutes = steady_s / 60
    return {
        "nodes": args.nodes,
        "models": args.models,
        "routers": args.routers,
        "burst": {
            "models": args.burst,
            "converged_s": round(burst_s, 2),
            "wait_p50_s": round(statistics.median(burst_waits), 2) if burst_waits else None,
            "wait_max_s": round(max(burst_waits), 2) if burst_waits else None,
            "answered": len(burst_waits),
        },
        "steady": {
            "seconds": round(steady_s, 1),
            "requests": requests,
            "served": tally.outcomes["served"] - served_before,
            "wait_p50_s": round(percentile(tally.waits, 0.5), 3),
            "wait_p95_s": round(percentile(tally.waits, 0.95), 3),
            "api_requests_per_model_per_min": round(sum(calls.values()) / args.models / minutes, 2),
            "operator_per_model_per_min": round(calls["operator"] / args.models / minutes, 2),
            "routers_per_model_per_min": round(calls["router"] / args.models / minutes, 2),
            "by_call_per_model_per_min": {k: round(n / args.models / minutes, 2) for k, n in kinds.most_common(12)},
        },
        "outcomes": dict(tally.outcomes),
        "budget_never_exceeded": budget_ok,
        "budget_problem": budget_problem,
        "requests_cut": len(tally.cuts),
        "writes": len(e.writes),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run for a shared machine")
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--routers", type=int, default=2)
    parser.add_argument("--burst", type=int, default=60)
    parser.add_argument("--steady-s", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=4.0, help="requests per second at steady state")
    parser.add_argument("--deadline-s", type=float, default=120.0, help="each request's queue deadline")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.nodes, args.models, args.burst, args.steady_s = 10, 40, 15, 20.0
    logging.basicConfig(level=logging.WARNING)
    for noisy in ("kopf", "llmi", "aiohttp", "kmock"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    result = asyncio.run(simulate(args))
    ok = result["budget_never_exceeded"] and result["requests_cut"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
