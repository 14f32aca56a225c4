"""DiarizationEngine with the real offline bundle: segmentation-3.0 + CAM++ (no Ray)."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import DiarizationConfig
from common.errors import (
    ConfigurationError,
    InvalidAudioError,
    InvalidRequestError,
    ModelUnavailableError,
    ProcessingError,
)
from common.schemas import DiarizeRequest, Segment, Transcript, Word
from deployments.diarization import DiarizationEngine

pytestmark = pytest.mark.integration

MODELS_DIR = Path(
    os.environ.get("WHISPERX_SERVE_MODELS_DIR")
    or Path(__file__).resolve().parents[2].parent / "shared" / "models"
)
SEGMENTATION = Path("diarization/segmentation-3.0")
EMBEDDING = Path("diarization/campplus-cn-en-common/campplus_cn_en_common.pt")
SR = 16_000

if not (MODELS_DIR / EMBEDDING).exists():
    pytest.skip(f"offline model bundle not found at {MODELS_DIR}", allow_module_level=True)


def _sample_dir() -> Path:
    # importing pyannote.audio.sample would decode the wav with torchcodec; only locate it
    spec = importlib.util.find_spec("pyannote.audio.sample")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent


def _decode(path: Path) -> np.ndarray:
    from faster_whisper import decode_audio

    return np.asarray(decode_audio(str(path), sampling_rate=SR), dtype=np.float32)


def _config(**overrides: object) -> DiarizationConfig:
    fields: dict[str, object] = {
        "pipeline": None,
        "segmentation": SEGMENTATION,
        "embedding": EMBEDDING,
    }
    return DiarizationConfig.model_validate(fields | overrides)


@pytest.fixture(scope="module")
def engine() -> DiarizationEngine:
    return DiarizationEngine(_config(), models_dir=MODELS_DIR)


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    return _decode(_sample_dir() / "sample.wav")


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    return _decode(MODELS_DIR / "audio" / "jfk.flac")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b).item())


def test_campplus_same_speaker_scores_higher_than_different(
    sample: np.ndarray, jfk: np.ndarray
) -> None:
    from deployments.campplus import load_campplus

    model = load_campplus(MODELS_DIR / EMBEDDING, torch.device("cpu"))
    half = len(jfk) // 2

    def emb(x: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = model(torch.from_numpy(x)[None, None])
        return out

    first, second = emb(jfk[:half]), emb(jfk[half:])
    speaker90, speaker91 = (
        emb(sample[int(10.6 * SR) : int(14.4 * SR)]),
        emb(sample[22 * SR : 28 * SR]),
    )
    assert _cos(first, second) > 0.7  # FACTS.md: 0.758 with its own decoder; 0.742 here
    assert _cos(first, speaker90) < 0.4
    assert _cos(first, speaker91) < 0.4
    assert _cos(speaker90, speaker91) < 0.6


def test_sample_has_two_speakers_matching_reference(
    engine: DiarizationEngine, sample: np.ndarray
) -> None:
    from pyannote.core import Annotation
    from pyannote.core import Segment as Span
    from pyannote.database.util import load_rttm
    from pyannote.metrics.diarization import DiarizationErrorRate

    result = engine.diarize(sample, DiarizeRequest())

    assert result.speakers == ["SPEAKER_00", "SPEAKER_01"]
    assert result.segments == [] and result.language is None
    turns = result.speaker_turns or []
    assert turns == sorted(turns, key=lambda t: t.start)
    hypothesis = Annotation(uri="sample")
    for turn in turns:
        hypothesis[Span(turn.start, turn.end)] = turn.speaker
    reference = load_rttm(str(_sample_dir() / "sample.rttm"))["sample"]  # type: ignore[no-untyped-call]
    der = DiarizationErrorRate()(reference, hypothesis)
    assert der < 0.10  # measured 0.052 (no collar, overlap scored)


def test_jfk_is_one_speaker(engine: DiarizationEngine, jfk: np.ndarray) -> None:
    result = engine.diarize(jfk, DiarizeRequest())
    assert result.speakers == ["SPEAKER_00"]
    speech = sum(t.end - t.start for t in result.speaker_turns or [])
    assert speech > 6.0  # 7.4 s measured


@pytest.mark.parametrize(
    ("request_args", "expected"),
    [
        ({"num_speakers": 3}, 3),
        ({"min_speakers": 3}, 3),
        ({"max_speakers": 1}, 1),
        ({"num_speakers": 1}, 1),
    ],
)
def test_speaker_count_bounds_are_honoured(
    engine: DiarizationEngine, sample: np.ndarray, request_args: dict[str, int], expected: int
) -> None:
    result = engine.diarize(sample, DiarizeRequest.model_validate(request_args))
    assert len(result.speakers) == expected


def test_progress_is_monotonic_and_ends_at_100(
    engine: DiarizationEngine, sample: np.ndarray
) -> None:
    seen: list[float] = []
    engine.diarize(sample, DiarizeRequest(), progress=seen.append)
    assert len(seen) > 3
    assert seen == sorted(seen)
    assert all(0 <= p <= 100 for p in seen)
    assert seen[-1] == 100.0
    assert any(p < 50 for p in seen) and any(50 < p < 100 for p in seen)  # both steps report


def test_assigns_speakers_to_segments_and_words(
    engine: DiarizationEngine, sample: np.ndarray
) -> None:
    transcript = Transcript(
        language="en",
        segments=[
            Segment(
                start=10.6,
                end=14.4,
                text="first speaker",
                words=[
                    Word(word="first", start=10.7, end=11.2),
                    Word(word="speaker", start=11.3, end=12.0),
                ],
            ),
            Segment(
                start=22.0,
                end=28.0,
                text="second speaker 42",
                words=[
                    Word(word="second", start=22.1, end=22.6),
                    Word(word="speaker", start=23.0, end=23.5),
                    Word(word="42"),  # unaligned: no times, so no speaker
                ],
            ),
        ],
        word_timestamps="wav2vec2",
        alignment_model="test",
    )
    result = engine.diarize(sample, DiarizeRequest(transcript=transcript))

    first, second = result.segments
    assert first.speaker in result.speakers and second.speaker in result.speakers
    assert first.speaker != second.speaker
    assert [w.speaker for w in first.words] == [first.speaker] * 2
    assert [w.speaker for w in second.words] == [second.speaker, second.speaker, None]
    assert result.language == "en" and result.alignment_model == "test"
    assert result.text == transcript.text
    assert result.speaker_turns


@pytest.mark.parametrize("num_samples", [0, 100, 4_000])
def test_too_short_audio_gives_no_turns(engine: DiarizationEngine, num_samples: int) -> None:
    audio = 0.01 * np.random.default_rng(0).standard_normal(num_samples).astype(np.float32)
    result = engine.diarize(audio, DiarizeRequest())
    assert result.speaker_turns == [] and result.speakers == []


def test_silence_gives_no_turns(engine: DiarizationEngine) -> None:
    seen: list[float] = []
    result = engine.diarize(
        np.zeros(5 * SR, dtype=np.float32), DiarizeRequest(), progress=seen.append
    )
    assert result.speaker_turns == [] and result.speakers == []
    assert seen[-1] == 100.0


def test_rejects_bad_input(engine: DiarizationEngine, jfk: np.ndarray) -> None:
    with pytest.raises(InvalidAudioError):
        engine.diarize(np.stack([jfk, jfk]), DiarizeRequest())
    with pytest.raises(InvalidRequestError):
        engine.diarize(jfk, DiarizeRequest(min_speakers=3, max_speakers=2))


def test_library_failures_become_processing_errors(
    engine: DiarizationEngine, jfk: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(engine, "_pipeline", broken)
    with pytest.raises(ProcessingError) as info:
        engine.diarize(jfk, DiarizeRequest())
    assert info.value.user_message == "Speaker diarization failed."
    assert info.value.technical_detail == "RuntimeError: boom"
    assert isinstance(info.value.__cause__, RuntimeError)


def test_plda_for_another_embedding_size_is_ignored_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="deployments.diarization"):
        DiarizationEngine(_config(plda=Path("diarization/plda")), models_dir=MODELS_DIR)
    assert "expects 256-dimensional embeddings" in caplog.text
    assert "produces 192" in caplog.text


def test_missing_parts_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="segmentation"):
        DiarizationEngine(_config(), models_dir=tmp_path)


def test_unreachable_hub_pipeline_is_model_unavailable() -> None:
    if os.environ.get("HF_HUB_OFFLINE") != "1":
        pytest.skip("needs HF_HUB_OFFLINE=1 so nothing is downloaded")
    with pytest.raises(ModelUnavailableError):
        DiarizationEngine(DiarizationConfig(pipeline="pyannote/speaker-diarization-community-1"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_a_configuration_error() -> None:
    config = _config(device="cuda")
    with pytest.raises(ConfigurationError, match="GPU"):
        DiarizationEngine(config, models_dir=MODELS_DIR)


def _three_voices(jfk: np.ndarray, sample: np.ndarray) -> tuple[np.ndarray, list[tuple]]:
    """JFK and sample.wav's two speakers taking turns: (audio, [(start, end, voice), ...])."""
    pause = np.zeros(SR // 2, dtype=np.float32)
    parts = [
        (jfk[: int(5.5 * SR)], "jfk"),
        (sample[22 * SR : 28 * SR], "s91"),
        (jfk[int(5.5 * SR) :], "jfk"),
        (sample[int(10.6 * SR) : int(14.4 * SR)], "s90"),
        (sample[22 * SR : 28 * SR], "s91"),
        (sample[int(10.6 * SR) : int(14.4 * SR)], "s90"),  # 7.6 s in all: over 5 s
    ]
    audio, ref, t = [], [], 0.0
    for part, voice in parts:
        audio += [part, pause]
        ref.append((t, t + len(part) / SR, voice))
        t += (len(part) + len(pause)) / SR
    return np.concatenate(audio), ref


def _der(ref: list[tuple], turns: list) -> float:
    from pyannote.core import Annotation
    from pyannote.core import Segment as Span
    from pyannote.metrics.diarization import DiarizationErrorRate

    reference, hypothesis = Annotation(), Annotation()
    for i, (a, b, voice) in enumerate(ref):
        reference[Span(a, b), i] = voice
    for i, turn in enumerate(turns):
        hypothesis[Span(turn.start, turn.end), i] = turn.speaker
    return float(DiarizationErrorRate()(reference, hypothesis))


def test_three_real_voices_are_three_speakers_and_the_true_count_does_not_hurt(
    engine: DiarizationEngine, jfk: np.ndarray, sample: np.ndarray
) -> None:
    audio, ref = _three_voices(jfk, sample)
    auto = engine.diarize(audio, DiarizeRequest())
    told = engine.diarize(audio, DiarizeRequest(num_speakers=3))
    assert len(auto.speakers) == 3
    assert len(told.speakers) == 3
    assert _der(ref, told.speaker_turns or []) <= _der(ref, auto.speaker_turns or []) + 0.02


def test_one_voice_is_not_split_when_a_bound_allows_more(
    engine: DiarizationEngine, jfk: np.ndarray
) -> None:
    long_jfk = np.concatenate([jfk, np.zeros(SR, dtype=np.float32), jfk])
    result = engine.diarize(long_jfk, DiarizeRequest(max_speakers=4))
    assert result.speakers == ["SPEAKER_00"]


def test_little_speech_still_gets_turns_and_every_word_a_speaker(
    engine: DiarizationEngine, jfk: np.ndarray, sample: np.ndarray
) -> None:
    audio = 1e-4 * np.random.default_rng(1).standard_normal(30 * SR).astype(np.float32)
    audio[10 * SR : int(11.5 * SR)] += jfk[int(0.3 * SR) : int(1.8 * SR)]  # "and so my fellow"
    audio[20 * SR : int(21.5 * SR)] += sample[22 * SR : int(23.5 * SR)]
    words = [
        Word(word="so", start=10.3, end=10.3),  # zero-length, as Whisper timing gives
        Word(word="my", start=10.6, end=10.9),
        Word(word="yes", start=20.4, end=20.4),
        Word(word="right", start=20.7, end=21.2),
    ]
    transcript = Transcript(
        segments=[Segment(start=10.2, end=21.3, text="so my yes right", words=words)]
    )
    result = engine.diarize(audio, DiarizeRequest(transcript=transcript))
    assert result.speaker_turns  # the old pipeline returned none for clips like this
    assert all(w.speaker in result.speakers for w in result.segments[0].words)
