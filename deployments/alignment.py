"""wav2vec2 forced alignment: a plain ``AlignmentEngine`` (no Ray) and its Serve deployment.

Aligners are loaded lazily per language and kept in a small thread-safe LRU cache. The
engine never reaches for the network when the process runs offline (``HF_HUB_OFFLINE`` /
``TRANSFORMERS_OFFLINE``): a default aligner that is not already cached is reported as
unsupported instead of being downloaded, and NLTK data must come from ``nltk_data``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from common.config import AlignConfig, check_replica_device
from common.errors import (
    InvalidRequestError,
    ModelUnavailableError,
    ProcessingError,
    ServiceError,
)
from common.logs import configure_service_logging, log_context
from common.schemas import AlignRequest, Char, Segment, Transcript, Word
from common.settings import Settings
from deployments.asr import check_device, resolve_model_path
from deployments.audio import SAMPLE_RATE
from deployments.model_stream import ModelProgress, ProgressCallback, stream_stoppable
from deployments.word_times import repair_word_times

logger = logging.getLogger(__name__)

Progress = ProgressCallback
_TRUE = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """Whether this process must not download models (the Hugging Face offline switches)."""
    return any(
        os.environ.get(k, "").strip().lower() in _TRUE
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _num(value: Any) -> float | None:
    """A finite float, or None for missing/NaN values from whisperx's pandas code."""
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) or math.isinf(number) else number


