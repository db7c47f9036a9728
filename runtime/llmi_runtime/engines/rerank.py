"""Reranking in both common styles.

- Cross-encoders (``*ForSequenceClassification``) through sentence-transformers'
  ``CrossEncoder``: one logit, sigmoid, exactly as ``CrossEncoder.predict``.
- Causal-LM rerankers in the style of Qwen3-Reranker: the model judges "yes" or "no" after a
  fixed prompt; the score is softmax([no, yes]) of the next-token logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import CrossEncoder
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmi.catalog.classify import read_json
from llmi.modeltypes import ModelType
from llmi_runtime.engines.base import LoadOptions, module_facts, place
from llmi_runtime.engines.features import Row, collate, run_by_length, split

BATCH = 16
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
LLM_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
LLM_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def llm_rerank_text(query: str, document: str, instruction: str | None) -> str:
    return f"<Instruct>: {instruction or DEFAULT_INSTRUCTION}\n<Query>: {query}\n<Document>: {document}"


class PairScorer:
    """``score`` over an engine's ``prepare`` (tokenizing, off the model's thread) and ``forward``
    (the model's thread, batched across requests), which return (score, raw score) pairs."""

    batch_size = BATCH  # pairs per forward

    def prepare(self, query: str, documents: Sequence[str], instruction: str | None = None) -> list[Row]:
        raise NotImplementedError

    def forward(self, rows: list[Row]) -> list[tuple[float, float]]:
        raise NotImplementedError

    def score(
        self, query: str, documents: Sequence[str], instruction: str | None = None, raw: bool = False
    ) -> tuple[list[float], int]:
        """Relevance in [0, 1]; with ``raw``, the engine's raw score (TEI's raw_scores): the logit
        for "relevant" of a cross-encoder, logit(yes) - logit(no) of an LLM judge."""
        rows = self.prepare(query, documents, instruction)
        return [pair[1] if raw else pair[0] for pair in self.forward(rows)], sum(len(r) for r in rows)


class CrossEncoderEngine(PairScorer):
    model_type = ModelType.RERANKER
    style = "cross-encoder"

    def __init__(self, path: Path, options: LoadOptions) -> None:
        self.path = path
        self.device, self.placement = options.resolve()
        kwargs = options.from_pretrained_kwargs()
        kwargs.pop("local_files_only")
        trust = kwargs.pop("trust_remote_code")
        self.model = CrossEncoder(
            str(path),
            device=None if self.placement == "offload" else str(self.device),
            local_files_only=True,
            trust_remote_code=trust,
            model_kwargs=kwargs,
        )
        self.num_labels = int(self.model.num_labels)
        tokenizer = self.model.tokenizer
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.pad_left = getattr(tokenizer, "padding_side", "right") == "left"

    def prepare(self, query: str, documents: Sequence[str], instruction: str | None = None) -> list[Row]:
        """Tokenized (query, document) pairs, off the model's thread; a row's length is its token count."""
        rows: list[Row] = []
        for start in range(0, len(documents), BATCH):
            pairs = [(query, d) for d in documents[start : start + BATCH]]
            rows.extend(split(self.model.preprocess(pairs), self.pad_left))
        return rows

    def forward(self, rows: list[Row]) -> list[tuple[float, float]]:
        """(relevance, raw logit) of each row, rows of any requests batched by length (model thread)."""
        return run_by_length(rows, BATCH, self._forward_batch, group=lambda r: r.extras)

    def _forward_batch(self, rows: list[Row]) -> list[tuple[float, float]]:
        features = collate(rows, self.pad_id, self.pad_left)
        features = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        with torch.inference_mode():
            scores = self.model(features)["scores"].float()
        if self.num_labels == 1:  # one logit: sigmoid, as CrossEncoder.predict with activation_fn=Sigmoid
            logits = scores.reshape(-1)
            return list(zip(torch.sigmoid(logits).cpu().tolist(), logits.cpu().tolist(), strict=True))
        # Two or more labels: the last is "relevant".
        relevant = torch.softmax(scores, dim=-1)[:, -1]
        return list(zip(relevant.cpu().tolist(), scores[:, -1].cpu().tolist(), strict=True))

    def info(self) -> dict[str, Any]:
        return {**module_facts(self.model, self.device, self.placement), "style": self.style}


class CausalLMRerankEngine(PairScorer):
    model_type = ModelType.RERANKER
    style = "causal-lm-yes-no"

    def __init__(self, path: Path, options: LoadOptions, max_length: int = 8192) -> None:
        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=True, padding_side="left", trust_remote_code=options.trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(path, **options.from_pretrained_kwargs())
        self.model, self.device, self.placement = place(model, options)
        self.yes_id = _single_token(self.tokenizer, "yes")
        self.no_id = _single_token(self.tokenizer, "no")
        self.prefix = self.tokenizer(LLM_PREFIX, add_special_tokens=False).input_ids
        self.suffix = self.tokenizer(LLM_SUFFIX, add_special_tokens=False).input_ids
        limit = getattr(self.model.config, "max_position_embeddings", None) or max_length
        self.max_length = min(max_length, int(limit))
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.tokenizer.eos_token_id or 0)

    def prepare(self, query: str, documents: Sequence[str], instruction: str | None = None) -> list[Row]:
        """The judging prompt of each document, tokenized off the model's thread."""
        room = self.max_length - len(self.prefix) - len(self.suffix)
        texts = [llm_rerank_text(query, d, instruction) for d in documents]
        enc = self.tokenizer(
            texts,
            padding=False,
            truncation="longest_first",
            max_length=room,
            add_special_tokens=False,
            return_attention_mask=False,
        )
        rows = []
        for ids in enc["input_ids"]:
            row = torch.tensor(self.prefix + ids + self.suffix)
            rows.append(Row({"input_ids": row, "attention_mask": torch.ones_like(row)}))
        return rows

    def forward(self, rows: list[Row]) -> list[tuple[float, float]]:
        return run_by_length(rows, BATCH, self._forward_batch)

    def _forward_batch(self, rows: list[Row]) -> list[tuple[float, float]]:
        batch = {k: v.to(self.device) for k, v in collate(rows, self.pad_id, pad_left=True).items()}
        with torch.inference_mode():
            logits = self.model(**batch).logits[:, -1, :].float()
        pair = torch.stack([logits[:, self.no_id], logits[:, self.yes_id]], dim=1)
        relevant = torch.softmax(pair, dim=1)[:, 1]
        return list(zip(relevant.cpu().tolist(), (pair[:, 1] - pair[:, 0]).cpu().tolist(), strict=True))

    def info(self) -> dict[str, Any]:
        return {**module_facts(self.model, self.device, self.placement), "style": self.style}


def _single_token(tokenizer: Any, word: str) -> int:
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if len(ids) != 1:
        raise ValueError(f"this reranker's tokenizer does not encode {word!r} as one token")
    return int(ids[0])


def is_cross_encoder(path: Path) -> bool:
    config = read_json(path / "config.json")
    return any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or [])
