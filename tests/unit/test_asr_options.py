"""AsrEngine request handling against a fake whisperx pipeline (no model, no Ray).

The fake mimics what matters of ``whisperx.asr.FasterWhisperPipeline``: decoding options,
VAD thresholds and the tokenizer live on the object and ``transcribe`` mutates the
tokenizer, so the engine must set per-request values and restore them afterwards.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from common.config import AsrConfig
from common.errors import (
    ConfigurationError,
    InvalidRequestError,
    ModelUnavailableError,
    ProcessingError,
)
from common.schemas import AsrOptions, AsrRequest
from deployments.asr import AsrEngine

pytestmark = pytest.mark.unit

AUDIO = np.zeros(16000, dtype=np.float32)


@dataclasses.dataclass(frozen=True)
class FakeOptions:
    """The fields of faster-whisper's TranscriptionOptions that requests may set."""

    beam_size: int = 5
    best_of: int = 5
    patience: float = 1.0
    length_penalty: float = 1.0
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4)
    compression_ratio_threshold: float = 2.4
    log_prob_threshold: float = -1.0
    no_speech_threshold: float = 0.6
    condition_on_previous_text: bool = False
    initial_prompt: str | None = None
    hotwords: str | None = None


class FakePipeline:
    def __init__(self, multilingual: bool) -> None:
        self.options = FakeOptions()
        self._vad_params = {"vad_onset": 0.5, "vad_offset": 0.363, "chunk_size": 30}
        # whisperx's pyannote VAD: its sliding-window Inference, whisperx's 0.5 s step
        self.vad_model = SimpleNamespace(
            vad_pipeline=SimpleNamespace(_segmentation=SimpleNamespace(step=0.5))
        )
        self.tokenizer: Any = "preset-tokenizer"
        self.suppress_numerals = False
        self.model = SimpleNamespace(
            model=SimpleNamespace(is_multilingual=multilingual),
            supported_languages=["en", "fr", "de"] if multilingual else ["en"],
        )
        self.calls: list[dict[str, Any]] = []
        self.fail = False
        self.delay = 0.0
        self._busy = threading.Lock()

    def transcribe(self, audio: np.ndarray, **kwargs: Any) -> dict[str, Any]:
        assert self._busy.acquire(blocking=False), "two transcriptions ran at once"
        try:
            self.calls.append(
                {
                    **kwargs,
                    "beam_size": self.options.beam_size,
                    "initial_prompt": self.options.initial_prompt,
                    "options": self.options,
                    "suppress_numerals": self.suppress_numerals,
                    "vad": dict(self._vad_params),
                }
            )
            self.tokenizer = f"tokenizer-{kwargs['language']}-{kwargs['task']}"  # like whisperx
            time.sleep(self.delay)
            if self.fail:
                raise RuntimeError("CUDA out of memory")
            kwargs["progress_callback"](50.0)
            kwargs["progress_callback"](100.0)
            detected = "fr" if self.model.model.is_multilingual else "en"
            language = kwargs["language"] or detected
            return {
                "segments": [{"text": " hello", "start": 0.0, "end": 1.0, "avg_logprob": -0.2}],
                "language": language,
            }
        finally:
            self._busy.release()


@pytest.fixture
def load_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    import whisperx

    calls: list[dict[str, Any]] = []

    def fake_load_model(model: str, device: str, **kwargs: Any) -> FakePipeline:
        calls.append({"model": model, "device": device, **kwargs})
        return FakePipeline(multilingual=not model.endswith(".en"))

    monkeypatch.setattr(whisperx, "load_model", fake_load_model)
    return calls


def _engine(model: str = "tiny.en", **config: Any) -> tuple[AsrEngine, FakePipeline]:
    engine = AsrEngine(AsrConfig(model=model, **config))
    return engine, engine._pipeline


def _snapshot(pipeline: FakePipeline) -> tuple[Any, ...]:
    return (
        pipeline.options,
        dict(pipeline._vad_params),
        pipeline.tokenizer,
        pipeline.suppress_numerals,
    )


def test_load_uses_config(load_calls: list[dict[str, Any]]) -> None:
    _, pipeline = _engine("tiny.en", cpu_threads=3, vad_onset=0.4, local_files_only=True)
    assert pipeline.vad_model.vad_pipeline._segmentation.step == 1.67  # the default
    _, whisperx_own = _engine("tiny.en", vad_step_s=None)
    assert whisperx_own.vad_model.vad_pipeline._segmentation.step == 0.5
    call = load_calls[0]
    assert call["device"] == "cpu"
    assert call["compute_type"] == "int8"  # "default" on CPU
    assert call["threads"] == 3
    assert call["local_files_only"] is True
    assert call["vad_options"]["vad_onset"] == 0.4


