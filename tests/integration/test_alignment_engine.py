"""AlignmentEngine through whisperx.align with a RANDOM-weight tiny wav2vec2 (no Ray).

The offline bundle has no real alignment model, so the word times produced here are
meaningless: these tests check the code path and the result's structure only.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from common.config import AlignConfig
from common.errors import ModelUnavailableError
from common.schemas import AlignRequest, Segment, Transcript
from deployments.alignment import AlignmentEngine
from deployments.audio import decode_audio
from tests.fixtures_models import build_tiny_wav2vec2

pytestmark = pytest.mark.integration

MODELS_DIR = Path(
    os.environ.get(
        "WHISPERX_SERVE_MODELS_DIR",
        Path(__file__).resolve().parents[2].parent / "shared" / "models",
    )
)
JFK_TEXT = (
    "And so my fellow Americans ask not what your country can do for you,"
    " ask what you can do for your country."
)


@pytest.fixture(scope="session")
def tiny_wav2vec2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_wav2vec2(tmp_path_factory.mktemp("tiny-wav2vec2"))


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    if not (MODELS_DIR / "audio" / "jfk.flac").exists():
        pytest.skip(f"offline model bundle not found at {MODELS_DIR}")
    return decode_audio(MODELS_DIR / "audio" / "jfk.flac")


@pytest.fixture
def engine(tiny_wav2vec2: Path, tmp_path: Path) -> AlignmentEngine:
    config = AlignConfig(
        models={"en": str(tiny_wav2vec2), "ko": str(tiny_wav2vec2), "de": str(tiny_wav2vec2)},
        nltk_data=Path("nltk_data"),
        model_dir=tmp_path / "aligner-cache",  # empty: no default aligner is cached
        max_cached_models=1,
    )
    return AlignmentEngine(config, models_dir=MODELS_DIR)


def _transcript(language: str = "en", *segments: Segment) -> Transcript:
    return Transcript(
        language=language, segments=list(segments) or [Segment(start=0.3, end=10.98, text=JFK_TEXT)]
    )


def test_align_produces_words(
    engine: AlignmentEngine, jfk: np.ndarray, tiny_wav2vec2: Path
) -> None:
    seen: list[float] = []
    result = engine.align(jfk, AlignRequest(transcript=_transcript()), seen.append)
    assert result.word_timestamps == "wav2vec2"
    assert result.alignment_model == str(tiny_wav2vec2)
    words = [w for s in result.segments for w in s.words]
    assert [w.word for w in words] == JFK_TEXT.split()
    assert any(w.start is not None for w in words)
    for word in words:
        if word.start is not None and word.end is not None:
            assert 0.0 <= word.start <= word.end <= 11.0
    assert seen and seen == sorted(seen) and seen[-1] == 100.0


def test_unalignable_segment_keeps_its_words(engine: AlignmentEngine, jfk: np.ndarray) -> None:
    beyond_end = Segment(start=20.0, end=21.0, text="words after the audio ends")
    result = engine.align(jfk, AlignRequest(transcript=_transcript("en", beyond_end)))
    (segment,) = result.segments
    assert (segment.start, segment.end, segment.text) == (20.0, 21.0, beyond_end.text)
    assert [w.word for w in segment.words] == beyond_end.text.split()
    assert all(w.start is None and w.end is None for w in segment.words)


def test_empty_transcript(engine: AlignmentEngine, jfk: np.ndarray) -> None:
    result = engine.align(jfk, AlignRequest(transcript=Transcript(language="en", segments=[])))
    assert result.segments == [] and result.word_timestamps == "wav2vec2"


def test_supports_configured_and_unknown(engine: AlignmentEngine, tiny_wav2vec2: Path) -> None:
    assert engine.supports("en") and engine.supports("EN")
    assert engine.model_name("en") == str(tiny_wav2vec2)
    started = time.perf_counter()
    assert engine.supports("xx") is False
    assert engine.model_name("xx") is None
    assert time.perf_counter() - started < 5.0


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers, on the failed hub load
def test_default_models_offline_fail_fast(tmp_path: Path) -> None:
    engine = AlignmentEngine(
        AlignConfig(use_default_models=True, model_dir=tmp_path, nltk_data=Path("nltk_data")),
        models_dir=MODELS_DIR,
    )
    started = time.perf_counter()
    # en/fr: torchaudio bundles, not cached; ja: a hub model, not cached; xx: no default.
    assert [engine.supports(lang) for lang in ("en", "fr", "ja", "xx")] == [False] * 4
    assert engine.model_name("en") == "WAV2VEC2_ASR_BASE_960H"
    assert time.perf_counter() - started < 10.0


def test_unsupported_language_is_model_unavailable(
    engine: AlignmentEngine, jfk: np.ndarray
) -> None:
    with pytest.raises(ModelUnavailableError) as info:
        engine.align(jfk, AlignRequest(transcript=_transcript("xx")))
    assert info.value.status_code == 503


def test_missing_punkt_offline_is_model_unavailable(
    engine: AlignmentEngine, jfk: np.ndarray
) -> None:
    # German needs punkt_tab/german, which the bundle lacks; nltk.download must not be tried.
    with pytest.raises(ModelUnavailableError, match="Sentence-splitting data"):
        engine.align(jfk, AlignRequest(transcript=_transcript("de")))


def test_cache_is_bounded(engine: AlignmentEngine, jfk: np.ndarray) -> None:
    engine.align(jfk, AlignRequest(transcript=_transcript("en")))
    result = engine.align(
        jfk, AlignRequest(transcript=_transcript("ko"))
    )  # punkt falls back to English
    assert result.word_timestamps == "wav2vec2"
    assert list(engine._models) == ["ko|"]  # keyed by language and requested model


def test_aligned_word_times_are_usable(engine: AlignmentEngine, jfk: np.ndarray) -> None:
    """Words with no alignable character ("1961", "12%") get their neighbour's times from
    whisperx's interpolation; after the repair none is zero-length or out of order."""
    from deployments.word_times import MIN_WORD_SECONDS

    text = "In 1961 about 12% of us, i.e. many, asked what we can do for our country."
    result = engine.align(
        jfk, AlignRequest(transcript=_transcript("en", Segment(start=0.3, end=10.9, text=text)))
    )
    words = [w for s in result.segments for w in s.words]
    assert " ".join(w.word for w in words) == text
    for segment in result.segments:
        previous = segment.start
        for word in segment.words:
            assert word.start is not None and word.end is not None, word
            assert segment.start <= word.start and word.end <= segment.end
            assert (
                word.start >= previous - 1e-3 and word.end - word.start >= MIN_WORD_SECONDS - 1e-3
            )
            previous = word.end
