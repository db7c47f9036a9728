"""Acceptance: the runtime gives the same numbers as direct use of the reference libraries."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from sentence_transformers import CrossEncoder, SentenceTransformer
from transformers import AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoProcessor, AutoTokenizer, CLIPModel

from llmi_runtime.engines.base import LoadOptions
from llmi_runtime.engines.chat import ChatEngine, SamplingParams
from tests.images import b64, picture
from tests.servers import RuntimeProcess

pytestmark = pytest.mark.slow
Runtimes = Callable[[str], RuntimeProcess]
TOL = 1e-5
TEXTS = ["a quick brown fox", "jumps over the lazy dog", "hello"]


def post(rt: RuntimeProcess, path: str, body: dict) -> dict:
    r = httpx.post(f"{rt.url}{path}", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("model", ["tiny-bert-embed", "tiny-qwen3-embed"])
def test_embeddings_match_sentence_transformers(runtimes: Runtimes, tiny_models: dict[str, Path], model: str) -> None:
    got = post(runtimes(model), "/v1/embeddings", {"model": model, "input": TEXTS})
    reference = SentenceTransformer(str(tiny_models[model]), device="cpu").encode(TEXTS)
    assert np.abs(np.array([d["embedding"] for d in got["data"]]) - reference).max() <= TOL


def test_cross_encoder_matches_predict_with_sigmoid(runtimes: Runtimes, tiny_models: dict[str, Path]) -> None:
    model = "tiny-bert-reranker"
    got = post(runtimes(model), "/v1/rerank", {"model": model, "query": "fox", "documents": TEXTS})
    reference = CrossEncoder(str(tiny_models[model]), device="cpu").predict(
        [("fox", d) for d in TEXTS], activation_fn=torch.nn.Sigmoid()
    )
    scores = {r["index"]: r["relevance_score"] for r in got["results"]}
    assert np.abs(np.array([scores[i] for i in range(len(TEXTS))]) - reference).max() <= TOL


def test_causal_lm_reranker_matches_yes_no_recipe(runtimes: Runtimes, tiny_models: dict[str, Path]) -> None:
    """The Qwen3-Reranker model card's computation, one document at a time, no padding."""
    model = "tiny-qwen3-reranker"
    got = post(runtimes(model), "/v1/rerank", {"model": model, "query": "fox", "documents": TEXTS})
    path = tiny_models[model]
    tok = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path).eval()
    prefix = (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
        'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    )
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    instruction = "Given a web search query, retrieve relevant passages that answer the query"
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    reference = []
    for doc in TEXTS:
        text = f"{prefix}<Instruct>: {instruction}\n<Query>: fox\n<Document>: {doc}{suffix}"
        ids = torch.tensor([tok(text, add_special_tokens=False).input_ids])
        with torch.no_grad():
            logits = lm(input_ids=ids).logits[0, -1]
        reference.append(torch.softmax(torch.stack([logits[no], logits[yes]]), dim=0)[1].item())
    scores = {r["index"]: r["relevance_score"] for r in got["results"]}
    assert np.abs(np.array([scores[i] for i in range(len(TEXTS))]) - np.array(reference)).max() <= TOL


@pytest.mark.parametrize("model", ["tiny-llama-chat", "tiny-qwen2-chat"])
def test_greedy_chat_matches_generate(runtimes: Runtimes, tiny_models: dict[str, Path], model: str) -> None:
    path = tiny_models[model]
    messages = [{"role": "user", "content": "the quick brown fox jumps"}]
    tok = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path).eval()
    prompt = tok(
        tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), add_special_tokens=False
    ).input_ids
    with torch.no_grad():
        out = lm.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            do_sample=False,
            max_new_tokens=32,
            pad_token_id=tok.pad_token_id,
        )
    reference = out[0, len(prompt) :].tolist()

    # Token ids, straight from the engine the runtime uses.
    engine = ChatEngine(path, LoadOptions(device="cpu"))
    assert engine.chat_prompt(messages) == prompt
    ids = [d.token_id for d in engine.generate(prompt, SamplingParams(max_tokens=32, temperature=0))]
    assert ids == reference

    # And the text over HTTP.
    got = post(
        runtimes(model),
        "/v1/chat/completions",
        {"model": model, "messages": messages, "temperature": 0, "max_tokens": 32},
    )
    eos = set(engine.eos_ids)
    expected = tok.decode([t for t in reference if t not in eos], skip_special_tokens=True)
    assert got["choices"][0]["message"]["content"] == expected
    assert got["usage"]["completion_tokens"] == len(reference)


