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

BATCH = 16
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
LLM_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
LLM_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def llm_rerank_text(query: str, document: str, instruction: str | None) -> str:
    return f"<Instruct>: {instruction or DEFAULT_INSTRUCTION}\n<Query>: {query}\n<Document>: {document}"


class CrossEncoderEngine:
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

    def score(
        self, query: str, documents: Sequence[str], instruction: str | None = None, raw: bool = False
    ) -> tuple[list[float], int]:
        """Relevance in [0, 1]; with ``raw``, the model's logit for "relevant" (TEI's raw_scores)."""
        pairs = [(query, d) for d in documents]
        if self.num_labels == 1:
            activation = torch.nn.Identity() if raw else torch.nn.Sigmoid()
            scores = self.model.predict(pairs, batch_size=BATCH, activation_fn=activation)
            values = [float(s) for s in scores]
        else:  # two or more labels: the last one is "relevant"
            probs = self.model.predict(
                pairs, batch_size=BATCH, apply_softmax=not raw, activation_fn=torch.nn.Identity() if raw else None
            )
            values = [float(p[-1]) for p in probs]
        tokenizer = self.model.tokenizer
        counted = tokenizer(
            [query] * len(documents), list(documents), truncation=True, max_length=self.model.max_seq_length
        )
        return values, sum(len(ids) for ids in counted["input_ids"])

    def info(self) -> dict[str, Any]:
        return {**module_facts(self.model, self.device, self.placement), "style": self.style}


class CausalLMRerankEngine:
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

    def score(
        self, query: str, documents: Sequence[str], instruction: str | None = None, raw: bool = False
    ) -> tuple[list[float], int]:
        """softmax([no, yes]); with ``raw``, the log-odds logit(yes) - logit(no)."""
        scores: list[float] = []
        tokens = 0
        room = self.max_length - len(self.prefix) - len(self.suffix)
        for start in range(0, len(documents), BATCH):
            texts = [llm_rerank_text(query, d, instruction) for d in documents[start : start + BATCH]]
            enc = self.tokenizer(
                texts,
                padding=False,
                truncation="longest_first",
                max_length=room,
                add_special_tokens=False,
                return_attention_mask=False,
            )
            rows = [self.prefix + ids + self.suffix for ids in enc["input_ids"]]
            tokens += sum(len(r) for r in rows)
            batch = self.tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="pt")
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with torch.inference_mode():
                logits = self.model(**batch).logits[:, -1, :].float()
            pair = torch.stack([logits[:, self.no_id], logits[:, self.yes_id]], dim=1)
            picked = pair[:, 1] - pair[:, 0] if raw else torch.softmax(pair, dim=1)[:, 1]
            scores.extend(picked.cpu().tolist())
        return scores, tokens

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
