"""Tiny random-weight Hugging Face models for offline tests.

Every model is built from scratch and written with transformers' own ``save_pretrained``
(and sentence-transformers' ``save_pretrained`` for the models that library consumes), so
each folder has the layout of a hub download without any network access. Weights are
random but seeded per model, so builds are reproducible; the whole set builds in ~1-2 s.

Loading image processors without torchvision (transformers 5 has two backends per image
processor: ``XImageProcessor`` needs torchvision, ``XImageProcessorPil`` uses PIL/numpy).
``preprocessor_config.json`` only records the base name (``ViTImageProcessor``, ...);
``AutoImageProcessor`` picks the torchvision class when torchvision is importable and
otherwise the ``*Pil`` class, silently. So, with no torchvision installed:

- ``tiny-vit``: ``AutoImageProcessor.from_pretrained(d)`` -> ``ViTImageProcessorPil``.
- ``tiny-dinov2``: ``AutoImageProcessor.from_pretrained(d)`` -> ``BitImageProcessorPil``.
- ``tiny-clip``: ``CLIPProcessor.from_pretrained(d)`` or ``AutoProcessor.from_pretrained(d)``
  -> ``CLIPImageProcessorPil`` + ``CLIPTokenizer`` (``AutoImageProcessor`` works as well).
- Add ``backend="pil"`` to any of these to get the PIL class even where torchvision is
  installed; ``ViTImageProcessorPil.from_pretrained(d)`` etc. also work directly.
- Avoid ``use_fast=False``: deprecated in transformers 5 (logs a warning; ``backend="pil"``
  replaces it). ``from transformers import ViTImageProcessor`` without torchvision returns the
  Pil class but logs a fallback warning.

Everything else loads with the usual calls: ``AutoModelForCausalLM`` + ``AutoTokenizer``
(chat models, qwen3 reranker), ``SentenceTransformer(d)`` (embedders), ``CrossEncoder(d)``
(bert reranker), ``AutoModel`` (vit, dinov2) and ``CLIPModel``.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
from tokenizers.models import BPE
from tokenizers.processors import TemplateProcessing
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    BertTokenizerFast,
    BitImageProcessorPil,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizerFast,
    Dinov2Config,
    Dinov2Model,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
    ViTConfig,
    ViTImageProcessorPil,
    ViTModel,
)
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
THINK_TOKENS = ("<think>", "</think>")
MAX_POSITIONS = 512
ST_MAX_SEQ_LENGTH = 128
SEED = 0
QWEN3_EMBED_QUERY_PROMPT = (
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"
)

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# A small English corpus; the lines that start with "yes"/"no" make byte-level BPE learn
# those words as single tokens (the Qwen3 reranker scores exactly these two tokens).
CORPUS = """\
The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.
A language model reads text and predicts the next word one token at a time.
Hello world, this is a small test of the tokenizer and the model server.
yes, the answer is yes because the document is relevant to the query.
no, the answer is no because the document does not match the question.
yes it is. no it is not. yes or no? yes and no.
no problem, I can help with that. no, thank you.
yes, please. no, never. yes, always.
What is the capital of France? The capital of France is Paris.
What is the weather like today? It is sunny and warm with a light wind.
Please summarize the following passage in one short sentence for the user.
The system prompt tells the assistant how to behave and what to answer.
You are a helpful assistant that answers questions about science and history.
Water boils at one hundred degrees and freezes at zero degrees at sea level.
The library has many books about mathematics, physics, chemistry and biology.
Machine learning models learn patterns from data and make predictions on new data.
An embedding maps a sentence to a vector so similar sentences have similar vectors.
A reranker scores each document against a query and sorts them by relevance.
Images are split into small patches and each patch becomes a token for the vision model.
A photo of a cat. A photo of a dog. A picture of a red car on a green hill.
The server exposes an API for chat completions, embeddings and image features.
Numbers like 1 2 3 4 5 6 7 8 9 10 and 2024 appear in dates and prices.
She said that the meeting starts at nine in the morning and ends at noon.
They walked along the river, talked about music, and watched the boats go by.
Good morning! How are you? I am fine, thank you. Have a nice day.
The user asks, the assistant thinks, and then the assistant writes an answer.
Instruct: Given a web search query, retrieve relevant passages that answer the query.
Query: what is a tiny model? Document: a tiny model has very few parameters.
Judge whether the document meets the requirements based on the query and the instruct.
"""


def _corpus_lines() -> Iterator[str]:
    """Repeat the corpus so BPE sees frequent pairs; order is fixed for determinism."""
    lines = [line for line in CORPUS.splitlines() if line]
    for _ in range(4):
        yield from lines


def _corpus_words() -> list[str]:
    """Lower-cased words of the corpus, in first-seen order (WordPiece vocab)."""
    words: dict[str, None] = {}
    for raw in CORPUS.lower().split():
        word = "".join(ch for ch in raw if ch.isalnum())
        if word:
            words.setdefault(word, None)
    return list(words)


# --------------------------------------------------------------------------- tokenizers


def make_chatml_tokenizer(
    *,
    vocab_size: int = 512,
    padding_side: str = "right",
    extra_tokens: tuple[str, ...] = (),
    append_eos: bool = False,
) -> PreTrainedTokenizerFast:
    """Byte-level BPE with Qwen-style ChatML special tokens, trained on CORPUS.

    ``<|im_end|>`` is the eos and ``<|endoftext|>`` the pad token, as in Qwen2/Qwen3.
    ``append_eos`` appends ``<|endoftext|>`` to every encoding, as Qwen3-Embedding does,
    so last-token pooling always lands on the same token.
    """
    tok = Tokenizer(BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[ENDOFTEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(), trainer)
    for word in ("yes", "no"):
        # Rerankers read the logits of these exact tokens; guarantee one id each.
        if tok.token_to_id(word) is None or len(tok.encode(word).ids) != 1:
            tok.add_tokens([AddedToken(word, single_word=True, normalized=False)])
    if extra_tokens:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in extra_tokens])
    if append_eos:
        eos_id = tok.token_to_id(ENDOFTEXT)
        tok.post_processor = TemplateProcessing(
            single=f"$A {ENDOFTEXT}",
            pair=f"$A {ENDOFTEXT} $B {ENDOFTEXT}",
            special_tokens=[(ENDOFTEXT, eos_id)],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        chat_template=CHATML_TEMPLATE,
        padding_side=padding_side,
        model_max_length=MAX_POSITIONS,
    )


def make_wordpiece_tokenizer() -> BertTokenizerFast:
    """Uncased BERT WordPiece tokenizer whose vocab is the specials, characters and CORPUS words."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789") + list(".,!?;:'\"()-/")
    vocab: dict[str, int] = {}
    for token in [*specials, *chars, *(f"##{c}" for c in chars), *_corpus_words()]:
        vocab.setdefault(token, len(vocab))
    return BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=MAX_POSITIONS)


