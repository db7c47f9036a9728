"""From the benchmarks' raw figures to the published table: one row per figure with llmi's value,
the baseline's, their ratio and the target, then markdown and a chart of every ratio against its
target. Pure functions over the JSON the benchmarks print, so a table can be rebuilt from a
results file alone (``python -m bench report bench/results.json``)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal


@dataclass(frozen=True)
class Row:
    section: str
    figure: str
    llmi: float | None
    baseline: float | None
    baseline_name: str
    unit: str
    value: float | None  # what the target is about: a ratio, or a difference
    target: float
    sense: Literal["min", "max", "abs"]  # value >= target, value <= target, |value| <= target
    target_text: str

    @property
    def met(self) -> bool | None:
        if self.value is None or math.isnan(self.value) or math.isnan(self.target):
            return None  # no figure, or a row for context with no target
        if self.sense == "min":
            return self.value >= self.target
        if self.sense == "max":
            return self.value <= self.target
        return abs(self.value) <= self.target

    @property
    def score(self) -> float | None:
        """How far inside the target (> 1) or outside it (< 1); the chart's scale."""
        v = self.value
        if v is None or math.isnan(v) or math.isnan(self.target):
            return None
        if self.sense == "min":
            raw = v / self.target if self.target else math.inf
        elif self.sense == "max":
            raw = self.target / v if v > 0 else math.inf
        else:
            raw = self.target / abs(v) if v else math.inf
        return min(max(raw, 0.05), 20.0)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met}


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def router_rows(raw: dict[str, Any]) -> list[Row]:
    figures = _get(raw, "figures") or {}
    router, litellm = figures.get("router") or {}, figures.get("litellm") or {}
    c = _get(raw, "config", "concurrency") or 16
    rows: list[Row] = []
    for label in [k for k in router if k.endswith("C=1 p50")]:
        f = router[label]
        rows.append(Row("router", f"{label}: added latency", f["router"], f["direct"], "direct", "ms",
                        f.get("paired_added_ms", f["added_ms"]), 0.5, "max", "<= +0.5 ms"))  # fmt: skip
    own = figures.get("router vs own") or {}
    for label in [k for k in own if k.endswith("C=1 p50")]:
        f = own[label]
        rows.append(Row("router", f"{label}: added latency vs its own runtimes", f["router"], f["direct"],
                        "the router's runtimes", "ms", f.get("paired_added_ms", f["added_ms"]), 0.5, "max",
                        "<= +0.5 ms"))  # fmt: skip
    for label in [k for k in router if k.endswith(f"C={c}")]:
        f = router[label]
        rows.append(Row("router", f"{label} req/s", f["router"], f["direct"], "direct", "req/s",
                        f["ratio"], 0.95, "min", ">= 0.95x direct"))  # fmt: skip
        peer = litellm.get(label)
        if peer is not None:
            rows.append(Row("router", f"{label} req/s vs LiteLLM", f["router"], peer["litellm"], "LiteLLM proxy",
                            "req/s", _ratio(f["router"], peer["litellm"]), 20.0, "min", ">= 20x LiteLLM"))  # fmt: skip
    floor = figures.get("floor") or {}
    for label in [k for k in router if k.endswith("C=1 p50") and k in floor]:
        rows.append(Row("router", f"{label}: added latency of the floor proxy", floor[label]["floor"],
                        floor[label]["direct"], "direct", "ms", floor[label]["added_ms"], math.nan, "max",
                        "context: uvicorn + aiohttp, no logic"))  # fmt: skip
    if "proxy CPU per request" in floor:
        rows.append(Row("router", "floor proxy CPU per request", floor["proxy CPU per request"]["floor"], None, "-",
                        "ms", floor["proxy CPU per request"]["floor"], math.nan, "max",
                        "context: uvicorn + aiohttp, no logic"))  # fmt: skip
    cpu = router.get("proxy CPU per request")
    if cpu is not None:
        peer_cpu = _get(litellm, "proxy CPU per request", "litellm")
        rows.append(Row("router", "router CPU per request", cpu["router"], peer_cpu, "LiteLLM proxy", "ms",
                        cpu["router"], 0.4, "max", "<= 0.4 ms"))  # fmt: skip
        floor_cpu = _get(floor, "proxy CPU per request", "floor")
        rows.append(Row("router", "router CPU per request vs the floor proxy", cpu["router"], floor_cpu,
                        "floor proxy", "ms", _ratio(cpu["router"], floor_cpu), math.nan, "max",
                        "context: the same machine's pace, in the same run"))  # fmt: skip
        for n in sorted({1, c}):
            split = router.get(f"proxy CPU per request (C={n})")
            if split is not None:
                rows.append(Row("router", f"router CPU per request at C={n}", split["router"],
                                _get(floor, f"proxy CPU per request (C={n})", "floor"), "floor proxy", "ms",
                                split["router"], 0.4, "max", "<= 0.4 ms"))  # fmt: skip
    label = next((k for k in router if k.startswith("proxy CPU per stream")), None)
    if label is not None:
        rows.append(Row("router", f"router {label[len('proxy '):]}", router[label]["router"],
                        _get(litellm, label, "litellm"), "LiteLLM proxy", "ms", router[label]["router"], math.nan,
                        "max", "context"))  # fmt: skip
    return rows