def test_relative_model_resolved_against_models_dir(
    load_calls: list[dict[str, Any]], tmp_path: Path
) -> None:
    (tmp_path / "asr" / "whisper.en").mkdir(parents=True)
    AsrEngine(AsrConfig(model="asr/whisper.en"), models_dir=tmp_path)
    AsrEngine(AsrConfig(model="large-v3"), models_dir=tmp_path)  # not a folder: a hub name
    assert load_calls[0]["model"] == str((tmp_path / "asr" / "whisper.en").resolve())
    assert load_calls[1]["model"] == "large-v3"


def test_cuda_without_gpu_fails_loudly(
    load_calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigurationError, match="no CUDA GPU"):
        AsrEngine(AsrConfig(device="cuda"))
    assert load_calls == []


def test_load_failure_is_model_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    import whisperx

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Cannot find model on the hub (offline)")

    monkeypatch.setattr(whisperx, "load_model", broken)
    with pytest.raises(ModelUnavailableError) as info:
        AsrEngine(AsrConfig(model="large-v3"))
    assert "large-v3" in info.value.user_message
    assert "RuntimeError" in info.value.technical_detail


def test_per_request_options_applied_then_restored(load_calls: list[dict[str, Any]]) -> None:
    engine, pipeline = _engine("large-v3", batch_size=8, chunk_size=30)
    before = _snapshot(pipeline)
    options = AsrOptions(
        language="FR",
        task="translate",
        batch_size=2,
        beam_size=1,
        initial_prompt="Kennedy",
        vad_onset=0.6,
        vad_offset=0.3,
        chunk_size=10,
    )
    transcript = engine.transcribe(AUDIO, AsrRequest(options=options))
    call = pipeline.calls[-1]
    assert (call["beam_size"], call["initial_prompt"]) == (1, "Kennedy")
    assert call["vad"] == {"vad_onset": 0.6, "vad_offset": 0.3, "chunk_size": 30}
    assert (call["batch_size"], call["chunk_size"]) == (2, 10)
    assert (call["language"], call["task"]) == ("fr", "translate")
    assert _snapshot(pipeline) == before
    assert transcript.language == "fr"
    assert [s.text for s in transcript.segments] == ["hello"]

    engine.transcribe(AUDIO, AsrRequest())  # the next request sees the defaults again
    call = pipeline.calls[-1]
    assert (call["beam_size"], call["initial_prompt"]) == (5, None)
    assert call["vad"] == {"vad_onset": 0.5, "vad_offset": 0.363, "chunk_size": 30}
    assert (call["batch_size"], call["chunk_size"], call["language"], call["task"]) == (
        8,
        30,
        None,
        "transcribe",
    )


def test_options_restored_when_transcription_fails(load_calls: list[dict[str, Any]]) -> None:
    engine, pipeline = _engine("large-v3")
    before = _snapshot(pipeline)
    pipeline.fail = True
    with pytest.raises(ProcessingError) as info:
        engine.transcribe(AUDIO, AsrRequest(options=AsrOptions(beam_size=2, language="de")))
    assert "CUDA out of memory" in info.value.technical_detail
    assert _snapshot(pipeline) == before


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (AsrOptions(language="fr"), "English-only"),
        (AsrOptions(task="translate"), "cannot translate"),
    ],
)
def test_english_only_model_rejects(
    load_calls: list[dict[str, Any]], options: AsrOptions, fragment: str
) -> None:
    engine, pipeline = _engine("tiny.en")
    with pytest.raises(InvalidRequestError, match=fragment) as info:
        engine.transcribe(AUDIO, AsrRequest(options=options))
    assert info.value.status_code == 422
    assert pipeline.calls == []


def test_english_only_model_accepts_en(load_calls: list[dict[str, Any]]) -> None:
    engine, pipeline = _engine("tiny.en")
    transcript = engine.transcribe(AUDIO, AsrRequest(options=AsrOptions(language="EN")))
    assert transcript.language == "en"
    assert pipeline.calls[-1]["language"] is None  # the pipeline's preset English tokenizer


def test_unknown_language_rejected(load_calls: list[dict[str, Any]]) -> None:
    engine, pipeline = _engine("large-v3")
    with pytest.raises(InvalidRequestError, match="not supported"):
        engine.transcribe(AUDIO, AsrRequest(options=AsrOptions(language="xx")))
    assert pipeline.calls == []


