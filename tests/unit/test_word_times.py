"""repair_word_times: inside the segment, monotonic, no overlap, never zero-length."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from common.schemas import Segment, Word
from deployments.word_times import MIN_WORD_SECONDS, repair_word_times

EPS = 1e-3  # times are rounded to milliseconds


def check(words: list[Word], start: float, end: float, least: float) -> None:
    timed = [w for w in words if w.start is not None]
    previous = start
    for w in timed:
        assert w.start is not None and w.end is not None
        assert start - EPS <= w.start and w.end <= end + EPS, (w, start, end)
        assert w.start >= previous - EPS, "overlaps or goes back"
        assert w.end - w.start >= least - EPS, f"{w} shorter than {least}"
        previous = w.end


def test_zero_length_words_grow_into_silence_first() -> None:
    words = [
        Word(word="ask", start=1.0, end=1.3),
        Word(word="not", start=1.6, end=1.6),  # zero-length, silence on both sides
        Word(word="what", start=2.0, end=2.4),
    ]
    fixed = repair_word_times(words, 1.0, 2.4)
    check(fixed, 1.0, 2.4, MIN_WORD_SECONDS)
    assert (fixed[1].start, fixed[1].end) == (1.575, 1.625)  # centred on its frame
    assert fixed[0] == words[0] and fixed[2] == words[2]  # neighbours untouched
    assert words[1].start == words[1].end == 1.6  # the input is not modified


def test_adjacent_zero_length_words_take_time_from_neighbours() -> None:
    words = [
        Word(word="8", start=0.9, end=1.2),
        Word(word=".30,", start=1.2, end=1.2),
        Word(word="and", start=1.2, end=1.2),
        Word(word="about", start=1.2, end=1.6),
    ]
    fixed = repair_word_times(words, 0.9, 1.6)
    check(fixed, 0.9, 1.6, MIN_WORD_SECONDS)
    assert [w.word for w in fixed] == ["8", ".30,", "and", "about"]
    assert fixed[0].start == 0.9 and fixed[-1].end == 1.6


def test_words_are_clamped_into_their_segment_and_into_order() -> None:
    words = [
        Word(word="a", start=4.8, end=5.2),  # starts before the segment
        Word(word="b", start=5.9, end=5.5),  # ends before it starts
        Word(word="c", start=5.4, end=6.0),  # starts before the previous word
        Word(word="d", start=7.1, end=7.4),  # past the segment end
    ]
    fixed = repair_word_times(words, 5.0, 7.0)
    check(fixed, 5.0, 7.0, MIN_WORD_SECONDS)
    assert fixed[-1].end == 7.0


def test_a_short_segment_shares_its_length() -> None:
    words = [Word(word=w, start=0.5, end=0.5) for w in ["one", "two", "three", "four"]]
    fixed = repair_word_times(words, 0.5, 0.6)  # 0.1 s for four words: 25 ms each
    check(fixed, 0.5, 0.6, 0.025)
    assert fixed[0].start == 0.5 and fixed[-1].end == 0.6


def test_untimed_words_stay_untimed_and_keep_their_place() -> None:
    words = [Word(word="x", start=1.0, end=1.0), Word(word="%"), Word(word="y", start=1.0, end=1.2)]
    fixed = repair_word_times(words, 1.0, 1.2)
    assert [w.word for w in fixed] == ["x", "%", "y"]
    assert fixed[1].start is None and fixed[1].end is None
    check(fixed, 1.0, 1.2, MIN_WORD_SECONDS)


def test_zero_length_segment() -> None:
    fixed = repair_word_times([Word(word="x", start=3.0, end=3.2)], 2.0, 2.0)
    assert (fixed[0].start, fixed[0].end) == (2.0, 2.0)


@pytest.mark.parametrize("seed", range(40))
def test_random_word_times_always_come_out_usable(seed: int) -> None:
    rng = random.Random(seed)
    start = rng.uniform(0, 10)
    end = start + rng.uniform(0.05, 8)
    words = []
    for i in range(rng.randint(1, 30)):
        a = rng.uniform(start - 1, end + 1)
        b = a + rng.choice([0.0, 0.0, rng.uniform(-0.2, 0.6)])
        words.append(Word(word=f"w{i}", start=round(a, 3), end=round(b, 3)))
    words.sort(key=lambda w: w.start or 0.0)
    if seed % 3 == 0:
        rng.shuffle(words)  # out of order too
    fixed = repair_word_times(words, start, end)
    check(fixed, start, end, min(MIN_WORD_SECONDS, (end - start) / len(words)))


class _FakeWhisper:
    """Stands in for faster-whisper's WhisperModel: records what add_word_timestamps got and
    times each word as the library would, relative to the window."""

    def __init__(self, timings: list[tuple[str, float, float]]) -> None:
        self.timings = timings
        self.calls: list[Any] = []

    def feature_extractor(self, chunk: np.ndarray) -> np.ndarray:
        return np.zeros((80, chunk.size // 160 + 1), dtype=np.float32)

    def encode(self, features: np.ndarray) -> str:
        return "encoded"

    def add_word_timestamps(
        self, segments: list[list[dict[str, Any]]], *args: Any, **kw: Any
    ) -> float:
        self.calls.append((segments[0][0]["tokens"], args, kw))
        segments[0][0]["words"] = [
            {"word": w, "start": s, "end": e, "probability": 0.91234} for w, s, e in self.timings
        ]
        return 0.0


class _FakeTokenizer:
    eot = 100

    def encode(self, text: str) -> list[int]:
        return [len(word) for word in text.split()] + [self.eot]


def _options() -> Any:
    return type("Options", (), {"prepend_punctuations": "'", "append_punctuations": "."})()


def test_whisper_words_are_faster_whispers_own_mapped_into_the_segment() -> None:
    from deployments.word_times import whisper_words

    model = _FakeWhisper([("ask", 0.1, 0.4), (" ", 0.4, 0.4), ("not", 0.5, 0.5)])
    audio = np.zeros(16_000 * 10, dtype=np.float32)
    segment = Segment(start=2.0, end=3.0, text=" ask not")
    words = whisper_words(model, _options(), audio, segment, _FakeTokenizer(), last_speech=1.5)
    tokens, args, kw = model.calls[0]
    assert tokens == [3, 3]  # the segment's text, without end-of-text
    assert args[1] == "encoded" and args[2] == 100  # its window's encoding, content frames
    assert kw == {"last_speech_timestamp": 0.0}  # relative to the window (clamped at 0)
    assert [w.word for w in words] == ["ask", "not"]  # blank words dropped
    assert words[0].start == 2.1 and words[0].end == 2.4 and words[0].score == 0.912
    second = words[1]
    assert second.start is not None and second.end is not None
    assert second.end - second.start >= MIN_WORD_SECONDS - EPS  # repaired


def test_no_whisper_words_for_empty_or_over_long_segments() -> None:
    from deployments.word_times import whisper_words

    model = _FakeWhisper([("x", 0.0, 0.1)])
    audio = np.zeros(16_000 * 40, dtype=np.float32)
    for segment in (Segment(start=0, end=35, text="long"), Segment(start=1, end=2, text=" ")):
        assert whisper_words(model, _options(), audio, segment, _FakeTokenizer(), 0.0) == []
    assert not model.calls
