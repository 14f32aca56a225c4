"""Whisper ASR: a plain ``AsrEngine`` (no Ray) and its thin Serve deployment.

The engine loads one whisperx ``FasterWhisperPipeline`` per replica. whisperx keeps decoding
options, VAD thresholds and the tokenizer on the pipeline object, so per-request options
are set and restored around each call under a lock: one transcription at a time per
engine, and nothing leaks into the next request.

Word timestamps come from Whisper itself (cross-attention DTW over the model's alignment
heads, as faster-whisper does) and are computed per transcript segment.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from common.config import AsrConfig
from common.errors import (
    ConfigurationError,
    InvalidRequestError,
    ModelUnavailableError,
    ProcessingError,
    ServiceError,
)
from common.schemas import AsrOptions, AsrRequest, Segment, TaskProgressStage, Transcript, Word
from deployments.audio import SAMPLE_RATE
from deployments.reporting import stage_reporter

logger = logging.getLogger(__name__)

Progress = Callable[[float], None]

_MAX_WINDOW_SAMPLES = 30 * SAMPLE_RATE  # Whisper's encoder window
_SENTENCE_END = ".\u3002!\uff01?\uff1f"  # as faster-whisper
_TRANSCRIBE_SHARE = 90.0  # of the stage's 0-100 when word timestamps follow


def resolve_model_path(name: str, models_dir: Path | None) -> str:
    """A local folder (relative names tried under ``models_dir`` first) or the name as given."""
    if models_dir is not None and not Path(name).is_absolute() and (models_dir / name).exists():
        return str((models_dir / name).resolve())
    return str(Path(name).resolve()) if Path(name).exists() else name


def check_device(device: str, stage: str) -> None:
    """Fail loudly when a config asks for CUDA on a machine without it."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(
            f"The {stage} deployment is configured for a GPU (device: cuda) but no CUDA GPU is "
            "available on this node. Set device: cpu or run it on a GPU node.",
            "torch.cuda.is_available() is False",
        )


class _StageProgress:
    """Maps whisperx's 0-100 into ``[low, high]`` of the caller's callback; never goes back."""

    def __init__(self, callback: Progress | None, low: float = 0.0, high: float = 100.0) -> None:
        self._callback, self._low, self._high, self.last = callback, low, high, -1.0

    def __call__(self, percentage: float) -> None:
        value = self._low + (self._high - self._low) * max(0.0, min(100.0, percentage)) / 100.0
        if self._callback is not None and value > self.last:
            self.last = value
            self._callback(value)


