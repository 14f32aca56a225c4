"""Whisper ASR: a plain ``AsrEngine`` (no Ray) and its thin Serve deployment.

The engine loads one whisperx ``FasterWhisperPipeline`` per replica. whisperx keeps decoding
options, VAD thresholds and the tokenizer on the pipeline object, so per-request options
are set and restored around each call under a lock: one transcription at a time per
engine, and nothing leaks into the next request.

Repetition loops: whisperx's batched decode has no temperature fallback, so each window's
text is checked (``deployments.repetition``); a repeating window is decoded once more with
faster-whisper's ``generate_with_fallback`` (without the prompt, or at the next
temperature), and what still loops past the audio's length is cut. ``Segment.repetition``
and the transcript's ``warnings`` say what happened.

Word timestamps come from Whisper itself: faster-whisper's own ``add_word_timestamps``
per transcript segment (``deployments.word_times.whisper_words``), then
``repair_word_times`` keeps every word inside its segment, in order and at least 50 ms long.

The deployment streams each call's progress to its caller, then the transcript
(``deployments.model_stream``); it knows nothing of tasks.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from common.asr_models import resolve_model_path
from common.config import AsrConfig, check_replica_device
from common.errors import (
    ConfigurationError,
    InvalidRequestError,
    ModelUnavailableError,
    ProcessingError,
    ServiceError,
)
from common.logs import configure_service_logging, log_context
from common.schemas import (
    AsrOptions,
    AsrRequest,
    Segment,
    Transcript,
    TranscriptWarning,
)
from common.settings import Settings
from deployments.audio import SAMPLE_RATE
from deployments.model_stream import ModelProgress, ProgressCallback, stream_stoppable
from deployments.repetition import cut_loop, find_loop, too_dense
from deployments.word_times import (
    MAX_WINDOW_SAMPLES,
    encode_window,
    segment_window,
    whisper_words,
)

__all__ = ["AsrDeployment", "AsrEngine", "check_device", "resolve_model_path"]

logger = logging.getLogger(__name__)

Progress = ProgressCallback

_FALLBACK_SEED = 0  # sampling in the fallback decode is reproducible
_TRANSCRIBE_SHARE = 90.0  # of the stage's 0-100 when word timestamps follow


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

        check_device(config.device, "ASR")
        self._config = config
        self._models_dir = models_dir
        if config.device == "cpu":
            # torch runs only pyannote's VAD LSTM here (Whisper itself uses CTranslate2's
            # cpu_threads). One thread: with 2, the LSTM's per-step barriers stalled for
            # 20-40 s instead of 0.2 s on a busy 2-core host.
            torch.set_num_threads(1)
        self._lock = threading.RLock()
        self._loaded: OrderedDict[tuple[str, str], _Loaded] = OrderedDict()
        default = self._get(None, None)
        self._pipeline: Any = default.pipeline
        self.multilingual = default.multilingual

    # ------------------------------------------------------------------ models

    @property
    def model_names(self) -> list[str]:
        """The names a request may give as ``model``."""
        return [self._config.model, *self._config.models]

    def _compute_type(self, requested: str | None) -> str:
        compute_type = requested or self._config.compute_type
        if compute_type == "default":
            compute_type = "float16" if self._config.device == "cuda" else "int8"
        return compute_type

    def _get(self, model: str | None, compute_type: str | None) -> _Loaded:
        """The pipeline for (model, compute type): loaded once, kept in a small LRU."""
        name = model or self._config.model
        if name not in self.model_names:
            raise InvalidRequestError(
                f"The model '{name}' is not served here. Available: "
                + ", ".join(repr(n) for n in self.model_names)
                + ".",
                f"unknown ASR model {name!r}",
            )
        key = (name, self._compute_type(compute_type))
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            loaded = self._load(*key)
            self._loaded[key] = loaded
            while len(self._loaded) > self._config.max_loaded_models:
                evicted, _ = self._loaded.popitem(last=False)
                logger.info("unloaded ASR model %s (%s)", *evicted)
            return loaded

    def _load(self, name: str, compute_type: str) -> _Loaded:
        import whisperx

        config = self._config
        ref = config.models.get(name, name)
        started = time.perf_counter()
        try:
            pipeline = whisperx.load_model(
                resolve_model_path(ref, self._models_dir),
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
        except ValueError as exc:
            if "compute type" in str(exc):  # CTranslate2: not supported on this device
                raise InvalidRequestError(
                    f"The compute type '{compute_type}' is not supported on this server's "
                    f"{config.device.upper()}.",
                    str(exc),
                ) from exc
            raise ModelUnavailableError.from_exception(
                exc, f"The speech recognition model '{name}' could not be loaded."
            ) from exc
        except Exception as exc:
            raise ModelUnavailableError.from_exception(
                exc, f"The speech recognition model '{name}' could not be loaded."
            ) from exc
        if config.vad_step_s is not None:
            # whisperx builds pyannote's sliding-window Inference with its default step
            # and has no option for it; its ``step`` is read on every call.
            pipeline.vad_model.vad_pipeline._segmentation.step = config.vad_step_s
        loaded = _Loaded(name, pipeline, bool(pipeline.model.model.is_multilingual))
        logger.info(
            "loaded ASR model %s (%s, %s, multilingual=%s) in %.2f s",
            name,
            config.device,
            compute_type,
            loaded.multilingual,
            time.perf_counter() - started,
        )
        return loaded

    # ------------------------------------------------------------------ requests

    def _validate(self, options: AsrOptions, loaded: _Loaded) -> tuple[str | None, str]:
        """The request's (language, task), or InvalidRequestError for what the model can't do."""
        language = options.language.lower() if options.language else self._config.language
        if not loaded.multilingual:
            if language not in (None, "en"):
                raise InvalidRequestError(
                    f"The model '{loaded.name}' is English-only and cannot transcribe "
                    f"language '{language}'. Leave the language unset or use 'en'.",
                    f"English-only model, requested language={language}",
                )
            if options.task == "translate":
                raise InvalidRequestError(
                    f"The model '{loaded.name}' is English-only and cannot translate. "
                    "Use task 'transcribe' or a multilingual model.",
                    "English-only model, requested task=translate",
                )
            return "en", "transcribe"
        supported = loaded.pipeline.model.supported_languages
        if language is not None and language not in supported:
            raise InvalidRequestError(
                f"Language '{language}' is not supported by the model '{loaded.name}'.",
                f"unknown language code {language}",
            )
        return language, options.task

    @staticmethod
    def _tokenizer(loaded: _Loaded, language: str, task: str) -> Any:
        from faster_whisper.tokenizer import Tokenizer

        model = loaded.pipeline.model
        return Tokenizer(model.hf_tokenizer, loaded.multilingual, task=task, language=language)

    def transcribe(
        self, audio: np.ndarray, req: AsrRequest, progress: Progress | None = None
    ) -> Transcript:
        opts = req.options
        duration = audio.shape[0] / SAMPLE_RATE
        share = _TRANSCRIBE_SHARE if req.word_timestamps else 100.0
        report = _StageProgress(progress, 0.0, share)
        with self._lock:
            loaded = self._get(opts.model, opts.compute_type)
            language, task = self._validate(opts, loaded)
            pipeline = loaded.pipeline
            saved = (
                pipeline.options,
                pipeline._vad_params,
                pipeline.tokenizer,
                pipeline.suppress_numerals,
            )
            started = time.perf_counter()
            try:
                pipeline.options = dataclasses.replace(saved[0], **_decoding_options(opts))
                vad = {"vad_onset": opts.vad_onset, "vad_offset": opts.vad_offset}
                pipeline._vad_params = {**saved[1], **_set(vad)}
                if opts.suppress_numerals is not None:
                    pipeline.suppress_numerals = opts.suppress_numerals
                if audio.size == 0:
                    result: dict[str, Any] = {"segments": [], "language": language or "en"}
                else:
                    result = pipeline.transcribe(
                        audio,
                        batch_size=opts.batch_size or self._config.batch_size,
                        language=language if loaded.multilingual else None,
                        task=task if loaded.multilingual else None,
                        chunk_size=opts.chunk_size or self._config.chunk_size,
                        progress_callback=report,
                    )
                segments = [_segment(item) for item in result["segments"]]
                warnings: list[TranscriptWarning] = []
                if self._config.repetition_fallback:
                    segments, warnings = _fix_repetitions(
                        audio,
                        segments,
                        pipeline,
                        lambda: self._tokenizer(loaded, result["language"], task),
                    )
            except ServiceError:
                raise
            except Exception as exc:
                raise ProcessingError.from_exception(exc, "Transcription failed.") from exc
            finally:
                (
                    pipeline.options,
                    pipeline._vad_params,
                    pipeline.tokenizer,
                    pipeline.suppress_numerals,
                ) = saved
            elapsed = time.perf_counter() - started
            transcript = Transcript(
                language=result["language"], segments=segments, warnings=warnings
            )
            logger.info(
                "transcribed %.1f s of audio in %.2f s (RTF %.3f, %d segments, language %s)",
                duration,
                elapsed,
                elapsed / duration if duration else 0.0,
                len(transcript.segments),
                transcript.language,
            )
            report(100.0)
            if req.word_timestamps:
                tokenizer = self._tokenizer(loaded, transcript.language or "en", task)
                transcript = self._word_timestamps(
                    audio, transcript, loaded, tokenizer, _StageProgress(progress, share, 100.0)
                )
        return transcript

    # ------------------------------------------------------------------ word timestamps

    def add_word_timestamps(
        self,
        audio: np.ndarray,
        transcript: Transcript,
        options: AsrOptions | None = None,
        progress: Progress | None = None,
    ) -> Transcript:
        """Whisper's own word timings for each segment of ``transcript``."""
        options = options or AsrOptions()
        with self._lock:
            loaded = self._get(options.model, options.compute_type)
            language = (transcript.language or "en") if loaded.multilingual else "en"
            if loaded.multilingual and language not in loaded.pipeline.model.supported_languages:
                raise InvalidRequestError(
                    f"Language '{language}' is not supported by the model '{loaded.name}'.",
                    f"unknown language code {language}",
                )
            tokenizer = self._tokenizer(loaded, language, "transcribe")
            return self._word_timestamps(
                audio, transcript, loaded, tokenizer, _StageProgress(progress)
            )

    def _word_timestamps(
        self,
        audio: np.ndarray,
        transcript: Transcript,
        loaded: _Loaded,
        tokenizer: Any,
        progress: _StageProgress,
    ) -> Transcript:
        started = time.perf_counter()
        segments: list[Segment] = []
        try:
            last_speech = 0.0
            for index, segment in enumerate(transcript.segments):
                words = whisper_words(
                    loaded.pipeline.model,
                    loaded.pipeline.options,
                    audio,
                    segment,
                    tokenizer,
                    last_speech,
                )
                segments.append(segment.model_copy(update={"words": words}))
                last_speech = segment.end
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