class AlignmentEngine:
    def __init__(self, config: AlignConfig, *, models_dir: Path | None = None) -> None:
        import nltk
        import torch

        check_device(config.device, "alignment")
        self._config = config
        self._models_dir = models_dir
        self._model_dir = (
            resolve_model_path(str(config.model_dir), models_dir) if config.model_dir else None
        )
        if config.nltk_data is not None:
            nltk_path = resolve_model_path(str(config.nltk_data), models_dir)
            if nltk_path not in nltk.data.path:
                nltk.data.path.insert(0, nltk_path)
            existing = os.environ.get("NLTK_DATA")
            os.environ["NLTK_DATA"] = os.pathsep.join(p for p in (nltk_path, existing) if p)
        if config.device == "cpu":
            torch.set_num_threads(config.cpu_threads)
        self._models: OrderedDict[str, tuple[Any, dict[str, Any]]] = OrderedDict()
        self._supported: dict[str, bool] = {}
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()

    # ------------------------------------------------------------------ models

    def _resolve(self, language: str, requested: str | None = None) -> tuple[str, str] | None:
        """(name to report, reference to load) for ``language``, or None.

        ``requested`` (a request's ``align_model``) must be one this deployment serves: a
        configured model, or a whisperx default when defaults are enabled.
        """
        if requested is not None:
            configured = set(self._config.models.values())
            if requested in configured:
                return requested, resolve_model_path(requested, self._models_dir)
            if self._config.use_default_models and requested in _default_models():
                return requested, requested
            raise InvalidRequestError(
                f"The alignment model '{requested}' is not served here.",
                f"align_model {requested!r} not configured; configured: {sorted(configured)}",
            )
        name = self._config.models.get(language)
        if name is not None:
            return name, resolve_model_path(name, self._models_dir)
        if self._config.use_default_models:
            from whisperx.alignment import DEFAULT_ALIGN_MODELS_HF, DEFAULT_ALIGN_MODELS_TORCH

            default = DEFAULT_ALIGN_MODELS_TORCH.get(language) or DEFAULT_ALIGN_MODELS_HF.get(
                language
            )
            if default is not None:
                return default, default
        return None

    def model_name(self, language: str, requested: str | None = None) -> str | None:
        resolved = self._resolve(language.lower(), requested)
        return resolved[0] if resolved else None

    def supports(self, language: str) -> bool:
        language = language.lower()
        with self._lock:
            if language in self._supported:
                return self._supported[language]
        resolved = self._resolve(language)
        if resolved is None:
            answer = False
        elif language in self._config.models:
            name = resolved[0]
            looks_local = name.startswith((".", "/", "~")) or Path(resolved[1]).exists()
            answer = Path(resolved[1]).exists() if looks_local else True
        else:  # a whisperx default: only if it can actually be loaded here
            try:
                self._get_model(language)
                answer = True
            except ServiceError as exc:
                logger.warning("no aligner for %s: %s", language, exc)
                answer = False
        with self._lock:
            self._supported[language] = answer
        return answer

    def _get_model(self, language: str, requested: str | None = None) -> tuple[Any, dict[str, Any]]:
        key = f"{language}|{requested or ''}"
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
        with self._load_lock:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            loaded = self._load(language, requested)
            with self._lock:
                self._models[key] = loaded
                while len(self._models) > self._config.max_cached_models:
                    evicted, _ = self._models.popitem(last=False)
                    logger.info("evicted alignment model for %s", evicted)
            return loaded

    def _load(self, language: str, requested: str | None = None) -> tuple[Any, dict[str, Any]]:
        import whisperx

        resolved = self._resolve(language, requested)
        if resolved is None:
            raise ModelUnavailableError(
                f"No word-alignment model is available for language '{language}'.",
                f"no aligner configured for language={language}",
            )
        name, ref = resolved
        offline = hub_offline()
        if offline and not self._torchaudio_cached(ref):
            raise ModelUnavailableError(
                f"The alignment model '{name}' is not available offline.",
                f"torchaudio bundle {ref} not in the local cache and downloads are disabled",
            )
        started = time.perf_counter()
        try:
            model, metadata = whisperx.load_align_model(
                language,
                self._config.device,
                model_name=ref,
                model_dir=self._model_dir,
                model_cache_only=offline,
            )
        except Exception as exc:
            raise ModelUnavailableError.from_exception(
                exc, f"The alignment model '{name}' for language '{language}' could not be loaded."
            ) from exc
        logger.info(
            "loaded alignment model %s for %s in %.2f s",
            name,
            language,
            time.perf_counter() - started,
        )
        return model, metadata

    def _torchaudio_cached(self, ref: str) -> bool:
        """False only for a torchaudio bundle whose weights are not on disk (others: True)."""
        import torch
        import torchaudio

        if ref not in torchaudio.pipelines.__all__:
            return True
        filename = os.path.basename(getattr(torchaudio.pipelines, ref)._path)
        folder = self._model_dir or os.path.join(torch.hub.get_dir(), "checkpoints")
        return os.path.isfile(os.path.join(folder, filename))

    def _check_punkt(self, language: str) -> None:
        import nltk
        from whisperx.utils import PUNKT_LANGUAGES

        punkt = PUNKT_LANGUAGES.get(language, "english")
        try:
            nltk.data.load(f"tokenizers/punkt_tab/{punkt}.pickle")
        except LookupError as exc:
            if hub_offline():  # whisperx would call nltk.download(), which cannot work offline
                raise ModelUnavailableError(
                    "Sentence-splitting data for word alignment is missing on the server.",
                    f"NLTK punkt_tab/{punkt} not found on nltk.data.path; set alignment.nltk_data",
                ) from exc

    # ------------------------------------------------------------------ alignment

    def align(
        self, audio: np.ndarray, req: AlignRequest, progress: Progress | None = None
    ) -> Transcript:
        import whisperx

        transcript, options = req.transcript, req.options
        language = (transcript.language or "").lower()
        if options.align_model is None and not self.supports(language):
            raise ModelUnavailableError(
                f"No word-alignment model is available for language '{language}'.",
                f"no usable aligner for language={language}",
            )
        model, metadata = self._get_model(language, options.align_model)
        self._check_punkt(language)
        started = time.perf_counter()
        segments: list[Segment] = []
        total = len(transcript.segments)
        for index, segment in enumerate(transcript.segments):
            item: dict[str, Any] = {
                "start": segment.start,
                "end": segment.end,
                "text": segment.text,
            }
            try:
                result = whisperx.align(
                    [item],
                    model,
                    metadata,
                    audio,
                    self._config.device,
                    interpolate_method=options.interpolate_method,
                    return_char_alignments=options.return_char_alignments,
                )
            except Exception as exc:
                raise ProcessingError.from_exception(exc, "Word alignment failed.") from exc
            segments.extend(_to_segments(segment, result.get("segments", [])))
            if progress is not None:
                progress((index + 1) / total * 100.0)
        if progress is not None and total == 0:
            progress(100.0)
        elapsed, duration = time.perf_counter() - started, audio.shape[0] / SAMPLE_RATE
        logger.info(
            "aligned %d segments (%.1f s of audio) in %.2f s (RTF %.3f)",
            total,
            duration,
            elapsed,
            elapsed / duration if duration else 0.0,
        )
        return transcript.model_copy(
            update={
                "segments": segments,
                "word_timestamps": "wav2vec2",
                "alignment_model": self.model_name(language, options.align_model),
            }
        )