def test_clip_matches_clipmodel(runtimes: Runtimes, tiny_models: dict[str, Path]) -> None:
    model = "tiny-clip"
    images = [picture(1), picture(2, size=(30, 50))]
    texts = ["a red square", "a photo of a dog", "noise"]
    rt = runtimes(model)
    enc = post(rt, "/v1/multimodal/encode", {"model": model, "images": [b64(i) for i in images], "texts": texts})
    match = post(rt, "/v1/multimodal/match", {"model": model, "images": [b64(i) for i in images], "texts": texts})

    path = tiny_models[model]
    processor = AutoProcessor.from_pretrained(path)
    clip = CLIPModel.from_pretrained(path).eval()
    inputs = processor(text=texts, images=images, return_tensors="pt", padding=True)
    with torch.no_grad():
        image_features = clip.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        text_features = clip.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).pooler_output
        logits = clip(**inputs).logits_per_image
    assert np.abs(np.array(enc["image_embeddings"]) - image_features.numpy()).max() <= TOL
    assert np.abs(np.array(enc["text_embeddings"]) - text_features.numpy()).max() <= TOL
    assert np.abs(np.array(match["logits"]) - logits.numpy()).max() <= 1e-4 * max(1.0, logits.abs().max().item())
    assert np.abs(np.array(match["probabilities"]) - logits.softmax(dim=1).numpy()).max() <= TOL
    cosine = (
        torch.nn.functional.normalize(image_features, dim=-1) @ torch.nn.functional.normalize(text_features, dim=-1).T
    )
    assert np.abs(np.array(match["similarity_matrix"]) - cosine.numpy()).max() <= TOL

    # The vision endpoints use the image tower of a CLIP model.
    vision = post(rt, "/v1/vision/encode", {"model": model, "images": [b64(images[0])]})
    assert np.abs(np.array(vision["embeddings"][0]) - image_features[0].numpy()).max() <= TOL


@pytest.mark.parametrize("model", ["tiny-vit", "tiny-dinov2"])
def test_vision_matches_pooled_features(runtimes: Runtimes, tiny_models: dict[str, Path], model: str) -> None:
    images = [picture(3), picture(4, size=(64, 20))]
    got = post(runtimes(model), "/v1/vision/encode", {"model": model, "images": [b64(i) for i in images]})
    path = tiny_models[model]
    processor = AutoImageProcessor.from_pretrained(path)
    net = AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        pooled = net(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]).pooler_output
    assert got["dimensions"] == pooled.shape[1]
    assert np.abs(np.array(got["embeddings"]) - pooled.numpy()).max() <= TOL


def test_vision_similarity_is_defined_in_unit_range(runtimes: Runtimes) -> None:
    rt = runtimes("tiny-dinov2")
    same = post(
        rt, "/v1/vision/similarity", {"model": "tiny-dinov2", "image1": b64(picture(5)), "image2": b64(picture(5))}
    )
    assert same["similarity"] == pytest.approx(1.0, abs=1e-6)
    other = post(
        rt,
        "/v1/vision/similarity",
        {"model": "tiny-dinov2", "image1": b64(picture(5)), "image2": b64(picture(6, size=(20, 60)))},
    )
    a, b = np.array(other["image1_features"]), np.array(other["image2_features"])
    cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert other["cosine_similarity"] == pytest.approx(cosine, abs=1e-5)
    assert other["similarity"] == pytest.approx((1 + cosine) / 2, abs=1e-5)
    assert 0.0 <= other["similarity"] <= 1.0
    assert other["dimensions"] == len(a)