def _fix_repetitions(
    audio: np.ndarray, segments: list[Segment], pipeline: Any, tokenizer: Callable[[], Any]
) -> tuple[list[Segment], list[TranscriptWarning]]:
    """Each window checked for repetition; a repeating one decoded once more, differently.

    A clean retry replaces the text (``redecoded``). A retry that repeats too means the
    repetition is stable: cut when denser than the audio holds (``cut``), else left as
    decoded (``kept``). ``tokenizer`` makes the decode's tokenizer, only when needed.
    """
    threshold = pipeline.options.compression_ratio_threshold
    fixed: list[Segment] = []
    warnings: list[TranscriptWarning] = []
    for segment in segments:
        loop = find_loop(segment.text, threshold)
        if loop is None:
            fixed.append(segment)
            continue
        where = f"{segment.start:.1f}-{segment.end:.1f} s"
        retry = _redecode(pipeline, audio, segment, tokenizer())
        if retry is not None and retry[0] and find_loop(retry[0], threshold) is None:
            text, logprob, how = retry
            segment = segment.model_copy(
                update={"text": text, "avg_logprob": logprob, "repetition": "redecoded"}
            )
            code = "repetition_redecoded"
            message = (
                f"Whisper repeated itself at {where} ({loop.reason}); the window was "
                f"decoded again ({how}) and the new text replaced it."
            )
        elif loop.size and too_dense(segment.text, segment.end - segment.start):
            cut = cut_loop(segment.text, loop)
            dropped = len(segment.text.split()) - len(cut.split())
            segment = segment.model_copy(update={"text": cut, "repetition": "cut"})
            code = "repetition_cut"
            message = (
                f"Whisper looped at {where} ({loop.reason}), more words than the audio "
                f"holds, also when decoded again; the repeats were cut ({dropped} words)."
            )
        else:
            segment = segment.model_copy(update={"repetition": "kept"})
            code = "repetition_kept"
            message = (
                f"Whisper's text at {where} repeats ({loop.reason}) and repeats again when "
                "decoded differently; it fits the audio's length, so it was kept."
            )
        logger.warning("%s", message)
        warnings.append(
            TranscriptWarning(code=code, message=message, start=segment.start, end=segment.end)
        )
        fixed.append(segment)
    return fixed, warnings


