"""The tiny models load and behave through the libraries a real user would use.

Besides shapes and norms, every load is checked for logged library warnings: the models
are meant to be warning-free so the suite can run with ``-W error``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sentence_transformers import CrossEncoder, SentenceTransformer
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
)

from tests.tiny_models import BUILDERS, QWEN3_EMBED_QUERY_PROMPT, build_all

CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello world"},
    {"role": "assistant", "content": "Hello! How are you?"},
    {"role": "user", "content": "What is the capital of France?"},
]
CHAT_PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nHello world<|im_end|>\n"
    "<|im_start|>assistant\nHello! How are you?<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture(autouse=True)
def _no_library_warnings() -> Iterator[None]:
    """Fail a test whose body makes transformers / sentence-transformers log a warning.

    Their loggers do not propagate to the root logger, so caplog cannot see them; a
    handler on each library logger does. (Python ``warnings`` are already errors via
    the pytest ``filterwarnings`` setting.)
    """
    handler = _Collect()
    loggers = [logging.getLogger(name) for name in ("transformers", "sentence_transformers")]
    for logger in loggers:
        logger.addHandler(handler)
    yield
    for logger in loggers:
        logger.removeHandler(handler)
    if handler.messages:
        pytest.fail("library warnings logged:\n" + "\n".join(handler.messages))


@pytest.fixture
def image() -> Image.Image:
    """A non-square RGB image, so resize/crop both have work to do."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_build_all_is_complete_and_deterministic(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    built = build_all(tmp_path)
    assert list(built) == list(tiny_models) == list(BUILDERS)
    for name, folder in built.items():
        assert folder == tmp_path / name
        files = _files(folder)
        assert {"config.json", "model.safetensors"} <= set(files)
        # Seeded init and deterministic tokenizer training: a rebuild is byte-identical.
        assert files == _files(tiny_models[name]), name


@pytest.mark.parametrize("name", ["tiny-llama-chat", "tiny-qwen2-chat"])
def test_chat_model_generates(tiny_models: dict[str, Path], name: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[name])
    model = AutoModelForCausalLM.from_pretrained(tiny_models[name])
    prompt = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert prompt == CHAT_PROMPT
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token_id == im_end
    assert tokenizer.pad_token == "<|endoftext|>"
    assert model.generation_config.eos_token_id == im_end
    assert model.config.max_position_embeddings == 512

    inputs = tokenizer(prompt, return_tensors="pt")
    prompt_len = inputs.input_ids.shape[1]
    assert inputs.input_ids[0, 0].item() == tokenizer.convert_tokens_to_ids("<|im_start|>")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert prompt_len < output.shape[1] <= prompt_len + 4
    assert torch.equal(output[0, :prompt_len], inputs.input_ids[0])
    text = "The quick brown fox, café 2024!"
    assert tokenizer.decode(tokenizer(text).input_ids) == text


@pytest.mark.parametrize(("name", "dim"), [("tiny-bert-embed", 32), ("tiny-qwen3-embed", 64)])
def test_sentence_transformer_embeddings(tiny_models: dict[str, Path], name: str, dim: int) -> None:
    model = SentenceTransformer(str(tiny_models[name]), device="cpu")
    assert model.max_seq_length == 128
    assert model.get_embedding_dimension() == dim
    sentences = ["hello world", "a photo of a cat", "The capital of France is Paris."]
    embeddings = model.encode(sentences)
    assert embeddings.shape == (3, dim)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(embeddings[0], embeddings[1])
    # Padding must not change a sentence's embedding.
    np.testing.assert_allclose(model.encode(sentences[1]), embeddings[1], atol=1e-5)


def test_qwen3_embed_is_last_token_style(tiny_models: dict[str, Path]) -> None:
    model = SentenceTransformer(str(tiny_models["tiny-qwen3-embed"]), device="cpu")
    tokenizer = model.tokenizer
    assert tokenizer.padding_side == "left"
    ids = tokenizer(["hi", "a much longer sentence"], padding=True).input_ids
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert [row[-1] for row in ids] == [eos, eos]
    assert model.prompts["query"] == QWEN3_EMBED_QUERY_PROMPT
    query = model.encode_query("what is a tiny model?")
    plain = model.encode("what is a tiny model?")
    assert query.shape == plain.shape == (64,)
    assert not np.allclose(query, plain)


