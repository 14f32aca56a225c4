"""Repetition loops: the detector and the cut."""

from __future__ import annotations

from typing import Any

import pytest

from deployments.repetition import compression_ratio, cut_loop, find_loop, too_dense

SPEECH = (
    "So the plan for Monday is simple. We meet at nine, we go through the budget, and "
    "then Anna shows the new design. After lunch we decide who takes which part."
)


def test_natural_speech_is_not_a_loop() -> None:
    assert find_loop(SPEECH) is None
    assert compression_ratio(SPEECH) < 2.4


@pytest.mark.parametrize(
    "text",
    [
        "I said no, no, no, and then we left.",  # a speaker's own repetition, then more words
        "yeah, yeah, yeah",  # short and real
        "We will, we will, we will rock you.",
        "",
    ],
)
def test_short_or_followed_repetitions_are_speech(text: str) -> None:
    assert find_loop(text) is None


def test_a_word_loop_to_the_end_of_the_window_is_found_and_cut() -> None:
    text = "Okay, so we start now. " + "yeah, " * 40 + "yeah"
    loop = find_loop(text)
    assert loop is not None
    assert loop.size == 1 and loop.repeats == 41
    assert loop.phrase == "yeah," and "repeated 41 times" in loop.reason
    assert cut_loop(text, loop) == "Okay, so we start now. yeah,"


def test_a_phrase_loop_that_stops_mid_phrase_is_found() -> None:
    text = SPEECH + " " + "and then we go home. " * 6 + "and then we"
    loop = find_loop(text)
    assert loop is not None and loop.size == 5 and loop.repeats >= 6
    assert cut_loop(text, loop) == SPEECH + " and then we go home."


def test_case_and_punctuation_do_not_hide_a_loop() -> None:
    text = "Thank you. thank you! Thank you, " * 4 + "Thank you."
    loop = find_loop(text)
    assert loop is not None and loop.size == 2
    assert cut_loop(text, loop) == "Thank you."


def test_a_high_compression_ratio_alone_is_a_loop_without_a_place_to_cut() -> None:
    text = "la la la la la la la la di " * 12 + "end"  # repeats, but not up to the end
    assert compression_ratio(text) > 2.4
    loop = find_loop(text)
    assert loop is not None and loop.size == 0 and "compression ratio" in loop.reason
    assert cut_loop(text, loop) == text.strip()
    assert find_loop(text, compression_ratio_threshold=None) is None


def test_density_tells_a_loop_from_repetition_the_audio_holds() -> None:
    """Sixteen "Yes." in 11 s, or a sentence read four times, fit their audio."""
    yes = "Yes, " * 15 + "Yes."
    assert find_loop(yes) is not None  # repetitive …
    assert not too_dense(yes, 10.9)  # … but 1.5 words/s is speech
    four = " ".join([SPEECH] * 4)
    assert find_loop(four) is not None and not too_dense(four, 48.0)  # 2.6 words/s
    loop = "We start now. " + "yeah, " * 200
    found = find_loop(loop)
    assert found is not None and found.repeats == 200 and too_dense(loop, 30.0)  # 6.8/s


# ---------------------------------------------------------------- the engine's decision


class _Pipeline:
    class options:  # stands in for faster-whisper's TranscriptionOptions
        compression_ratio_threshold = 2.4


def _fix(text: str, retry: str | None, seconds: float, monkeypatch: pytest.MonkeyPatch) -> Any:
    import numpy as np

    from common.schemas import Segment
    from deployments import asr

    calls: list[str] = []

    def redecode(pipeline: Any, audio: Any, segment: Segment, tokenizer: Any) -> Any:
        calls.append(segment.text)
        return None if retry is None else (retry, -0.3, "at temperature 0.2")

    monkeypatch.setattr(asr, "_redecode", redecode)
    segments = [
        Segment(start=0.0, end=5.0, text=SPEECH),
        Segment(start=5.0, end=5.0 + seconds, text=text),
    ]
    fixed, warnings = asr._fix_repetitions(np.zeros(16000), segments, _Pipeline(), lambda: None)
    assert calls == [text], "only the repeating window is decoded again"
    assert fixed[0] == segments[0]
    return fixed[1], warnings


def test_a_clean_retry_replaces_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    segment, warnings = _fix("yeah, " * 30, "We start now.", 10.0, monkeypatch)
    assert (segment.text, segment.repetition, segment.avg_logprob) == (
        "We start now.",
        "redecoded",
        -0.3,
    )
    assert [(w.code, w.start, w.end) for w in warnings] == [("repetition_redecoded", 5.0, 15.0)]
    assert "'yeah,' repeated 30 times" in warnings[0].message


def test_a_loop_denser_than_the_audio_is_cut(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "We start now. " + "yeah, " * 200
    segment, warnings = _fix(text, "yeah, " * 150, 30.0, monkeypatch)
    assert (segment.text, segment.repetition) == ("We start now. yeah,", "cut")
    assert warnings[0].code == "repetition_cut" and "199 words" in warnings[0].message


def test_repetition_that_fits_the_audio_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "Yes, " * 15 + "Yes."
    segment, warnings = _fix(text, text, 11.0, monkeypatch)
    assert (segment.text, segment.repetition) == (text, "kept")
    assert warnings[0].code == "repetition_kept"


def test_no_retry_possible_still_cuts_a_dense_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    segment, _ = _fix("yeah, " * 100, None, 5.0, monkeypatch)
    assert (segment.text, segment.repetition) == ("yeah,", "cut")
