"""The router's request metrics: buffered on the fast path, never seen stale by a collection."""

from __future__ import annotations

from prometheus_client import generate_latest

from llmi_router.metrics import PENDING_MAX, RouterMetrics

LABELS = {"model": "m", "endpoint": "/v1/embeddings"}


def test_every_collection_sees_each_answered_request() -> None:
    metrics = RouterMetrics()
    metrics.answered("m", "/v1/embeddings", 200, 0.004)
    metrics.answered("m", "/v1/embeddings", 200, 0.2)
    metrics.answered("m", "/v1/embeddings", 400, 0.001)
    r = metrics.registry
    assert r.get_sample_value("llmi_requests_total", {**LABELS, "status": "200"}) == 2
    assert r.get_sample_value("llmi_requests_total", {**LABELS, "status": "400"}) == 1
    assert r.get_sample_value("llmi_request_seconds_count", LABELS) == 3
    assert r.get_sample_value("llmi_request_seconds_bucket", {**LABELS, "le": "0.005"}) == 2
    metrics.answered("m", "/v1/embeddings", 200, 1.0)
    text = generate_latest(r).decode()
    assert 'llmi_requests_total{endpoint="/v1/embeddings",model="m",status="200"} 3.0' in text
    assert 'llmi_request_seconds_sum{endpoint="/v1/embeddings",model="m"} 1.205' in text


def test_a_process_never_scraped_counts_in_passes_and_keeps_no_backlog() -> None:
    metrics = RouterMetrics()
    for _ in range(3 * PENDING_MAX + 1):
        metrics.answered("m", "/v1/embeddings", 200, 0.01)
    assert len(metrics._pending) == 1, "counted every PENDING_MAX requests, not kept for a scrape"
    assert metrics.registry.get_sample_value("llmi_requests_total", {**LABELS, "status": "200"}) == 3 * PENDING_MAX + 1