def _write_wordpiece_vocab(out: Path, tokenizer: BertTokenizerFast) -> None:
    """Write ``vocab.txt`` beside tokenizer.json (transformers 5 no longer does), as hub BERTs ship it."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    (out / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab), encoding="utf-8")


def _apply_merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if symbols[i : i + 2] == pair:
            merged.append(pair[0] + pair[1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return tuple(merged)


def _learn_bpe_merges(word_counts: Counter[str], max_merges: int, suffix: str) -> list[tuple[str, str]]:
    """Textbook BPE with a total tie-break (count, then pair text).

    Used for CLIP instead of ``tokenizers``' trainer: with ``end_of_word_suffix`` that trainer
    numbers the suffixed symbols in hash-map order, so equal-count merges (and thus the
    vocab) change from process to process.
    """
    words = {(*word[:-1], word[-1] + suffix): count for word, count in word_counts.items()}
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in words.items():
            for pair in itertools.pairwise(symbols):
                pairs[pair] += count
        best = min(pairs, key=lambda pair: (-pairs[pair], pair), default=None)
        if best is None or pairs[best] < 2:
            break
        merges.append(best)
        words = {_apply_merge(symbols, best): count for symbols, count in words.items()}
    return merges


def make_clip_tokenizer() -> CLIPTokenizerFast:
    """CLIP tokenizer with a vocab learned on CORPUS, laid out like the real CLIP vocab.

    Words are split exactly as CLIPTokenizer does (its own normalizer and pre-tokenizer),
    merges carry CLIP's ``</w>`` end-of-word suffix, and the vocab holds every byte symbol
    bare and with ``</w>`` (so nothing maps to unk), then the merges, then the specials.
    """
    pipeline = CLIPTokenizerFast().backend_tokenizer
    word_counts: Counter[str] = Counter()
    for line in _corpus_lines():
        normalized = pipeline.normalizer.normalize_str(line)
        word_counts.update(word for word, _ in pipeline.pre_tokenizer.pre_tokenize_str(normalized))
    merges = _learn_bpe_merges(word_counts, max_merges=300, suffix="</w>")
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = [*symbols, *(f"{s}</w>" for s in symbols), *(a + b for a, b in merges)]
    vocab: dict[str, int] = {}
    for token in [*tokens, "<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizerFast(vocab=vocab, merges=merges, model_max_length=77)


def _write_clip_vocab_merges(out: Path, tokenizer: CLIPTokenizerFast) -> None:
    """Write ``vocab.json``/``merges.txt`` (transformers 5 only saves tokenizer.json), like hub CLIPs."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    (out / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{m}\n" for m in merges), encoding="utf-8")