class AsrEngine:
    def __init__(self, config: AsrConfig, *, models_dir: Path | None = None) -> None:
        import torch
        import whisperx

        check_device(config.device, "ASR")
        self._config = config
        compute_type = config.compute_type
        if compute_type == "default":
            compute_type = "float16" if config.device == "cuda" else "int8"
        if config.device == "cpu":
            # torch runs only pyannote's VAD LSTM here (Whisper itself uses CTranslate2's
            # cpu_threads). One thread: with 2, the LSTM's per-step barriers stalled for
            # 20-40 s instead of 0.2 s on a busy 2-core host.
            torch.set_num_threads(1)
        model_ref = resolve_model_path(config.model, models_dir)
        started = time.perf_counter()
        try:
            self._pipeline: Any = whisperx.load_model(
                model_ref,
                config.device,
                compute_type=compute_type,
                language=config.language,
                vad_options={
                    "vad_onset": config.vad_onset,
                    "vad_offset": config.vad_offset,
                    "chunk_size": config.chunk_size,
                },
                download_root=str(config.download_root) if config.download_root else None,
                local_files_only=config.local_files_only,
                threads=config.cpu_threads,
            )
        except Exception as exc:
            raise ModelUnavailableError.from_exception(
                exc, f"The speech recognition model '{config.model}' could not be loaded."
            ) from exc
        self._lock = threading.RLock()
        self.multilingual = bool(self._pipeline.model.model.is_multilingual)
        logger.info(
            "loaded ASR model %s (%s, %s, multilingual=%s) in %.2f s",
            config.model,
            config.device,
            compute_type,
            self.multilingual,
            time.perf_counter() - started,
        )

    # ------------------------------------------------------------------ requests

    def _validate(self, options: AsrOptions) -> tuple[str | None, str]:
        """The request's (language, task), or InvalidRequestError for what the model can't do."""
        language = options.language.lower() if options.language else self._config.language
        if not self.multilingual:
            if language not in (None, "en"):
                raise InvalidRequestError(
                    f"The model '{self._config.model}' is English-only and cannot transcribe "
                    f"language '{language}'. Leave the language unset or use 'en'.",
                    f"English-only model, requested language={language}",
                )
            if options.task == "translate":
                raise InvalidRequestError(
                    f"The model '{self._config.model}' is English-only and cannot translate. "
                    "Use task 'transcribe' or a multilingual model.",
                    "English-only model, requested task=translate",
                )
            return "en", "transcribe"
        supported = self._pipeline.model.supported_languages
        if language is not None and language not in supported:
            raise InvalidRequestError(
                f"Language '{language}' is not supported by the model '{self._config.model}'.",
                f"unknown language code {language}",
            )
        return language, options.task

    def _tokenizer(self, language: str, task: str) -> Any:
        from faster_whisper.tokenizer import Tokenizer

        model = self._pipeline.model
        return Tokenizer(model.hf_tokenizer, self.multilingual, task=task, language=language)

    def transcribe(
        self, audio: np.ndarray, req: AsrRequest, progress: Progress | None = None
    ) -> Transcript:
        language, task = self._validate(req.options)
        opts, pipeline = req.options, self._pipeline
        duration = audio.shape[0] / SAMPLE_RATE
        share = _TRANSCRIBE_SHARE if req.word_timestamps else 100.0
        report = _StageProgress(progress, 0.0, share)
        with self._lock:
            saved = (pipeline.options, pipeline._vad_params, pipeline.tokenizer)
            started = time.perf_counter()
            try:
                decoding = {"beam_size": opts.beam_size, "initial_prompt": opts.initial_prompt}
                vad = {"vad_onset": opts.vad_onset, "vad_offset": opts.vad_offset}
                pipeline.options = dataclasses.replace(saved[0], **_set(decoding))
                pipeline._vad_params = {**saved[1], **_set(vad)}
                if audio.size == 0:
                    result: dict[str, Any] = {"segments": [], "language": language or "en"}
                else:
                    result = pipeline.transcribe(
                        audio,
                        batch_size=opts.batch_size or self._config.batch_size,
                        language=language if self.multilingual else None,
                        task=task if self.multilingual else None,
                        chunk_size=opts.chunk_size or self._config.chunk_size,
                        progress_callback=report,
                    )
            except ServiceError:
                raise
            except Exception as exc:
                raise ProcessingError.from_exception(exc, "Transcription failed.") from exc
            finally:
                pipeline.options, pipeline._vad_params, pipeline.tokenizer = saved
            elapsed = time.perf_counter() - started
            segments = [_segment(item) for item in result["segments"]]
            transcript = Transcript(language=result["language"], segments=segments)
            logger.info(
                "transcribed %.1f s of audio in %.2f s (RTF %.3f, %d segments, language %s)",
                duration,
                elapsed,
                elapsed / duration if duration else 0.0,
                len(transcript.segments),
                transcript.language,
                extra={"task_id": req.task_id},
            )
            report(100.0)
            if req.word_timestamps:
                tokenizer = self._tokenizer(transcript.language, task)
                transcript = self._word_timestamps(
                    audio, transcript, tokenizer, _StageProgress(progress, share, 100.0)
                )
        return transcript

    # ------------------------------------------------------------------ word timestamps

    def add_word_timestamps(
        self, audio: np.ndarray, transcript: Transcript, progress: Progress | None = None
    ) -> Transcript:
        """Whisper's own word timings for each segment of ``transcript``."""
        language = transcript.language if self.multilingual else "en"
        if self.multilingual and language not in self._pipeline.model.supported_languages:
            raise InvalidRequestError(
                f"Language '{language}' is not supported by the model '{self._config.model}'.",
                f"unknown language code {language}",
            )
        with self._lock:
            return self._word_timestamps(
                audio, transcript, self._tokenizer(language, "transcribe"), _StageProgress(progress)
            )

    def _word_timestamps(
        self, audio: np.ndarray, transcript: Transcript, tokenizer: Any, progress: _StageProgress
    ) -> Transcript:
        started = time.perf_counter()
        segments: list[Segment] = []
        try:
            for index, segment in enumerate(transcript.segments):
                words = self._segment_words(audio, segment, tokenizer)
                segments.append(segment.model_copy(update={"words": words}))
                progress((index + 1) / len(transcript.segments) * 100.0)
        except Exception as exc:
            raise ProcessingError.from_exception(exc, "Word timestamps failed.") from exc
        progress(100.0)
        logger.info(
            "whisper word timestamps for %d segments in %.2f s",
            len(segments),
            time.perf_counter() - started,
        )
        return transcript.model_copy(
            update={"segments": segments, "word_timestamps": "whisper", "alignment_model": None}
        )

    def _segment_words(self, audio: np.ndarray, segment: Segment, tokenizer: Any) -> list[Word]:
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.transcribe import merge_punctuations

        model, options = self._pipeline.model, self._pipeline.options
        first = max(0, round(segment.start * SAMPLE_RATE))
        last = min(audio.shape[0], round(segment.end * SAMPLE_RATE))
        chunk = np.ascontiguousarray(audio[first:last], dtype=np.float32)
        text = segment.text.strip()
        if chunk.size == 0 or not text:
            return []
        if chunk.size > _MAX_WINDOW_SAMPLES:
            logger.warning(
                "segment %.2f-%.2f s exceeds 30 s; no word timestamps", segment.start, segment.end
            )
            return []
        features = model.feature_extractor(chunk)[..., :-1]
        num_frames = int(features.shape[-1])
        encoder_output = model.encode(pad_or_trim(features))
        tokens = [t for t in tokenizer.encode(" " + text) if t < tokenizer.eot]
        alignments = model.find_alignment(tokenizer, [tokens], encoder_output, num_frames)
        alignment: list[dict[str, Any]] = alignments[0] if alignments else []
        if not alignment:
            return []
        max_duration = _limit_sentence_boundaries(alignment)
        merge_punctuations(alignment, options.prepend_punctuations, options.append_punctuations)
        offset, end_bound = first / SAMPLE_RATE, max(segment.end, first / SAMPLE_RATE)
        words: list[Word] = []
        for item in alignment:
            word = str(item["word"]).strip()
            if not word:
                continue
            start = min(offset + float(item["start"]), end_bound)
            end = min(max(offset + float(item["end"]), start), end_bound)
            words.append(
                Word(
                    word=word,
                    start=round(start, 3),
                    end=round(end, 3),
                    score=round(float(item["probability"]), 3),
                )
            )
        # The first word after a pause tends to absorb the silence before it.
        head = words[0] if words else None
        if head and head.start is not None and head.end is not None and max_duration > 0:
            head.start = round(max(offset, head.start, head.end - max_duration), 3)
        return words


