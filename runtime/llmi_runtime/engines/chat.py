"""Chat and text completion with transformers, continuously batched (engines/continuous.py).

Each generation is a generator, so the model worker can step several at once (one batched
forward per round) and stop one the moment its client leaves. Sampling follows OpenAI's
definitions (temperature, top_p, presence/frequency penalties on generated tokens, logit_bias)
so results match what clients expect; temperature 0 is greedy and gives the same tokens as
``generate(do_sample=False)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from llmi.errors import BadRequest
from llmi.limits import token_id
from llmi.modeltypes import ModelType
from llmi_runtime.engines.base import LoadOptions, module_facts, place
from llmi_runtime.engines.continuous import ContinuousBatcher
from llmi_runtime.engines.sampling import Delta, SamplingParams
from llmi_runtime.engines.text_tracker import TextTracker as _TextTracker
from llmi_runtime.worker import Pass

__all__ = ["ChatEngine", "Delta", "SamplingParams", "_TextTracker"]


class ChatEngine:
    model_type = ModelType.CHAT

    def __init__(self, path: Path, options: LoadOptions, max_model_len: int | None = None) -> None:
        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=options.trust_remote_code
        )
        model = AutoModelForCausalLM.from_pretrained(path, **options.from_pretrained_kwargs())
        self.model, self.device, self.placement = place(model, options)
        self.generation_config = _generation_config(path)
        config = self.model.config
        limits = [getattr(config, "max_position_embeddings", None), max_model_len]
        self.context_length = min(int(x) for x in limits if x) if any(limits) else 4096
        self.vocab_size = int(self.model.get_output_embeddings().weight.shape[0])
        self.eos_ids = _eos_ids(self.generation_config, self.tokenizer)
        # transformers renamed past_key_values to cache (5.x); speak whichever this one knows.
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._step_kwargs: dict[str, Any] = {"use_cache": True}
        if "logits_to_keep" in params:
            self._step_kwargs["logits_to_keep"] = 1  # only the last position's logits are needed
        self.batcher = ContinuousBatcher(
            self.model, self.device, self.vocab_size, self.eos_ids, self.tokenizer, self._cache_arg, self._step_kwargs
        )

    # -- prompts ------------------------------------------------------------------------

    def chat_prompt(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """Token ids of the conversation with the model's chat template and a generation prompt."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise BadRequest(
                "This model has no chat template; use /v1/completions with a plain prompt.",
                param="messages",
            )
        try:
            text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja raise_exception(), e.g. roles must alternate
            raise BadRequest(f"The model's chat template rejected the messages: {exc}", param="messages") from None
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def text_prompt(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            ids = list(self.tokenizer(prompt).input_ids)
            if not ids:  # a tokenizer without a BOS token makes nothing of ""
                raise BadRequest("The prompt is empty: give at least one token of text.", param="prompt")
            return ids
        ids = list(prompt)
        if max(ids) >= self.vocab_size:
            raise BadRequest(f"Token id {max(ids)} is outside the vocabulary ({self.vocab_size}).", param="prompt")
        return ids

    def token_budget(
        self,
        prompt_len: int,
        requested: int | None,
        default: int | None,
        names: tuple[str, str] = ("messages", "max_tokens"),
    ) -> int:
        """How many tokens may be generated; a request that cannot fit the context is a 400 whose
        ``param`` is the prompt's or the limit's field, as ``names`` calls them in this API."""
        room = self.context_length - prompt_len
        if room <= 0:
            raise BadRequest(
                f"This model's maximum context length is {self.context_length} tokens; the prompt has {prompt_len} "
                f"tokens, which leaves none to generate. Shorten {names[0]}.",
                param=names[0],
                code="context_length_exceeded",
            )
        if requested is None:
            return room if default is None else min(room, default)
        if requested > room:
            raise BadRequest(
                f"This model's maximum context length is {self.context_length} tokens; the prompt has "
                f"{prompt_len} tokens and {names[1]} asks for {requested} more; at most {room} fit.",
                param=names[1],
                code="context_length_exceeded",
            )
        return requested

    def defaults(self) -> dict[str, float | int]:
        """Sampling defaults from the model's generation_config, as vLLM does."""
        g = self.generation_config
        out: dict[str, float | int] = {}
        if g is not None and g.do_sample:
            for name in ("temperature", "top_p", "top_k"):
                value = getattr(g, name, None)
                if value is not None:
                    out[name] = value
        return out

    def check_logit_bias(self, bias: dict[str, float] | None) -> dict[int, float]:
        out: dict[int, float] = {}
        for key, value in (bias or {}).items():
            token = token_id(key)  # a 400, never int()'s ValueError, for "²" or 5000 digits
            if token >= self.vocab_size:
                raise BadRequest(f"logit_bias key {key!r} is not a token id of this model.", param="logit_bias")
            out[token] = value
        return out

    # -- generation ---------------------------------------------------------------------

    def stream(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[Delta | Pass]:
        """For the ModelWorker: one Delta per generated token (text may be empty while it is held
        back), after a ``PASS`` that joins the batch; the generation shares forward passes with
        every other one running on this engine."""
        return self.batcher.stream(prompt_ids, params)

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[Delta]:
        """``stream`` without its ``PASS``, for a caller that steps generations itself."""
        inner = self.batcher.stream(prompt_ids, params)
        try:
            for item in inner:
                if not isinstance(item, Pass):
                    yield item
        finally:
            inner.close()  # closing this one takes the generation out of the batch at once

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def info(self) -> dict[str, Any]:
        return {**module_facts(self.model, self.device, self.placement), "context_length": self.context_length}


def _generation_config(path: Path) -> GenerationConfig | None:
    try:
        return GenerationConfig.from_pretrained(path, local_files_only=True)
    except OSError:
        return None


def _eos_ids(generation_config: GenerationConfig | None, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    eos = generation_config.eos_token_id if generation_config is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list):
        ids.update(int(x) for x in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
