"""Word times: Whisper's own, and usable ones (inside their segment, in order, never zero-length).

Whisper's word times are faster-whisper's: :func:`whisper_words` hands a segment's window
and text to ``WhisperModel.add_word_timestamps`` (cross-attention DTW over the alignment
heads, punctuation merging, its boundary heuristics) and only maps the result into the
segment. whisperx's batched decode has no word timestamps of its own, and a given
transcript (``/service/align``) has no decode at all, so the window is encoded here.

Both word-time sources leave defects: Whisper's cross-attention DTW gives words that share
one 20 ms frame ``start == end`` and may run past the window; wav2vec2 alignment gives a
word with no alignable character (a number, a symbol) its neighbour's start and end after
interpolation. :func:`repair_word_times` is applied to every segment's words after either.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from common.schemas import Segment, Word
from deployments.audio import SAMPLE_RATE

logger = logging.getLogger(__name__)

MAX_WINDOW_SAMPLES = 30 * SAMPLE_RATE
"""Whisper's encoder window: a longer segment gets no Whisper word times."""

MIN_WORD_SECONDS = 0.05
"""Shortest word duration given (less when the segment is too short for all its words)."""


def repair_word_times(
    words: list[Word], start: float, end: float, min_duration: float = MIN_WORD_SECONDS
) -> list[Word]:
    """Copies of ``words`` with times clamped to ``[start, end]``, monotonic, not overlapping,
    each at least ``min_duration`` long (or the segment's share per word, if smaller).

    A short word first grows into the silence around it (up to its neighbours' bounds), then
    takes the time it still needs from its neighbours. Words without times stay untimed.
    """
    out = [w.model_copy() for w in words]
    timed = [w for w in out if w.start is not None and w.end is not None]
    if not timed or end <= start:  # a zero-length segment has no room: its start for all
        for w in timed:
            w.start = w.end = round(start, 3)
        return out
    least = min(min_duration, (end - start) / len(timed))
    # clamp into the segment and into order (a word never starts before the previous one)
    floor = start
    for w in timed:
        assert w.start is not None and w.end is not None
        w.start = min(max(w.start, floor, start), end)
        w.end = min(max(w.end, w.start), end)
        floor = w.start
    # grow short words into the gaps around them
    for i, w in enumerate(timed):
        assert w.start is not None and w.end is not None
        missing = least - (w.end - w.start)
        if missing <= 0:
            continue
        left = timed[i - 1].end if i > 0 else start
        right = timed[i + 1].start if i + 1 < len(timed) else end
        assert left is not None and right is not None
        before = max(0.0, min(missing / 2, w.start - left))
        after = max(0.0, min(missing - before, right - w.end))
        before = max(0.0, min(missing - after, w.start - left))
        w.start, w.end = w.start - before, w.end + after
    # then push neighbours: forward so each word lasts `least` and none overlaps, …
    previous_end = start
    for w in timed:
        assert w.start is not None and w.end is not None
        w.start = max(w.start, previous_end)
        w.end = max(w.end, w.start + least)
        previous_end = w.end
    # … and back from the segment end, which the forward pass may have overrun
    next_start = end
    for w in reversed(timed):
        assert w.start is not None and w.end is not None
        w.end = min(w.end, next_start)
        w.start = min(w.start, w.end - least)
        next_start = w.start
    for w in timed:
        assert w.start is not None and w.end is not None
        w.start, w.end = round(w.start, 3), round(w.end, 3)
    return out


def segment_window(audio: np.ndarray, segment: Segment) -> tuple[int, np.ndarray]:
    """The segment's samples (first sample index, float32 copy)."""
    first = max(0, round(segment.start * SAMPLE_RATE))
    last = min(audio.shape[0], round(segment.end * SAMPLE_RATE))
    return first, np.ascontiguousarray(audio[first:last], dtype=np.float32)


def encode_window(model: Any, chunk: np.ndarray) -> tuple[Any, int]:
    """Whisper's encoder output for one window of at most 30 s, and its content frames
    (faster-whisper's features drop their last frame, as its own ``transcribe`` does)."""
    from faster_whisper.audio import pad_or_trim

    features = model.feature_extractor(chunk)[..., :-1]
    return model.encode(pad_or_trim(features)), int(features.shape[-1])


def whisper_words(
    model: Any,
    options: Any,
    audio: np.ndarray,
    segment: Segment,
    tokenizer: Any,
    last_speech: float,
) -> list[Word]:
    """faster-whisper's word timing of ``segment``'s text over its window, repaired.

    ``model`` is the ``WhisperModel``, ``options`` its ``TranscriptionOptions`` (for the
    punctuation to merge), ``last_speech`` where the previous segment ended (faster-whisper
    shortens a first word that starts long after it).
    """
    first, chunk = segment_window(audio, segment)
    text = segment.text.strip()
    if chunk.size == 0 or not text:
        return []
    if chunk.size > MAX_WINDOW_SAMPLES:
        logger.warning(
            "segment %.2f-%.2f s exceeds 30 s; no word timestamps", segment.start, segment.end
        )
        return []
    encoder_output, num_frames = encode_window(model, chunk)
    offset = first / SAMPLE_RATE
    window: dict[str, Any] = {
        "seek": 0,
        "start": 0.0,
        "end": chunk.size / SAMPLE_RATE,
        "tokens": [t for t in tokenizer.encode(" " + text) if t < tokenizer.eot],
    }
    model.add_word_timestamps(
        [[window]],
        tokenizer,
        encoder_output,
        num_frames,
        options.prepend_punctuations,
        options.append_punctuations,
        last_speech_timestamp=max(0.0, last_speech - offset),
    )
    words = [
        Word(
            word=str(item["word"]).strip(),
            start=offset + float(item["start"]),
            end=offset + float(item["end"]),
            score=round(float(item["probability"]), 3),
        )
        for item in window.get("words", [])
        if str(item["word"]).strip()
    ]
    return repair_word_times(words, segment.start, segment.end)