def _set(values: dict[str, Any]) -> dict[str, Any]:
    """The request options that were actually given."""
    return {key: value for key, value in values.items() if value is not None}


def _segment(item: dict[str, Any]) -> Segment:
    logprob = item.get("avg_logprob")
    return Segment(
        start=float(item["start"]),
        end=float(item["end"]),
        text=str(item["text"]).strip(),
        avg_logprob=None if logprob is None else float(logprob),
    )


def _limit_sentence_boundaries(alignment: list[dict[str, Any]]) -> float:
    """faster-whisper's heuristic: cap words at sentence ends to 2x the median word length."""
    durations = np.array([w["end"] - w["start"] for w in alignment], dtype=np.float64)
    durations = durations[durations.nonzero()]
    if durations.size == 0:
        return 0.0
    max_duration = 2 * min(0.7, float(np.median(durations)))
    for i in range(1, len(alignment)):
        if alignment[i]["end"] - alignment[i]["start"] > max_duration:
            if alignment[i]["word"] in _SENTENCE_END:
                alignment[i]["end"] = alignment[i]["start"] + max_duration
            elif alignment[i - 1]["word"] in _SENTENCE_END:
                alignment[i]["start"] = alignment[i]["end"] - max_duration
    return max_duration


@serve.deployment(name="AsrDeployment", max_ongoing_requests=4)
class AsrDeployment:
    def __init__(self, config: AsrConfig, *, app_name: str, models_dir: Path | None = None) -> None:
        self._app_name = app_name
        self._engine = AsrEngine(config, models_dir=models_dir)

    async def transcribe(self, audio: np.ndarray, req: AsrRequest) -> Transcript:
        progress = stage_reporter(self._app_name, req.task_id, TaskProgressStage.transcribing)
        return await asyncio.to_thread(self._engine.transcribe, audio, req, progress)

    async def add_word_timestamps(self, audio: np.ndarray, transcript: Transcript) -> Transcript:
        return await asyncio.to_thread(self._engine.add_word_timestamps, audio, transcript)

    def ping(self) -> bool:
        return True
