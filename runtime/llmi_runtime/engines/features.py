"""Tokenized inputs as per-item rows, so items of several requests can be padded into one batch.

A tokenizer pads a request's texts to that request's longest; ``split`` cuts them back into
unpadded rows and ``collate`` pads rows of any requests into one batch again (on the side the
tokenizer pads, with its pad id). ``run_by_length`` sorts items by length before cutting
batches, as sentence-transformers' ``encode`` does, so short texts are not padded to long ones.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

O = TypeVar("O")  # noqa: E741 - a result
I = TypeVar("I")  # noqa: E741 - an item


@dataclass(frozen=True)
class Row:
    """One tokenized input: 1-D tensors of equal length, plus the batch's non-tensor entries
    (sentence-transformers' ``modality``), which rows must share to be batched together."""

    tensors: dict[str, torch.Tensor]
    extras: tuple[tuple[str, Hashable], ...] = ()

    def __len__(self) -> int:
        return int(next(iter(self.tensors.values())).shape[0])


def split(features: dict[str, Any], pad_left: bool) -> list[Row]:
    """Unpadded rows of a padded batch of features (attention_mask tells real tokens apart)."""
    mask = features["attention_mask"]
    tensors = {k: v for k, v in features.items() if isinstance(v, torch.Tensor)}
    extras = tuple(sorted((k, v) for k, v in features.items() if not isinstance(v, torch.Tensor)))
    rows = []
    width = int(mask.shape[1])
    for i, n in enumerate(mask.sum(dim=1).tolist()):
        span = slice(width - n, width) if pad_left else slice(0, n)
        rows.append(Row({k: v[i, span] for k, v in tensors.items()}, extras))
    return rows


def collate(rows: Sequence[Row], pad_id: int, pad_left: bool) -> dict[str, Any]:
    """One padded batch of rows (``input_ids`` padded with pad_id, everything else with 0)."""
    width = max(len(r) for r in rows)
    out: dict[str, Any] = dict(rows[0].extras)
    for key, first in rows[0].tensors.items():
        fill = pad_id if key == "input_ids" else 0
        batch = torch.full((len(rows), width), fill, dtype=first.dtype)
        for i, row in enumerate(rows):
            values = row.tensors[key]
            span = slice(width - len(values), width) if pad_left else slice(0, len(values))
            batch[i, span] = values
        out[key] = batch
    return out


def run_by_length(
    items: Sequence[I],
    size: int,
    run: Callable[[list[I]], Sequence[O]],
    length: Callable[[I], int] = len,  # type: ignore[assignment]
    group: Callable[[I], Hashable] = lambda _: None,
) -> list[O]:
    """``run`` over batches of at most ``size`` items of one group, longest first; results in input order."""
    order = sorted(range(len(items)), key=lambda i: (str(group(items[i])), -length(items[i])))
    results: list[O | None] = [None] * len(items)
    start = 0
    while start < len(order):
        key = group(items[order[start]])
        end = start
        while end < len(order) and end - start < size and group(items[order[end]]) == key:
            end += 1
        chunk = order[start:end]
        for i, result in zip(chunk, run([items[i] for i in chunk]), strict=True):
            results[i] = result
        start = end
    return results  # type: ignore[return-value]
