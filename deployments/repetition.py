"""Whisper's repetition loops: detect them in one decoded window, and cut them.

whisperx's batched decoding runs one beam search per VAD window and skips faster-whisper's
temperature fallback (``compression_ratio_threshold`` and ``temperatures`` are never
consulted), so a window where tiny models start repeating ("yeah, yeah, yeah, …") keeps
the loop to its end. The ASR engine checks every window with :func:`find_loop`, decodes a
looping window again with faster-whisper's own fallback (``generate_with_fallback``, higher
temperatures, no prompt), and cuts what still loops with :func:`cut_loop`.

Two checks of repetition, both per window:

- **compression ratio**, Whisper's own: gzip-compressed text far shorter than the text
  (above ``compression_ratio_threshold``, 2.4 by default) means it repeats itself;
- **a repeated n-gram that runs to the end of the window**: an n-word phrase repeated
  back to back, at least :func:`_least_repeats` times (5 single words, 3 of a longer
  phrase). A loop runs until the decoder stops; a speaker's own
  repetition ("no, no, no") is short and is followed by other words, so only a run that
  reaches the window's last words counts.

Repetition alone is not a loop: people do say "yes" sixteen times, or read a sentence
four times (espeak clips of both trip the two checks). So a flagged window is decoded once
more, differently (faster-whisper's decode without the prompt, or at the next temperature):

- the new text passes both checks: the loop came from decoding, the new text replaces it
  (``redecoded``);
- it repeats too: the repetition is in the audio, or the model is stuck on it. If the text
  is denser than :data:`MAX_WORDS_PER_SECOND` over its window, more than the audio can
  hold, the repeats are cut (``cut``); otherwise it is left as decoded (``kept``).
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass

MAX_NGRAM = 24
MAX_WORDS_PER_SECOND = 3.5
"""Repeating text denser than this over its window is cut (read speech is about 2.5 words
a second; a 30 s window decoded to the token limit holds 7 or more)."""
_WORD = re.compile(r"[^\w']+")


def compression_ratio(text: str) -> float:
    """Whisper's measure: text bytes over zlib-compressed bytes (0 for empty text)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


@dataclass(frozen=True)
class Loop:
    """A repeated phrase: words ``[start, start + size)`` repeated ``repeats`` times."""

    start: int
    size: int
    repeats: int
    phrase: str
    compression_ratio: float

    @property
    def reason(self) -> str:
        if self.repeats > 1:
            return f"{self.phrase!r} repeated {self.repeats} times"
        return f"compression ratio {self.compression_ratio:.2f}"


def _least_repeats(size: int) -> int:
    return max(3, math.ceil(5 / size))


def _normal(word: str) -> str:
    return _WORD.sub("", word.lower())


def too_dense(text: str, seconds: float, most: float = MAX_WORDS_PER_SECOND) -> bool:
    """More words than ``seconds`` of speech hold."""
    return len(text.split()) > most * max(seconds, 0.0)


def find_loop(text: str, compression_ratio_threshold: float | None = 2.4) -> Loop | None:
    """The repetition in one window's text, or None.

    A repeated n-gram reaching the window's end is reported with its position (so it can
    be cut); a compression ratio above the threshold without such a run is reported as a
    repetition of one "repeat" that cannot be located.
    """
    words = text.split()
    norm = [_normal(w) for w in words]
    ratio = compression_ratio(text)
    best: Loop | None = None
    for size in range(1, min(MAX_NGRAM, len(words) // 2) + 1):
        # walk back from the end: how many times does the final n-gram (or a rotation of it,
        # if the text stops mid-phrase) repeat back to back?
        for tail in range(size):
            end = len(norm) - tail
            phrase = norm[end - size : end]
            if not any(phrase) or norm[end:] != phrase[:tail]:  # the text stops mid-phrase
                continue
            repeats, start = 1, end - size
            while start - size >= 0 and norm[start - size : start] == phrase:
                repeats, start = repeats + 1, start - size
            if repeats >= _least_repeats(size) and (best is None or start < best.start):
                shown = " ".join(words[start : start + size])
                best = Loop(start, size, repeats, shown, ratio)
    if best is not None:
        return best
    if compression_ratio_threshold is not None and ratio > compression_ratio_threshold:
        return Loop(len(words), 0, 1, "", ratio)
    return None


def cut_loop(text: str, loop: Loop) -> str:
    """``text`` up to and with the loop's first occurrence: the repeats are dropped."""
    if loop.size == 0:
        return text.strip()
    return " ".join(text.split()[: loop.start + loop.size])