def test_bert_cross_encoder_scores(tiny_models: dict[str, Path]) -> None:
    model = CrossEncoder(str(tiny_models["tiny-bert-reranker"]), device="cpu")
    assert model.config.num_labels == 1
    assert model.max_seq_length == 128
    query = "what is the capital of france?"
    docs = ["The capital of France is Paris.", "The cat sleeps in the warm sun.", "Water boils."]
    scores = model.predict([(query, doc) for doc in docs])
    assert scores.shape == (3,)
    assert ((scores > 0) & (scores < 1)).all()  # sigmoid activation saved with the model
    ranking = model.rank(query, docs)
    assert sorted(r["corpus_id"] for r in ranking) == [0, 1, 2]
    assert [r["score"] for r in ranking] == sorted((r["score"] for r in ranking), reverse=True)


def test_qwen3_reranker_yes_no(tiny_models: dict[str, Path]) -> None:
    path = tiny_models["tiny-qwen3-reranker"]
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert tokenizer.padding_side == "left"
    for word in ("yes", "no", "<think>", "</think>", "<|im_start|>", "<|im_end|>"):
        token_id = tokenizer.convert_tokens_to_ids(word)
        assert token_id is not None
        assert token_id != tokenizer.unk_token_id
        assert tokenizer(word, add_special_tokens=False).input_ids == [token_id]
    yes_id = tokenizer.convert_tokens_to_ids("yes")
    no_id = tokenizer.convert_tokens_to_ids("no")

    prefix = (
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query "
        'and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
        "<|im_start|>user\n"
    )
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    pairs = [("what is a tiny model?", "A tiny model has very few parameters."), ("hi", "Paris.")]
    texts = [
        f"{prefix}<Instruct>: Given a web search query, retrieve relevant passages\n"
        f"<Query>: {q}\n<Document>: {d}{suffix}"
        for q, d in pairs
    ]
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert batch.attention_mask[:, -1].all()  # left padding: last position is real for every row
    with torch.no_grad():
        logits = model(**batch).logits[:, -1, :]
    assert logits.shape == (2, len(tokenizer))
    yes_no = torch.stack([logits[:, no_id], logits[:, yes_id]], dim=1)
    scores = yes_no.log_softmax(dim=-1)[:, 1].exp()
    assert scores.shape == (2,)
    assert ((scores > 0) & (scores < 1)).all()


@pytest.mark.parametrize(
    ("name", "processor_class"),
    [("tiny-vit", "ViTImageProcessorPil"), ("tiny-dinov2", "BitImageProcessorPil")],
)
def test_vision_model_pools_an_image(
    tiny_models: dict[str, Path], name: str, processor_class: str, image: Image.Image
) -> None:
    processor = AutoImageProcessor.from_pretrained(tiny_models[name])
    assert type(processor).__name__ == processor_class  # PIL backend: no torchvision needed
    pixel_values = processor(images=image, return_tensors="pt").pixel_values
    assert pixel_values.shape == (1, 3, 32, 32)
    model = AutoModel.from_pretrained(tiny_models[name])
    with torch.no_grad():
        outputs = model(pixel_values=pixel_values)
    assert outputs.pooler_output.shape == (1, 32)
    assert outputs.last_hidden_state.shape == (1, 1 + (32 // 8) ** 2, 32)


def test_clip_scores_image_against_texts(tiny_models: dict[str, Path], image: Image.Image) -> None:
    path = tiny_models["tiny-clip"]
    processor = CLIPProcessor.from_pretrained(path)
    assert isinstance(AutoProcessor.from_pretrained(path), CLIPProcessor)
    assert type(processor.image_processor).__name__ == "CLIPImageProcessorPil"
    model = CLIPModel.from_pretrained(path)
    texts = ["a photo of a cat", "a photo of a dog on a green hill"]
    inputs = processor(text=texts, images=image, return_tensors="pt", padding=True)
    assert inputs.pixel_values.shape == (1, 3, 32, 32)
    with torch.no_grad():
        outputs = model(**inputs)
    assert outputs.logits_per_image.shape == (1, 2)
    assert outputs.logits_per_text.shape == (2, 1)
    assert outputs.image_embeds.shape == (1, 16)
    assert outputs.text_embeds.shape == (2, 16)

    tokenizer = processor.tokenizer
    ids = tokenizer(texts[0]).input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids[1:-1]  # every byte has a vocab entry
    assert tokenizer.decode(ids, skip_special_tokens=True) == texts[0]
    # The vocab.json/merges.txt written beside tokenizer.json describe the same tokenizer.
    from_files = CLIPTokenizer(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"))
    assert from_files(texts[1]).input_ids == tokenizer(texts[1]).input_ids
