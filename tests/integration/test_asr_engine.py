"""AsrEngine with the real Whisper tiny.en from the offline bundle (no Ray).

Reference word times for jfk.flac: faster-whisper's own ``word_timestamps=True`` on the
same model puts the first "country" at 6.02-6.36 s and the second at 10.22-10.50 s; the
engine (per-VAD-segment DTW) measured 6.02-6.34 s and 10.22-10.48 s.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from common.config import AsrConfig
from common.errors import InvalidRequestError
from common.schemas import AsrOptions, AsrRequest, Transcript
from deployments.asr import AsrEngine
from deployments.audio import SAMPLE_RATE, decode_audio

pytestmark = pytest.mark.integration

MODELS_DIR = Path(
    os.environ.get(
        "WHISPERX_SERVE_MODELS_DIR",
        Path(__file__).resolve().parents[2].parent / "shared" / "models",
    )
)
CLIP_SECONDS = 11.0


def normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


@pytest.fixture(scope="module")
def engine() -> AsrEngine:
    if not (MODELS_DIR / "asr" / "faster-whisper-tiny.en").exists():
        pytest.skip(f"offline model bundle not found at {MODELS_DIR}")
    return AsrEngine(
        AsrConfig(model="asr/faster-whisper-tiny.en", local_files_only=True, cpu_threads=2),
        models_dir=MODELS_DIR,
    )


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    return decode_audio(MODELS_DIR / "audio" / "jfk.flac")


@pytest.fixture(scope="module")
def with_words(engine: AsrEngine, jfk: np.ndarray) -> Transcript:
    return engine.transcribe(jfk, AsrRequest(word_timestamps=True))


def test_transcribes_jfk(engine: AsrEngine, jfk: np.ndarray) -> None:
    started = time.perf_counter()
    transcript = engine.transcribe(jfk, AsrRequest())
    elapsed = time.perf_counter() - started
    print(f"tiny.en on jfk: {elapsed:.2f} s wall, RTF {elapsed / CLIP_SECONDS:.3f}")
    assert transcript.language == "en"
    assert "ask not what your country can do for you" in normalise(transcript.text)
    assert transcript.word_timestamps is None and transcript.alignment_model is None
    for segment in transcript.segments:
        assert 0.0 <= segment.start < segment.end <= CLIP_SECONDS + 0.05
        assert segment.words == []


def test_the_vad_step_is_configured(engine: AsrEngine, jfk: np.ndarray) -> None:
    """``asr.vad_step_s`` reaches pyannote's sliding window (1.67 s unless set; ``None`` is
    whisperx's own 0.5 s), and the words survive either."""

    def step(e: AsrEngine) -> float:
        return float(e._pipeline.vad_model.vad_pipeline._segmentation.step)

    whisperx_own = AsrEngine(
        AsrConfig(
            model="asr/faster-whisper-tiny.en",
            local_files_only=True,
            cpu_threads=2,
            vad_step_s=None,
        ),
        models_dir=MODELS_DIR,
    )
    assert step(engine) == 1.67 and step(whisperx_own) == 0.5
    for e in (engine, whisperx_own):
        text = normalise(e.transcribe(jfk, AsrRequest()).text)
        assert "ask not what your country can do for you" in text


def test_progress_monotonic_to_100(engine: AsrEngine, jfk: np.ndarray) -> None:
    for word_timestamps in (False, True):
        seen: list[float] = []
        engine.transcribe(jfk, AsrRequest(word_timestamps=word_timestamps), seen.append)
        assert seen, "no progress reported"
        assert seen == sorted(seen)
        assert seen[-1] == 100.0
        assert all(0.0 <= p <= 100.0 for p in seen)


def test_whisper_word_timestamps(with_words: Transcript) -> None:
    assert with_words.word_timestamps == "whisper"
    assert with_words.alignment_model is None
    words = [w for s in with_words.segments for w in s.words]
    assert len(words) >= 20
    print("whisper words:", [(w.word, w.start, w.end) for w in words])
    previous_start = 0.0
    for word in words:
        assert word.start is not None and word.end is not None and word.score is not None
        assert 0.0 <= word.start <= word.end <= CLIP_SECONDS + 0.05
        assert word.start >= previous_start
        assert 0.0 <= word.score <= 1.0
        previous_start = word.start
    for segment in with_words.segments:  # words spell the segment text
        assert normalise(" ".join(w.word for w in segment.words)) == normalise(segment.text)
    country = [w for w in words if normalise(w.word) == "country"]
    assert len(country) == 2
    assert country[0].start is not None and 5.5 <= country[0].start <= 7.0
    assert country[1].start is not None and 9.7 <= country[1].start <= 10.9


def test_add_word_timestamps_matches_inline(
    engine: AsrEngine, jfk: np.ndarray, with_words: Transcript
) -> None:
    plain = engine.transcribe(jfk, AsrRequest())
    added = engine.add_word_timestamps(jfk, plain)
    assert added.word_timestamps == "whisper"
    assert [s.words for s in added.segments] == [s.words for s in with_words.segments]


def test_beam_size_does_not_leak(engine: AsrEngine, jfk: np.ndarray) -> None:
    default_beam = engine._pipeline.options.beam_size
    first = engine.transcribe(jfk, AsrRequest())
    greedy = engine.transcribe(
        jfk, AsrRequest(options=AsrOptions(beam_size=1, initial_prompt="JFK"))
    )
    again = engine.transcribe(jfk, AsrRequest())
    assert "your country" in normalise(greedy.text)
    assert again.segments == first.segments
    assert engine._pipeline.options.beam_size == default_beam
    assert engine._pipeline.options.initial_prompt is None


def test_silence_and_empty_audio(engine: AsrEngine) -> None:
    for audio in (np.zeros(5 * SAMPLE_RATE, dtype=np.float32), np.zeros(0, dtype=np.float32)):
        transcript = engine.transcribe(audio, AsrRequest(word_timestamps=True))
        assert transcript.segments == []
        assert transcript.language == "en"


def test_english_only_rejects_other_language(engine: AsrEngine, jfk: np.ndarray) -> None:
    with pytest.raises(InvalidRequestError, match="English-only"):
        engine.transcribe(jfk, AsrRequest(options=AsrOptions(language="de")))
