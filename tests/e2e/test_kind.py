"""End to end on kind: the chart installed, models discovered, called with the official openai client.

One cluster per session (tests/e2e/conftest.py); the tests run in order and share it:

1. discovery turns the model folders into LocalModels, all at zero replicas;
2. a chat request (plain, then streamed) scales tiny-llama-chat from 0 to 1;
3. an embeddings request needs tiny-bert-embed: the 1 GiB budget holds one 600 MiB model, so the
   operator evicts tiny-llama-chat (scales it to 0);
4. a rerank request does the same to tiny-bert-embed;
5. left alone for its idle timeout, tiny-bert-reranker scales to zero.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.e2e.conftest import IDLE_TIMEOUT, MODEL_MEMORY, MODELS, Cluster, wait_for

# The session fixture builds images and a cluster inside the first test's time limit.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

LOAD_TIMEOUT_S = 600  # image already on the node; the model loads on CPU
EVICT_TIMEOUT_S = 180
IDLE_WAIT_S = int(IDLE_TIMEOUT.rstrip("s")) + 120  # the timeout, reconcile intervals, pod shutdown


def client(cluster: Cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=cluster.openai_base_url, api_key="not-needed", timeout=LOAD_TIMEOUT_S, max_retries=0)


def scaled(cluster: Cluster, model: str, replicas: int) -> bool:
    return cluster.kube.replicas(model) == replicas


def test_discovery_creates_localmodels(cluster: Cluster) -> None:
    kube = cluster.kube

    def discovered() -> bool:
        return set(MODELS) <= set(kube.localmodels())

    wait_for(f"discovery of {sorted(MODELS)} (kubectl get lm)", discovered, timeout=300)
    print(kube("get", "lm"))
    found = kube.localmodels()
    for name, model_type in MODELS.items():
        model = found[name]
        assert model["metadata"]["labels"]["llmi.dev/discovered"] == "true"
        assert model["spec"]["type"] == model_type
        assert model["spec"]["replicas"] == 0
        # A small budget that holds one model, not two; short idle timeouts.
        patch = {"spec": {"memory": MODEL_MEMORY, "idleTimeout": IDLE_TIMEOUT}}
        kube("patch", "lm", name, "--type", "merge", "-p", json.dumps(patch))
    listed = httpx.get(f"{cluster.openai_base_url}/models", timeout=30).json()
    assert set(MODELS) <= {m["id"] for m in listed["data"]}


def test_chat_scales_from_zero(cluster: Cluster) -> None:
    model = "tiny-llama-chat"
    assert cluster.kube.replicas(model) == 0
    reply = client(cluster).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello!"}], max_tokens=8, temperature=0
    )
    assert reply.model == model
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.completion_tokens >= 1
    assert cluster.kube.replicas(model) == 1

    chunks = list(
        client(cluster).chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Count to 5"}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks
    assert any(c.choices and c.choices[0].finish_reason in ("stop", "length") for c in chunks)
    assert chunks[-1].usage is not None


def test_embeddings_evict_the_chat_model(cluster: Cluster) -> None:
    model, evicted = "tiny-bert-embed", "tiny-llama-chat"
    assert cluster.kube.replicas(model) == 0
    assert cluster.kube.replicas(evicted) == 1
    result = client(cluster).embeddings.create(model=model, input=["first text", "second text"])
    assert len(result.data) == 2
    assert len(result.data[0].embedding) > 0
    assert cluster.kube.replicas(model) == 1
    wait_for(f"{evicted} scaled to 0 (budget)", lambda: scaled(cluster, evicted, 0), timeout=EVICT_TIMEOUT_S)


def test_rerank_evicts_the_embedding_model(cluster: Cluster) -> None:
    model, evicted = "tiny-bert-reranker", "tiny-bert-embed"
    assert cluster.kube.replicas(model) == 0
    response = httpx.post(
        f"{cluster.openai_base_url}/rerank",
        json={"model": model, "query": "what is AI", "documents": ["AI is a field", "bananas", "apples"], "top_n": 2},
        timeout=LOAD_TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 2
    scores = [r["relevance_score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    assert {r["index"] for r in results} <= {0, 1, 2}
    assert cluster.kube.replicas(model) == 1
    wait_for(f"{evicted} scaled to 0 (budget)", lambda: scaled(cluster, evicted, 0), timeout=EVICT_TIMEOUT_S)


def test_idle_model_scales_to_zero(cluster: Cluster) -> None:
    model = "tiny-bert-reranker"
    assert cluster.kube.replicas(model) == 1
    wait_for(f"{model} scaled to 0 after {IDLE_TIMEOUT} idle", lambda: scaled(cluster, model, 0), timeout=IDLE_WAIT_S)
    print(cluster.kube("get", "lm"))
