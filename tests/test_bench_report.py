"""The benchmark table is built from the benchmarks' own JSON: rows, targets, markdown, chart."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from bench.report import Row, all_rows, chart, markdown


def results() -> dict[str, Any]:
    router = {
        "config": {"concurrency": 16},
        "figures": {
            "router": {
                "embeddings (e, 1 string) C=1 p50": {"direct": 2.0, "router": 2.3, "ratio": 1.15, "added_ms": 0.3},
                "embeddings (e, 1 string) C=16": {"direct": 900.0, "router": 800.0, "ratio": 0.89, "added_ms": 0.1},
                "proxy CPU per request": {"direct": 0.0, "router": 0.9, "ratio": math.nan, "added_ms": 0.9},
            },
            "litellm": {"embeddings (e, 1 string) C=16": {"direct": 900.0, "litellm": 100.0}},
        },
    }
    engines = {
        "chat": {
            "floor": {"generate 1 stream tok/s": 25.0, "generate batched x4 tok/s": 70.0, "ttft floor ms": 80.0},
            "llmi": {
                "1 stream tok/s": 25.0,
                "4 streams tok/s": 75.0,
                "ttft ms": 95.0,
                "ttft ms, median of rounds": 90.0,
                "ttft floor ms, median of rounds": 84.0,
                "ttft - floor ms, median of rounds": 6.0,
            },
        },
        "embeddings": {
            "floor": {"encode 32 texts req/s": 6.0},
            "llmi": {"32 texts x c4 req/s": 5.0, "1 text x c16 texts/s": 100.0},
            "infinity": {"32 texts x c4 req/s": 5.5, "1 text x c16 texts/s": 80.0},
            "paired": {"llmi 32xc4 vs floor": 1.02, "llmi 32xc4 vs infinity": 1.01, "llmi 1xc16 vs infinity": 1.3},
        },
    }
    switch = {
        "switch": {"a <-> b": {"a": {"llmi_switch_s": 0.3, "floor_s": 0.1, "bare_cold_s": 4.0}}},
        "storm": {
            "models": 6,
            "llmi": {"loads": 28, "p50_s": 2.0, "bad": []},
            "before": {"loads": 30, "p50_s": 14.0},
            "loads_ratio": 0.93,
            "p50_ratio": 0.14,
        },
        "memory": {
            "m": {
                "measured_mib": 200,
                "pss_mib": 210,
                "measured_vs_pss": -0.05,
                "estimate_mib": 205,
                "estimate_vs_pss": -0.02,
            },
            "fork_server_reserved_mib": 285,
        },
    }
    return {
        "conditions": {"cpu": "test cpu", "llmi_commit": "abc1234"},
        "benches": {
            "router": {"rc": 0, "seconds": 60, "command": "python -m bench.router_bench", "result": router},
            "engines": {"rc": 0, "seconds": 60, "command": "python -m bench.engine_bench", "result": engines},
            "switch": {
                "rc": 1,
                "seconds": 60,
                "command": "python -m bench.switch_bench",
                "result": switch,
                "error": "boom",
            },
        },
    }


def test_every_figure_gets_a_row_judged_against_its_target() -> None:
    rows = {r.figure: r for r in all_rows(results())}
    assert rows["embeddings (e, 1 string) C=1 p50: added latency"].met is True  # +0.3 <= +0.5 ms
    assert rows["embeddings (e, 1 string) C=16 req/s"].met is False  # 0.89 < 0.95
    vs_litellm = rows["embeddings (e, 1 string) C=16 req/s vs LiteLLM"]
    assert vs_litellm.value == pytest.approx(8.0)
    assert vs_litellm.met is False  # 8x < 20x
    assert rows["router CPU per request"].met is False  # 0.9 > 0.4 ms
    # Judged on the median of paired rounds (6 ms over); the best of each (15 ms over) is context.
    assert rows["time to first token, median of paired rounds"].met is True
    assert rows["time to first token, best of each"].value == pytest.approx(15.0)
    assert rows["time to first token, best of each"].met is None
    assert rows["llmi 32xc4 vs floor, median of rounds"].met is True  # 1.02 >= 1.0
    assert rows["llmi 32xc4 vs infinity, median of rounds"].met is False  # 1.01 < 1.05
    assert rows["llmi 1xc16 vs infinity, median of rounds"].met is True
    assert rows["32 texts x concurrency 4 (req/s), best pass"].met is None  # 0.83x, context
    assert rows["4 streams tok/s"].met is True
    assert rows["switch to a vs bare cold start"].met is True  # 0.075x <= 0.2x
    assert rows["switch to a vs in-process floor"].met is False  # 0.3 s > 1.25 * 0.1 + 0.1
    assert rows["storm loads (6 models)"].met is False
    assert rows["storm p50 latency"].met is True
    assert rows["storm requests lost or malformed"].met is True
    assert rows["m: measured vs PSS"].met is True
    assert "fork_server_reserved_mib: measured vs PSS" not in rows  # not a model


def test_markdown_shows_the_table_conditions_and_failed_benches(tmp_path: Path) -> None:
    rows = all_rows(results())
    text = markdown(results(), rows, "results.png")
    assert text.count("\n| ") == len(rows) + 1  # the header and one line per row
    assert "| router | router CPU per request | 0.9 |" in text
    assert "**no**" in text
    assert f"{sum(1 for r in rows if r.met)} of {len(rows)} targets met." in text
    assert "![each figure against its target](results.png)" in text
    assert "- cpu: test cpu" in text
    assert "bench switch: 60 s, FAILED (exit 1): boom" in text


def test_a_missing_figure_is_not_judged() -> None:
    row = Row("x", "y", None, None, "-", "s", None, 1.0, "min", ">= 1")
    assert row.met is None
    assert row.score is None


def test_the_chart_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the chart needs matplotlib, which `python -m bench all` installs")
    assert chart(all_rows(results()), tmp_path / "chart.png")
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
