"""Usable word times: inside their segment, in order, and never zero-length.

Both word-time sources leave defects: Whisper's cross-attention DTW gives words that share
one 20 ms frame ``start == end`` and may run past the window; wav2vec2 alignment gives a
word with no alignable character (a number, a symbol) its neighbour's start and end after
interpolation. :func:`repair_word_times` is applied to every segment's words after either.
"""

from __future__ import annotations

from common.schemas import Word

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
