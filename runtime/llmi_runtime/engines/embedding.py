"""Text embeddings through sentence-transformers, so each model's own pooling and
normalisation configs (mean, CLS, last-token, Normalize) are honoured exactly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer

from llmi.errors import BadRequest
from llmi.modeltypes import ModelType
from llmi_runtime.engines.base import LoadOptions, module_facts
from llmi_runtime.engines.features import Row, collate, run_by_length, split

BATCH = 32


class EmbeddingEngine:
    model_type = ModelType.EMBEDDING
    batch_size = BATCH  # texts per forward

    def __init__(self, path: Path, options: LoadOptions) -> None:
        self.path = path
        self.device, self.placement = options.resolve()
        kwargs = options.from_pretrained_kwargs()
        kwargs.pop("local_files_only")
        trust = kwargs.pop("trust_remote_code")
        self.model = SentenceTransformer(
            str(path),
            device=None if self.placement == "offload" else str(self.device),
            local_files_only=True,
            trust_remote_code=trust,
            model_kwargs=kwargs,
        )
        self.model.eval()
        self.dimensions = int(self.model.get_embedding_dimension() or 0)
        self.max_seq_length = int(self.model.max_seq_length or 512)
        tokenizer = self.model.tokenizer
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
        self.pad_left = getattr(tokenizer, "padding_side", "right") == "left"
        self.vocab_size = len(tokenizer)

    def embed(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> tuple[torch.Tensor, int]:
        """Embeddings (float32, CPU) in input order, and the number of tokens used."""
        rows = self.prepare(inputs)
        return torch.stack(self.forward(rows)), sum(len(r) for r in rows)

    def prepare(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> list[Row]:
        """Tokenized rows (off the model's thread); each row's length is its token count."""
        rows: list[Row] = []
        for start in range(0, len(inputs), BATCH):
            batch = inputs[start : start + BATCH]
            if isinstance(batch[0], str):
                features = self.model.preprocess(list(batch))  # type: ignore[arg-type]
            else:
                features = self._features_from_ids(batch)  # type: ignore[arg-type]
            rows.extend(split(features, self.pad_left))
        return rows

    def forward(self, rows: list[Row]) -> list[torch.Tensor]:
        """One embedding per row, rows of any requests batched by length (on the model's thread)."""
        return run_by_length(rows, BATCH, self._forward_batch, group=lambda r: r.extras)

    def _forward_batch(self, rows: list[Row]) -> list[torch.Tensor]:
        features = collate(rows, self.pad_id, self.pad_left)
        features = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
        with torch.inference_mode():
            emb = self.model(features)["sentence_embedding"]
        return list(emb.float().cpu())

    def _features_from_ids(self, batch: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Pre-tokenized input, truncated and padded the way the tokenizer would."""
        rows = [list(ids)[: self.max_seq_length] for ids in batch]
        too_big = max(max(r) for r in rows)
        if too_big >= self.vocab_size:
            raise BadRequest(f"Token id {too_big} is outside the vocabulary ({self.vocab_size}).", param="input")
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            span = slice(width - len(r), width) if self.pad_left else slice(0, len(r))
            ids[i, span] = torch.tensor(r)
            mask[i, span] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def info(self) -> dict[str, Any]:
        return {
            **module_facts(self.model, self.device, self.placement),
            "dimensions": self.dimensions,
            "max_seq_length": self.max_seq_length,
        }