def test_empty_audio_gives_empty_transcript(load_calls: list[dict[str, Any]]) -> None:
    engine, pipeline = _engine("tiny.en")
    seen: list[float] = []
    transcript = engine.transcribe(np.zeros(0, dtype=np.float32), AsrRequest(), seen.append)
    assert transcript.segments == [] and transcript.language == "en"
    assert pipeline.calls == []
    assert seen == [100.0]


def test_progress_is_monotonic_and_ends_at_100(load_calls: list[dict[str, Any]]) -> None:
    engine, _ = _engine("tiny.en")
    seen: list[float] = []
    engine.transcribe(AUDIO, AsrRequest(), seen.append)
    assert seen == sorted(seen) and seen[-1] == 100.0


def test_one_transcription_at_a_time(load_calls: list[dict[str, Any]]) -> None:
    engine, pipeline = _engine("large-v3")
    pipeline.delay = 0.05
    errors: list[BaseException] = []

    def run(beam: int) -> None:
        try:
            engine.transcribe(AUDIO, AsrRequest(options=AsrOptions(beam_size=beam)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(beam,)) for beam in (1, 2, 3, 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(call["beam_size"] for call in pipeline.calls) == [1, 2, 3, 4]
    assert pipeline.options == FakeOptions()


def test_every_decoding_option_reaches_the_pipeline(load_calls: list[dict[str, Any]]) -> None:
    engine, pipeline = _engine("large-v3")
    before = _snapshot(pipeline)
    options = AsrOptions(
        best_of=3,
        patience=1.5,
        length_penalty=0.8,
        temperatures=[0.0, 0.5],
        compression_ratio_threshold=2.0,
        log_prob_threshold=-0.5,
        no_speech_threshold=0.4,
        condition_on_previous_text=True,
        hotwords="Kennedy Berlin",
        suppress_numerals=True,
    )
    engine.transcribe(AUDIO, AsrRequest(options=options))
    call = pipeline.calls[-1]
    applied = call["options"]
    assert (applied.best_of, applied.patience, applied.length_penalty) == (3, 1.5, 0.8)
    assert list(applied.temperatures) == [0.0, 0.5]
    assert (applied.compression_ratio_threshold, applied.log_prob_threshold) == (2.0, -0.5)
    assert (applied.no_speech_threshold, applied.condition_on_previous_text) == (0.4, True)
    assert applied.hotwords == "Kennedy Berlin"
    assert call["suppress_numerals"] is True
    assert _snapshot(pipeline) == before


def test_model_and_compute_type_pick_a_pipeline(load_calls: list[dict[str, Any]]) -> None:
    engine, default = _engine("tiny.en", models={"small": "small"}, max_loaded_models=2)
    engine.transcribe(AUDIO, AsrRequest(options=AsrOptions(model="small")))
    assert [c["model"] for c in load_calls] == ["tiny.en", "small"]
    assert default.calls == []
    engine.transcribe(AUDIO, AsrRequest(options=AsrOptions(model="small")))  # kept loaded
    assert len(load_calls) == 2
    engine.transcribe(AUDIO, AsrRequest(options=AsrOptions(compute_type="float32")))
    assert (load_calls[-1]["model"], load_calls[-1]["compute_type"]) == ("tiny.en", "float32")
    engine.transcribe(AUDIO, AsrRequest())  # the default was evicted (LRU of 2): reloaded
    assert (load_calls[-1]["model"], load_calls[-1]["compute_type"]) == ("tiny.en", "int8")


def test_unknown_model_rejected(load_calls: list[dict[str, Any]]) -> None:
    engine, _ = _engine("tiny.en")
    with pytest.raises(InvalidRequestError, match="not served here") as info:
        engine.transcribe(AUDIO, AsrRequest(options=AsrOptions(model="large-v9")))
    assert info.value.status_code == 422
    assert len(load_calls) == 1


def test_unsupported_compute_type_is_a_request_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import whisperx

    def load(model: str, device: str, **kwargs: Any) -> FakePipeline:
        if kwargs["compute_type"] == "float16":
            raise ValueError(
                "Requested float16 compute type, but the target device or backend do not "
                "support efficient float16 computation."
            )
        return FakePipeline(multilingual=False)

    monkeypatch.setattr(whisperx, "load_model", load)
    engine = AsrEngine(AsrConfig(model="tiny.en"))
    with pytest.raises(InvalidRequestError, match="compute type"):
        engine.transcribe(AUDIO, AsrRequest(options=AsrOptions(compute_type="float16")))