def engine_rows(raw: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    chat, embed = raw.get("chat") or {}, raw.get("embeddings") or {}
    if chat:
        f, r, ts = chat.get("floor") or {}, chat.get("llmi") or {}, chat.get("transformers serve") or {}
        one, four = r.get("1 stream tok/s"), r.get("4 streams tok/s")
        gen1, gen4 = f.get("generate 1 stream tok/s"), f.get("generate batched x4 tok/s")
        rows.append(Row("chat", "1 stream tok/s", one, gen1, "generate", "tok/s", _ratio(one, gen1), 0.95, "min",
                        ">= 0.95x generate"))  # fmt: skip
        rows.append(Row("chat", "4 streams tok/s", four, gen4, "batched generate", "tok/s", _ratio(four, gen4), 1.0,
                        "min", ">= 1.0x batched generate"))  # fmt: skip
        if ts:
            peer = ts.get("4 streams tok/s")
            rows.append(Row("chat", "4 streams tok/s vs transformers serve", four, peer,
                            "transformers serve --continuous-batching", "tok/s", _ratio(four, peer), 1.1, "min",
                            ">= 1.1x transformers serve"))  # fmt: skip
        ttft, floor = r.get("ttft ms"), f.get("ttft floor ms")
        added = ttft - floor if ttft is not None and floor is not None else None
        paired = r.get("ttft - floor ms, median of rounds")
        if paired is not None:  # the target is judged on rounds, where the machine's drift cancels
            rows.append(Row("chat", "time to first token, median of paired rounds", r.get("ttft ms, median of rounds"),
                            r.get("ttft floor ms, median of rounds"), "generate of 1 token, same round", "ms", paired,
                            10.0, "max", "<= floor + 10 ms"))  # fmt: skip
        rows.append(Row("chat", "time to first token, best of each", ttft, floor, "generate of 1 token", "ms", added,
                        math.nan if paired is not None else 10.0, "max",
                        "context: best runs, apart in time" if paired is not None else "<= floor + 10 ms"))  # fmt: skip
    if embed:
        f, r, inf = embed.get("floor") or {}, embed.get("llmi") or {}, embed.get("infinity") or {}
        paired = embed.get("paired") or {}
        c4, c16 = r.get("32 texts x c4 req/s"), r.get("1 text x c16 texts/s")
        enc = f.get("encode 32 texts req/s")
        # The targets are judged on the median of rounds where it exists (each round runs every
        # side back to back, so drift cancels); each side's best pass, taken apart in time, is context.
        judged = {
            "llmi 32xc4 vs floor": (1.0, ">= 1.0x encode"),
            "llmi 32xc4 vs infinity": (1.05, ">= 1.05x Infinity"),
            "llmi 1xc16 vs infinity": (1.05, ">= 1.05x Infinity"),
        }
        best = [("32 texts x concurrency 4 (req/s)", c4, enc, "encode", "req/s", "llmi 32xc4 vs floor")]
        if inf:
            best += [
                ("32 texts x concurrency 4 (req/s) vs Infinity", c4, inf.get("32 texts x c4 req/s"), "Infinity",
                 "req/s", "llmi 32xc4 vs infinity"),
                ("1 text x concurrency 16 (texts/s) vs Infinity", c16, inf.get("1 text x c16 texts/s"), "Infinity",
                 "texts/s", "llmi 1xc16 vs infinity"),
            ]  # fmt: skip
        for label, mine, peer, peer_name, unit, key in best:
            target, text = judged[key]
            if key in paired:
                target, text = math.nan, "context: best pass of each, apart in time"
            rows.append(Row("embeddings", f"{label}, best pass", mine, peer, peer_name, unit, _ratio(mine, peer),
                            target, "min", text))  # fmt: skip
        for key, value in paired.items():
            target, text = judged.get(key, (math.nan, "context: drift cancels within a round"))
            rows.append(Row("embeddings", f"{key}, median of rounds", value, 1.0, "the other side, same round", "x",
                            value, target, "min", text))  # fmt: skip
    return rows


def switch_rows(raw: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for pair in (raw.get("switch") or {}).values():
        for model, r in pair.items():
            s, floor, cold = r.get("llmi_switch_s"), r.get("floor_s"), r.get("bare_cold_s")
            # Paired rounds (a switch, then its baselines) give the medians of per-round ratios.
            to_cold = r["llmi_vs_cold"] if "rounds" in r else _ratio(s, cold)
            rows.append(Row("switch", f"switch to {model} vs bare cold start", s, cold, "bare cold start", "s",
                            to_cold, 0.2, "max", "<= 0.2x bare"))  # fmt: skip
            target = 1.25 * floor + 0.1 if floor is not None else math.nan
            to_target = r["vs_target"] if "rounds" in r else _ratio(s, target)
            rows.append(Row("switch", f"switch to {model} vs in-process floor", s, floor, "in-process load floor", "s",
                            to_target, 1.0, "max", "<= 1.25x floor + 100 ms"))  # fmt: skip
    storm = raw.get("storm") or {}
    mine, before = storm.get("llmi") or {}, storm.get("before") or {}
    if mine:
        rows.append(Row("storm", f"storm loads ({storm.get('models')} models)", mine.get("loads"), before.get("loads"),
                        "before the supervisor rewrite", "loads", storm.get("loads_ratio"), 0.5, "max",
                        "<= 0.5x before"))  # fmt: skip
        rows.append(Row("storm", "storm p50 latency", mine.get("p50_s"), before.get("p50_s"),
                        "before the supervisor rewrite", "s", storm.get("p50_ratio"), 1 / 3, "max",
                        "<= 1/3 of before"))  # fmt: skip
        simulated = (storm.get("simulated_loads") or {}).get("2 resident")
        if simulated:
            rows.append(Row("storm", "storm loads vs an idealised reordering scheduler", mine.get("loads"), simulated,
                            "simulated, same plan, 2 resident", "loads", _ratio(mine.get("loads"), simulated),
                            math.nan, "max", "context: the fewest loads this plan allows"))  # fmt: skip
        bad = len(mine.get("bad") or [])
        rows.append(Row("storm", "storm requests lost or malformed", bad, None, "-", "requests", bad, 0, "max", "0"))
    for model, m in (raw.get("memory") or {}).items():
        if not isinstance(m, dict):
            continue
        rows.append(Row("memory", f"{model}: measured vs PSS", m.get("measured_mib"), m.get("pss_mib"), "PSS", "MiB",
                        m.get("measured_vs_pss"), 0.10, "abs", "within 10%"))  # fmt: skip
        rows.append(Row("memory", f"{model}: estimate vs PSS", m.get("estimate_mib"), m.get("pss_mib"), "PSS", "MiB",
                        m.get("estimate_vs_pss"), 0.25, "abs", "within 25%"))  # fmt: skip
    return rows


def all_rows(results: dict[str, Any]) -> list[Row]:
    benches = results.get("benches") or {}
    return [
        *router_rows(_get(benches, "router", "result") or {}),
        *engine_rows(_get(benches, "engines", "result") or {}),
        *switch_rows(_get(benches, "switch", "result") or {}),
    ]


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, int) or abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"


def markdown(results: dict[str, Any], rows: list[Row], chart: str | None) -> str:
    c = results.get("conditions") or {}
    lines = [
        "# llmi benchmarks",
        "",
        f"`python -m bench all{' --quick' if results.get('quick') else ''}`, {c.get('date', '')}. "
        "Each benchmark runs llmi and its baselines side by side in one run (A and B alternating where "
        "the benchmark does so); ratios are llmi / baseline. Raw figures: `results.json`.",
        "",
        "| section | figure | llmi | baseline | baseline value | unit | ratio or difference | target | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = {True: "yes", False: "**no**", None: "n/a"}[r.met]
        lines.append(
            f"| {r.section} | {r.figure} | {_fmt(r.llmi)} | {r.baseline_name} | {_fmt(r.baseline)} | {r.unit} | "
            f"{_fmt(r.value)} | {r.target_text} | {met} |"
        )
    met = sum(1 for r in rows if r.met)
    lines += ["", f"{met} of {len(rows)} targets met."]
    if chart:
        lines += ["", f"![each figure against its target]({chart})"]
    lines += ["", "## Conditions", ""]
    for key in ("machine", "cpu", "cpus", "uptime_before", "uptime_after", "python", "torch", "transformers",
                "llmi_commit"):  # fmt: skip
        if c.get(key) is not None:
            lines.append(f"- {key}: {c[key]}")
    for name, v in (results.get("peers") or {}).items():
        lines.append(f"- peer {name}: {v}")
    models = results.get("models") or {}
    lines.append(f"- models: {', '.join(models.get('real') or []) or 'none real'} (real, from PyPI packages); "
                 "tiny random-weight models from `tests/tiny_models.py` elsewhere")  # fmt: skip
    for name, why in {**(models.get("missing") or {}), **(results.get("peers_missing") or {})}.items():
        lines.append(f"- missing: {name} ({why})")
    for name, b in (results.get("benches") or {}).items():
        state = "ok" if b.get("rc") == 0 else f"FAILED (exit {b.get('rc')}): {b.get('error', '')[-300:]}"
        rerun = f" (rerun alone at {b['commit']}, {b.get('date', '')})" if b.get("commit") else ""
        lines.append(f"- bench {name}: {b.get('seconds', 0):.0f} s, {state}{rerun}; `{b.get('command', '')}`")
    return "\n".join(lines) + "\n"


def chart(rows: list[Row], path: Path) -> bool:
    """A horizontal bar per figure: how far inside (right of 1) or outside its target it is."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    shown = [r for r in rows if r.score is not None]
    if not shown:
        return False
    height = max(3.0, 0.32 * len(shown) + 1.2)
    fig, ax = plt.subplots(figsize=(13, height))
    labels = [f"{r.section}: {r.figure}"[:75] for r in shown]
    scores = [r.score for r in shown]
    colors = ["#2e7d32" if r.met else "#c62828" for r in shown]
    ax.barh(range(len(shown)), scores, color=colors)
    ax.set_yticks(range(len(shown)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xlabel("target / figure, oriented so that right of 1 meets the target (log scale, capped at 0.05 and 20)")
    ax.set_title("llmi against its targets (green: met, red: missed)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
