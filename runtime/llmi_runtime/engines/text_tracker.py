"""Generated ids to streamed text: deltas that always reassemble into the final text, with stop
strings cut exactly. Apart from the engine so it can be tested without a model."""

from __future__ import annotations

from typing import Any


class TextTracker:
    """Turns generated ids into text deltas that always reassemble into the final text.

    Decoding is incremental (a short window of recent ids, as vLLM and transformers' streamers
    do), so a long answer costs linear, not quadratic, time. Text that may still change (an
    incomplete UTF-8 sequence) or may be the start of a stop string is held back until settled.
    """

    def __init__(self, tokenizer: Any, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.longest_stop = max((len(s) for s in stop), default=0)
        # For each stop string, by character: the lengths n (longest first) of its proper prefixes
        # s[:n] that end in that character. Only those can be the held-back tail of the text, so
        # a token costs a few checks, not one per prefix length of every stop string.
        self._prefix_ends: list[dict[str, list[int]]] = []
        for s in stop:
            ends: dict[str, list[int]] = {}
            for n in range(len(s) - 1, 0, -1):
                ends.setdefault(s[n - 1], []).append(n)
            self._prefix_ends.append(ends)
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
        for s, ends in zip(self.stop, self._prefix_ends, strict=True):
            for n in ends.get(safe[-1:], ()):
                if n <= len(safe) and safe.endswith(s[:n]):
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
