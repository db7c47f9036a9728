"""Streaming text: deltas reassemble into the final text; stop strings cut exactly."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from llmi_runtime.engines.chat import _TextTracker


class CharTokenizer:
    """Token i is chr(i); 0xFFFD-producing ids stand for incomplete UTF-8."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


def run(text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], bool, str]:
    tracker = _TextTracker(CharTokenizer(), stop)
    deltas = []
    for ch in text:
        delta, stopped = tracker.add(ord(ch))
        deltas.append(delta)
        if stopped:
            return deltas, True, tracker.sent
    deltas.append(tracker.flush())
    return deltas, False, tracker.sent


def test_deltas_reassemble() -> None:
    deltas, stopped, final = run("hello world")
    assert "".join(deltas) == "hello world" == final
    assert not stopped


def test_stop_string_is_cut_and_never_leaked() -> None:
    deltas, stopped, final = run("hello END more", stop=("END",))
    assert stopped
    assert "".join(deltas) == "hello " == final
    assert not any("E" in d for d in deltas)


def test_partial_stop_is_released_when_it_does_not_complete() -> None:
    deltas, stopped, _ = run("an ENd", stop=("END",))
    assert not stopped
    assert "".join(deltas) == "an ENd"


def test_incomplete_utf8_is_held_back() -> None:
    tracker = _TextTracker(CharTokenizer(), ())
    assert tracker.add(ord("a")) == ("a", False)
    assert tracker.add(0xFFFD) == ("", False)
    assert tracker.flush() == "\ufffd"


def test_incremental_decoding_matches_a_full_decode(tiny_models) -> None:  # type: ignore[no-untyped-def]
    """With a real byte-level tokenizer, random ids (broken UTF-8 included) reassemble exactly."""
    import random

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_models["tiny-qwen2-chat"])
    rng = random.Random(7)
    for _ in range(20):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randrange(1, 80))]
        tracker = _TextTracker(tok, ())
        pieces = [tracker.add(i)[0] for i in ids]
        pieces.append(tracker.flush())
        assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True)


def _held_back_by_every_prefix(text: str, stop: tuple[str, ...]) -> str:
    """The hold-back rule checked against every prefix length of every stop string (the old scan)."""
    safe = text
    for s in stop:
        for n in range(min(len(s) - 1, len(safe)), 0, -1):
            if safe.endswith(s[:n]):
                safe = safe[:-n]
                break
    return safe


@given(
    text=st.text(alphabet="abE", max_size=30),
    stop=st.lists(st.text(alphabet="abE", min_size=1, max_size=8), max_size=4).map(tuple),
)
@settings(max_examples=300, deadline=None, derandomize=True, database=None)
def test_the_indexed_hold_back_matches_the_scan_of_every_prefix(text: str, stop: tuple[str, ...]) -> None:
    """Sent text after each token: what the scan of every prefix length would have released."""
    tracker = _TextTracker(CharTokenizer(), stop)
    for ch in text:
        _, stopped = tracker.add(ord(ch))
        if stopped:
            return
        assert tracker.sent == _held_back_by_every_prefix(tracker.text, stop)