# --------------------------------------------------------------------------- helpers


def _chatml_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """Token ids to write into model and generation configs (no default-id warnings)."""
    return {
        "bos_token_id": tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        "eos_token_id": tokenizer.convert_tokens_to_ids(IM_END),
        "pad_token_id": tokenizer.convert_tokens_to_ids(ENDOFTEXT),
    }


def _decoder_kwargs(vocab_size: int) -> dict[str, Any]:
    """Shared tiny shapes for Llama/Qwen-style decoders (GQA: 4 query, 2 kv heads)."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": MAX_POSITIONS,
        "tie_word_embeddings": True,
    }


def _init(model_cls: type[PreTrainedModel], config: PretrainedConfig, **kwargs: Any) -> PreTrainedModel:
    """Seeded random init in eval mode, so every build yields identical weights."""
    torch.manual_seed(SEED)
    return model_cls(config, **kwargs).eval()


def _save_causal_lm(out: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, ids: dict[str, int]) -> Path:
    """Save with a generation_config that stops at ``<|im_end|>`` and names the pad id."""
    model.generation_config = GenerationConfig(**ids)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _bert_config(vocab_size: int, **kwargs: Any) -> BertConfig:
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS,
        pad_token_id=0,
        **kwargs,
    )


# --------------------------------------------------------------------------- builders


def build_llama_chat(out: Path) -> Path:
    """LlamaForCausalLM chat model with a ChatML template; eos is ``<|im_end|>``."""
    tokenizer = make_chatml_tokenizer()
    ids = _chatml_ids(tokenizer)
    config = LlamaConfig(**_decoder_kwargs(len(tokenizer)), **ids)
    return _save_causal_lm(out, _init(LlamaForCausalLM, config), tokenizer, ids)


def build_qwen2_chat(out: Path) -> Path:
    """Qwen2ForCausalLM chat model with the same ChatML tokenizer."""
    tokenizer = make_chatml_tokenizer()
    ids = _chatml_ids(tokenizer)
    config = Qwen2Config(**_decoder_kwargs(len(tokenizer)), **ids)
    return _save_causal_lm(out, _init(Qwen2ForCausalLM, config), tokenizer, ids)


def build_qwen3_reranker(out: Path) -> Path:
    """Qwen3-Reranker style: a causal LM scored on the logits of single tokens "yes"/"no"."""
    tokenizer = make_chatml_tokenizer(padding_side="left", extra_tokens=THINK_TOKENS)
    ids = _chatml_ids(tokenizer)
    config = Qwen3Config(**_decoder_kwargs(len(tokenizer)), head_dim=16, **ids)
    return _save_causal_lm(out, _init(Qwen3ForCausalLM, config), tokenizer, ids)


def _finish_sentence_transformers_dir(out: Path, tokenizer: PreTrainedTokenizerFast, max_seq_length: int) -> None:
    """Post-process a folder written by sentence-transformers so it reads like a hub model.

    sentence-transformers 6 stores the max length only as the tokenizer's
    ``model_max_length`` and leaks load-time kwargs (``local_files_only``, ``is_local``)
    into ``tokenizer_config.json``; re-saving the pristine tokenizer fixes the latter, and
    the legacy ``max_seq_length`` key (read by every version, incl. 6) keeps the former.
    """
    tokenizer.model_max_length = max_seq_length
    tokenizer.save_pretrained(out)
    config_path = out / "sentence_bert_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({"max_seq_length": max_seq_length, **config}, indent=4) + "\n")


def _save_sentence_transformer(
    out: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    pooling_mode: str,
    **st_kwargs: Any,
) -> Path:
    """Wrap a backbone in Transformer -> Pooling -> Normalize and save it as sentence-transformers does."""
    # Imported lazily: the chat and vision builders do not need sentence-transformers.
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    with tempfile.TemporaryDirectory() as stage:
        # The Transformer module only loads from a path, so stage the HF files first.
        model.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        transformer = Transformer(stage, max_seq_length=ST_MAX_SEQ_LENGTH)
        pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling_mode)
        st_model = SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu", **st_kwargs)
        out.mkdir(parents=True, exist_ok=True)
        st_model.save_pretrained(str(out), create_model_card=False)
    _finish_sentence_transformers_dir(out, tokenizer, ST_MAX_SEQ_LENGTH)
    return out


def build_bert_embed(out: Path) -> Path:
    """BERT sentence embedder: mean pooling then L2 normalisation (all-MiniLM style)."""
    tokenizer = make_wordpiece_tokenizer()
    model = _init(BertModel, _bert_config(len(tokenizer)))
    _save_sentence_transformer(out, model, tokenizer, "mean")
    _write_wordpiece_vocab(out, tokenizer)
    return out


def build_qwen3_embed(out: Path) -> Path:
    """Qwen3-Embedding style: Qwen3Model, left padding, eos appended, last-token pooling."""
    tokenizer = make_chatml_tokenizer(padding_side="left", append_eos=True)
    config = Qwen3Config(**_decoder_kwargs(len(tokenizer)), head_dim=16, **_chatml_ids(tokenizer))
    prompts = {"query": QWEN3_EMBED_QUERY_PROMPT, "document": ""}
    return _save_sentence_transformer(out, _init(Qwen3Model, config), tokenizer, "lasttoken", prompts=prompts)


def build_bert_reranker(out: Path) -> Path:
    """BERT cross-encoder with one relevance logit, saved through CrossEncoder."""
    from sentence_transformers import CrossEncoder

    tokenizer = make_wordpiece_tokenizer()
    model = _init(BertForSequenceClassification, _bert_config(len(tokenizer), num_labels=1))
    with tempfile.TemporaryDirectory() as stage:
        model.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        cross_encoder = CrossEncoder(stage, device="cpu", max_length=ST_MAX_SEQ_LENGTH)
        out.mkdir(parents=True, exist_ok=True)
        cross_encoder.save_pretrained(str(out), create_model_card=False)
    _finish_sentence_transformers_dir(out, tokenizer, ST_MAX_SEQ_LENGTH)
    _write_wordpiece_vocab(out, tokenizer)
    return out


def build_vit(out: Path) -> Path:
    """ViTModel with its pooler (tanh over CLS) and a PIL-backend 32x32 image processor."""
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    out.mkdir(parents=True, exist_ok=True)
    _init(ViTModel, config, add_pooling_layer=True).save_pretrained(out)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def build_dinov2(out: Path) -> Path:
    """Dinov2Model with the BitImageProcessor DINOv2 checkpoints use (resize 32, crop 32)."""
    config = Dinov2Config(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2
    )
    out.mkdir(parents=True, exist_ok=True)
    _init(Dinov2Model, config).save_pretrained(out)
    BitImageProcessorPil(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        do_center_crop=True,
        do_convert_rgb=True,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
    ).save_pretrained(out)
    return out


def build_clip(out: Path) -> Path:
    """CLIPModel with tiny towers (projection 16) and a CLIPProcessor (PIL images + BPE text)."""
    tokenizer = make_clip_tokenizer()
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    text_config = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        **special,
    }
    vision_config = {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=16)
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    out.mkdir(parents=True, exist_ok=True)
    _init(CLIPModel, config).save_pretrained(out)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
    _write_clip_vocab_merges(out, tokenizer)
    return out


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "tiny-llama-chat": build_llama_chat,
    "tiny-qwen2-chat": build_qwen2_chat,
    "tiny-bert-embed": build_bert_embed,
    "tiny-qwen3-embed": build_qwen3_embed,
    "tiny-bert-reranker": build_bert_reranker,
    "tiny-qwen3-reranker": build_qwen3_reranker,
    "tiny-vit": build_vit,
    "tiny-dinov2": build_dinov2,
    "tiny-clip": build_clip,
}


def build_all(root: Path) -> dict[str, Path]:
    """Build every tiny model under root; return {name: folder}."""
    return {name: build(Path(root) / name) for name, build in BUILDERS.items()}


if __name__ == "__main__":
    import sys
    import time

    start = time.perf_counter()
    built = build_all(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-models"))
    for name, path in built.items():
        print(f"{name}: {path}")
    print(f"built {len(built)} models in {time.perf_counter() - start:.1f}s")


# The type each tiny model must be classified as (tests of the catalog use it).
TINY_TYPES = {
    "tiny-llama-chat": "chat",
    "tiny-qwen2-chat": "chat",
    "tiny-bert-embed": "embedding",
    "tiny-qwen3-embed": "embedding",
    "tiny-bert-reranker": "reranker",
    "tiny-qwen3-reranker": "reranker",
    "tiny-vit": "vision",
    "tiny-dinov2": "vision",
    "tiny-clip": "multimodal",
}