def _to_segments(original: Segment, aligned: list[dict[str, Any]]) -> list[Segment]:
    """whisperx's sentence sub-segments of ``original``; the original when nothing aligned."""
    out: list[Segment] = []
    for sub in aligned:
        words = [
            Word(
                word=str(w["word"]),
                start=_num(w.get("start")),
                end=_num(w.get("end")),
                score=_num(w.get("score")),
            )
            for w in sub.get("words", [])
        ]
        text = str(sub.get("text", "")).strip()
        if not words:  # no alignable characters: keep the words, without times
            words = [Word(word=w) for w in text.split()]
        start, end = _num(sub.get("start")), _num(sub.get("end"))
        start = original.start if start is None else start
        end = original.end if end is None else end
        chars = sub.get("chars")
        out.append(
            Segment(
                start=start,
                end=end,
                text=text,
                speaker=original.speaker,
                # interpolation gives a word with no alignable character (a number, a
                # symbol) its neighbour's times: spread them so none is zero-length
                words=repair_word_times(words, start, end),
                chars=None if chars is None else [_char(c) for c in chars],
                avg_logprob=original.avg_logprob,
                repetition=original.repetition,
            )
        )
    if not out:
        out.append(
            original.model_copy(update={"words": [Word(word=w) for w in original.text.split()]})
        )
    return out


def _char(item: dict[str, Any]) -> Char:
    return Char(
        char=str(item.get("char", "")),
        start=_num(item.get("start")),
        end=_num(item.get("end")),
        score=_num(item.get("score")),
    )


def _default_models() -> set[str]:
    from whisperx.alignment import DEFAULT_ALIGN_MODELS_HF, DEFAULT_ALIGN_MODELS_TORCH

    return {*DEFAULT_ALIGN_MODELS_TORCH.values(), *DEFAULT_ALIGN_MODELS_HF.values()}


@serve.deployment(
    name="AlignmentDeployment", max_ongoing_requests=4, ray_actor_options={"num_cpus": 0.5}
)
class AlignmentDeployment:
    """Streams each alignment's progress, then its transcript (``deployments.model_stream``)."""

    def __init__(self, config: AlignConfig, *, models_dir: Path | None = None) -> None:
        configure_service_logging(Settings().log_level)
        check_replica_device(config.device, "AlignmentDeployment")
        self._engine = AlignmentEngine(config, models_dir=models_dir)

    async def supports(self, language: str) -> bool:
        return await asyncio.to_thread(self._engine.supports, language)

    async def align(
        self, audio: np.ndarray, req: AlignRequest
    ) -> AsyncIterator[ModelProgress | Transcript]:
        def work(report: Progress) -> Transcript:
            with log_context(request_id=req.request_id):
                return self._engine.align(audio, req, report)

        async for item in stream_stoppable(work):
            yield item

    def ping(self) -> bool:
        return True
