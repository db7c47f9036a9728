"""Chat and text completion with transformers: a token-at-a-time decode loop with a KV cache.

The loop is a generator, so the model worker can interleave several generations and stop one
the moment its client leaves. Sampling follows OpenAI's definitions (temperature, top_p,
presence/frequency penalties on generated tokens, logit_bias) so results match what clients
expect; temperature 0 is greedy and gives the same tokens as ``generate(do_sample=False)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from llmi.errors import BadRequest
from llmi.modeltypes import ModelType
from llmi_runtime.engines.base import LoadOptions, module_facts, place
from llmi_runtime.engines.sampling import Delta, SamplingParams

# Temperatures this small would overflow the softmax; they mean "greedy" (as in vLLM).
GREEDY_BELOW = 1e-5


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

    def token_budget(self, prompt_len: int, requested: int | None, default: int | None) -> int:
        """How many tokens may be generated; a request that cannot fit the context is a 400."""
        room = self.context_length - prompt_len
        if room <= 0:
            raise BadRequest(
                f"This model's maximum context length is {self.context_length} tokens; the prompt has {prompt_len}.",
                param="messages",
                code="context_length_exceeded",
            )
        if requested is None:
            return room if default is None else min(room, default)
        if requested > room:
            raise BadRequest(
                f"This model's maximum context length is {self.context_length} tokens; the prompt has "
                f"{prompt_len} and max_tokens asks for {requested}.",
                param="max_tokens",
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
            if not key.lstrip("-").isdigit() or not 0 <= int(key) < self.vocab_size:
                raise BadRequest(f"logit_bias key {key!r} is not a token id of this model.", param="logit_bias")
            out[int(key)] = value
        return out

    # -- generation ---------------------------------------------------------------------

    def generate(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[Delta]:
        """Yield one Delta per generated token (text may be empty while it is held back)."""
        generator = torch.Generator(device=self.device)
        if params.seed is not None:
            generator.manual_seed(params.seed % 2**64)
        else:
            generator.seed()
        counts = torch.zeros(self.vocab_size, device=self.device)
        bias = None
        if params.logit_bias:
            bias = torch.zeros(self.vocab_size, device=self.device)
            for token, value in params.logit_bias.items():
                bias[token] = value
        text = _TextTracker(self.tokenizer, params.stop)
        next_input = torch.tensor([prompt_ids], device=self.device)
        past: Any = None
        for step in range(1, params.max_tokens + 1):
            with torch.inference_mode():
                out = self.model(input_ids=next_input, **{self._cache_arg: past}, **self._step_kwargs)
            past = out[self._cache_arg]
            logits = out.logits[0, -1, : self.vocab_size].float()
            token = _pick(logits, params, counts, bias, generator)
            if token in self.eos_ids:
                yield Delta(text.flush(), step, "stop", token)
                return
            counts[token] += 1
            delta, stopped = text.add(token)
            if stopped:
                yield Delta(delta, step, "stop", token)
                return
            if step == params.max_tokens:
                yield Delta(delta + text.flush(), step, "length", token)
                return
            yield Delta(delta, step, None, token)
            next_input = torch.tensor([[token]], device=self.device)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False).input_ids)

    def info(self) -> dict[str, Any]:
        return {**module_facts(self.model, self.device, self.placement), "context_length": self.context_length}


def _pick(
    logits: torch.Tensor,
    p: SamplingParams,
    counts: torch.Tensor,
    bias: torch.Tensor | None,
    generator: torch.Generator,
) -> int:
    if bias is not None:
        logits = logits + bias
    if p.frequency_penalty or p.presence_penalty:
        logits = logits - p.frequency_penalty * counts - p.presence_penalty * (counts > 0).float()
    if p.temperature < GREEDY_BELOW:
        return int(torch.argmax(logits))
    logits = logits / p.temperature
    if p.top_k > 0 and p.top_k < logits.shape[-1]:
        kth = torch.topk(logits, p.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if p.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        drop = torch.cumsum(sorted_probs, dim=-1) - sorted_probs > p.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


class _TextTracker:
    """Turns generated ids into text deltas that always reassemble into the final text.

    Decoding is incremental (a short window of recent ids, as vLLM and transformers' streamers
    do), so a long answer costs linear, not quadratic, time. Text that may still change (an
    incomplete UTF-8 sequence) or may be the start of a stop string is held back until settled.
    """

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.longest_stop = max((len(s) for s in stop), default=0)
        self.ids: list[int] = []
        self.prefix_offset = 0  # ids[prefix_offset:read_offset] give context for the next piece
        self.read_offset = 0
        self.text = ""  # settled text decoded so far
        self.sent = ""  # what has been handed out (a prefix of text)

    def add(self, token: int) -> tuple[str, bool]:
        self.ids.append(token)
        self._decode_new()
        if self.stop:
            window_start = max(0, len(self.sent) - self.longest_stop)
            hits = [i for i in (self.text.find(s, window_start) for s in self.stop) if i >= 0]
            if hits:
                return self._advance(self.text[: min(hits)]), True
        safe = self.text
        for s in self.stop:
            for n in range(min(len(s) - 1, len(safe)), 0, -1):
                if safe.endswith(s[:n]):
                    safe = safe[:-n]
                    break
        return self._advance(safe), False

    def flush(self) -> str:
        """Everything not yet handed out, including a trailing incomplete character."""
        tail = self.tokenizer.decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        head = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        if len(tail) > len(head):
            self.text += tail[len(head) :]
            self.read_offset = len(self.ids)
        return self._advance(self.text)

    def _decode_new(self) -> None:
        head = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        tail = self.tokenizer.decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        if len(tail) > len(head) and not tail.endswith("\ufffd"):
            self.text += tail[len(head) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)

    def _advance(self, text: str) -> str:
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""
        delta = text[len(self.sent) :]
        self.sent = text
        return delta


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