def _redecode(
    pipeline: Any, audio: np.ndarray, segment: Segment, tokenizer: Any
) -> tuple[str, float, str] | None:
    """One window decoded once more, differently, with faster-whisper's own decode
    (``generate_with_fallback``): without the prompt when the request had one (beam search
    at the first temperature), otherwise at the request's next temperature (sampling,
    seeded). (text, average log probability, how), or None when there is no other way."""
    import ctranslate2

    model, options = pipeline.model, pipeline.options
    temperatures = list(options.temperatures) or [0.0]
    prompted = bool(options.initial_prompt or options.hotwords or options.prefix)
    higher = [t for t in temperatures if t > temperatures[0]]
    _, chunk = segment_window(audio, segment)
    if not (prompted or higher) or chunk.size == 0 or chunk.size > MAX_WINDOW_SAMPLES:
        return None
    temperature = temperatures[0] if prompted else higher[0]
    how = "without the prompt" if prompted else f"at temperature {temperature:g}"
    encoder_output, _ = encode_window(model, chunk)
    prompt = model.get_prompt(tokenizer, [], without_timestamps=True)
    retry_options = dataclasses.replace(options, temperatures=[temperature])
    ctranslate2.set_random_seed(_FALLBACK_SEED)
    result, logprob, _, _ = model.generate_with_fallback(
        encoder_output, prompt, tokenizer, retry_options
    )
    return str(tokenizer.decode(result.sequences_ids[0])).strip(), float(logprob), how


def _set(values: dict[str, Any]) -> dict[str, Any]:
    """The request options that were actually given."""
    return {key: value for key, value in values.items() if value is not None}


_DECODING_FIELDS = (
    "beam_size",
    "best_of",
    "patience",
    "length_penalty",
    "compression_ratio_threshold",
    "log_prob_threshold",
    "no_speech_threshold",
    "condition_on_previous_text",
    "initial_prompt",
    "hotwords",
)


def _decoding_options(opts: AsrOptions) -> dict[str, Any]:
    """faster-whisper ``TranscriptionOptions`` overrides from a request's options."""
    values = _set({name: getattr(opts, name) for name in _DECODING_FIELDS})
    if opts.temperatures is not None:
        values["temperatures"] = list(opts.temperatures)
    return values


@dataclasses.dataclass
class _Loaded:
    name: str
    pipeline: Any
    multilingual: bool


def _segment(item: dict[str, Any]) -> Segment:
    logprob = item.get("avg_logprob")
    return Segment(
        start=float(item["start"]),
        end=float(item["end"]),
        text=str(item["text"]).strip(),
        avg_logprob=None if logprob is None else float(logprob),
    )


@serve.deployment(name="AsrDeployment", max_ongoing_requests=4, ray_actor_options={"num_cpus": 0.5})
class AsrDeployment:
    """Streams each call's progress, then its transcript (``deployments.model_stream``)."""

    def __init__(self, config: AsrConfig, *, models_dir: Path | None = None) -> None:
        configure_service_logging(Settings().log_level)
        check_replica_device(config.device, "AsrDeployment")
        self._engine = AsrEngine(config, models_dir=models_dir)

    async def transcribe(
        self, audio: np.ndarray, req: AsrRequest
    ) -> AsyncIterator[ModelProgress | Transcript]:
        def work(report: Progress) -> Transcript:
            with log_context(request_id=req.request_id):
                return self._engine.transcribe(audio, req, report)

        async for item in stream_stoppable(work):
            yield item

    async def add_word_timestamps(
        self,
        audio: np.ndarray,
        transcript: Transcript,
        options: AsrOptions | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[ModelProgress | Transcript]:
        def work(report: Progress) -> Transcript:
            with log_context(request_id=request_id):
                return self._engine.add_word_timestamps(audio, transcript, options, report)

        async for item in stream_stoppable(work):
            yield item

    def ping(self) -> bool:
        return True
