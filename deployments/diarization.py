"""Speaker diarization: a pyannote engine and its Ray Serve deployment.

``DiarizationEngine`` loads a pyannote pipeline once and diarizes 16 kHz mono audio. It
either loads a whole pipeline (``config.pipeline``: a hub name or a local folder) or, for
offline use, builds pyannote's ``SpeakerDiarization`` from parts: a segmentation
checkpoint and the CAM++ speaker embedding, clustered agglomeratively on cosine distance.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import serve

from common.config import DiarizationConfig, check_replica_device
from common.errors import (
    ConfigurationError,
    InvalidAudioError,
    InvalidRequestError,
    ModelUnavailableError,
    ProcessingError,
    ServiceError,
)
from common.logs import configure_service_logging, log_context
from common.schemas import DiarizeRequest, SpeakerTurn, Transcript
from common.settings import Settings
from deployments.audio import SAMPLE_RATE
from deployments.model_stream import ModelProgress, ProgressCallback, stream_stoppable

logger = logging.getLogger(__name__)

VBX_FA, VBX_FB = 0.07, 0.8
"""community-1's VBx hyper-parameters, used only with a 256-dimensional embedding and its PLDA."""
# Share of the stage's progress for pyannote's two tracked steps. Measured on a 5-minute
# clip (CPU, CAM++): segmentation took ~15% of the stage's time, embeddings ~85%; an even
# split made the bar race through the first half and crawl through the second.
_STEP_RANGES = {"segmentation": (0.0, 15.0), "embeddings": (15.0, 99.0)}

Progress = ProgressCallback


def _resolve(path: Path, models_dir: Path | None) -> Path:
    return path if path.is_absolute() or models_dir is None else models_dir / path


def _resolve_pipeline(name: str, models_dir: Path | None) -> str:
    """A local folder (absolute, or relative to ``models_dir``) or else a hub name, as given."""
    local = _resolve(Path(name), models_dir)
    return str(local) if local.exists() else name


def _plda_dimension(plda_dir: Path) -> int:
    with np.load(plda_dir / "xvec_transform.npz") as transform:
        return int(transform["mean1"].shape[0])


def _placeholder_plda() -> Any:
    """pyannote's constructor insists on a PLDA even when its clustering never uses one."""
    from pyannote.audio.core.plda import PLDA

    class _NoPLDA(PLDA):
        def __init__(self) -> None:  # nothing to load
            pass

        def __call__(self, embeddings: np.ndarray) -> np.ndarray:
            raise RuntimeError("no PLDA is configured")

    return _NoPLDA()


class _ProgressHook:
    """Maps pyannote's per-step ``completed/total`` hook calls onto one monotonic 0-100 range."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._last = 0.0

    def __call__(
        self,
        step: str,
        artifact: Any = None,
        file: Any = None,
        total: int | None = None,
        completed: int | None = None,
    ) -> None:
        if not total or completed is None:
            return
        start, end = _STEP_RANGES.get(step, (0.0, 99.0))
        pct = start + min(completed / total, 1.0) * (end - start)
        if pct > self._last:
            self._last = pct
            self._progress(pct)


class DiarizationEngine:
    """Loads the diarization pipeline once; ``diarize`` labels speakers in one recording."""

    def __init__(
        self,
        config: DiarizationConfig,
        *,
        models_dir: Path | None = None,
        hf_token: str | None = None,
    ) -> None:
        if config.device == "cuda" and not torch.cuda.is_available():
            raise ConfigurationError(
                "Diarization is configured for a GPU, but none is available.",
                "DiarizationConfig.device is 'cuda' but torch.cuda.is_available() is False",
            )
        if config.device == "cpu":
            torch.set_num_threads(config.cpu_threads)
        self._config = config
        self._device = torch.device(config.device)
        started = time.perf_counter()
        try:
            if config.pipeline is not None:
                self._pipeline = self._load_pipeline(config.pipeline, models_dir, hf_token)
            else:
                self._pipeline = self._build_pipeline(models_dir)
            self._pipeline.to(self._device)
            from deployments.diarization_pipeline import BatchedCamppDiarization

            if isinstance(self._pipeline, BatchedCamppDiarization):
                self._pipeline.network()  # the frozen CPU graph, built now, not in a task
        except ServiceError:
            raise
        except Exception as e:
            raise ModelUnavailableError.from_exception(
                e, "The speaker diarization model could not be loaded."
            ) from e
        logger.info(
            "loaded diarization pipeline %s on %s in %.2fs",
            config.pipeline or "from parts (segmentation + CAM++)",
            self._device,
            time.perf_counter() - started,
        )

    @staticmethod
    def _load_pipeline(name: str, models_dir: Path | None, hf_token: str | None) -> Any:
        from pyannote.audio import Pipeline

        checkpoint = _resolve_pipeline(name, models_dir)
        pipeline = Pipeline.from_pretrained(checkpoint, token=hf_token)
        if pipeline is None:
            raise ModelUnavailableError(
                "The speaker diarization model could not be loaded.",
                f"Pipeline.from_pretrained({checkpoint!r}) returned None (gated model, no token?)",
            )
        return pipeline

    def _build_pipeline(self, models_dir: Path | None) -> Any:
        from pyannote.audio import Model
        from pyannote.audio.core.plda import PLDA
        from pyannote.audio.pipelines import SpeakerDiarization

        from deployments.campplus import load_campplus

        config = self._config
        assert config.segmentation is not None and config.embedding is not None  # config validator
        segmentation_path = _resolve(config.segmentation, models_dir)
        embedding_path = _resolve(config.embedding, models_dir)
        for what, path in (("segmentation", segmentation_path), ("embedding", embedding_path)):
            if not path.exists():
                raise ConfigurationError(
                    f"The diarization {what} model is missing.",
                    f"{what} path {path} does not exist",
                )
        segmentation = Model.from_pretrained(str(segmentation_path))
        if segmentation is None:
            raise ModelUnavailableError(
                "The speaker diarization model could not be loaded.",
                f"pyannote could not load the segmentation checkpoint {segmentation_path}",
            )
        embedding = load_campplus(embedding_path, torch.device("cpu"))

        plda: Any = None
        if config.plda is not None:
            plda_path = _resolve(config.plda, models_dir)
            plda_dim = _plda_dimension(plda_path)
            if plda_dim == embedding.dimension:
                plda = PLDA.from_pretrained(str(plda_path))
            else:
                logger.warning(
                    "ignoring PLDA %s: it expects %d-dimensional embeddings but the embedding "
                    "model produces %d; clustering agglomeratively on cosine distance instead",
                    plda_path,
                    plda_dim,
                    embedding.dimension,
                )

        if plda is None:
            from deployments.diarization_pipeline import (
                BatchedCamppDiarization,
                ClusteringParams,
            )

            pipeline = BatchedCamppDiarization(
                segmentation=segmentation,
                campplus=embedding,
                embedding_quantum=config.embedding_quantum,
                embedding_max_seconds=config.embedding_max_seconds,
                embedding_stride=config.embedding_stride,
                embedding_frozen=config.embedding_frozen,
                clustering_params=ClusteringParams(
                    threshold=config.clustering_threshold,
                    min_cluster_seconds=config.min_cluster_seconds,
                    min_active_seconds=config.min_active_seconds,
                    merge_distance=config.merge_distance,
                ),
                segmentation_step=config.segmentation_step,
                embedding_exclude_overlap=True,
                plda=_placeholder_plda(),
                clustering="AgglomerativeClustering",  # replaced by CosineClustering
                embedding_batch_size=config.embedding_batch_size,
                segmentation_batch_size=16,
            )
            pipeline.instantiate({"segmentation": {"min_duration_off": config.min_duration_off}})
            return pipeline
        pipeline = SpeakerDiarization(
            segmentation=segmentation,
            embedding=embedding,
            embedding_exclude_overlap=True,  # as pyannote 3.1 and community-1 do
            plda=plda,
            clustering="VBxClustering",
            segmentation_step=config.segmentation_step,
            embedding_batch_size=config.embedding_batch_size,
            segmentation_batch_size=16,
        )
        pipeline.instantiate(
            {
                "segmentation": {"min_duration_off": config.min_duration_off},
                "clustering": {
                    "threshold": config.clustering_threshold,
                    "Fa": VBX_FA,
                    "Fb": VBX_FB,
                },
            }
        )
        return pipeline

    def diarize(
        self, audio: np.ndarray, req: DiarizeRequest, progress: Progress | None = None
    ) -> Transcript:
        """Diarize 16 kHz mono float32 ``audio``; label ``req.transcript`` when one is given."""
        if audio.ndim != 1:
            raise InvalidAudioError(
                "Audio must be mono.", f"expected a 1-D array, got shape {audio.shape}"
            )
        lo, hi = req.min_speakers, req.max_speakers
        if lo is not None and hi is not None and lo > hi:
            raise InvalidRequestError(
                "min_speakers must not exceed max_speakers.",
                f"min_speakers={lo} > max_speakers={hi}",
            )
        try:
            turns = self._turns(audio, req, progress)
            speakers = sorted({t.speaker for t in turns})
            if req.transcript is None:
                transcript = Transcript()
            else:
                transcript = self._assign(req.transcript, turns)
        except ServiceError:
            raise
        except Exception as e:
            raise ProcessingError.from_exception(e, "Speaker diarization failed.") from e
        if progress is not None:
            progress(100.0)
        return transcript.model_copy(update={"speaker_turns": turns, "speakers": speakers})

    def _turns(
        self, audio: np.ndarray, req: DiarizeRequest, progress: Progress | None
    ) -> list[SpeakerTurn]:
        if audio.shape[0] < self._min_num_samples():
            logger.info(
                "audio too short to diarize (%d samples)",
                audio.shape[0],
            )
            return []
        waveform = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
        output = self._pipeline(
            {"waveform": waveform, "sample_rate": SAMPLE_RATE},
            num_speakers=req.num_speakers,
            min_speakers=req.min_speakers,
            max_speakers=req.max_speakers,
            hook=_ProgressHook(progress) if progress is not None else None,
        )
        # legacy pipelines return an Annotation rather than a DiarizeOutput
        annotation = getattr(output, "speaker_diarization", output)
        turns = [
            SpeakerTurn(start=round(seg.start, 3), end=round(seg.end, 3), speaker=str(label))
            for seg, _, label in annotation.itertracks(yield_label=True)
        ]
        return sorted(turns, key=lambda t: (t.start, t.end, t.speaker))

    def _min_num_samples(self) -> int:
        embedding = getattr(self._pipeline, "_embedding", None)
        return int(getattr(embedding, "min_num_samples", 0) or 0)

    def assign(self, transcript: Transcript, turns: list[SpeakerTurn]) -> Transcript:
        """Label ``transcript``'s words and segments with the speakers of ``turns``."""
        try:
            labelled = self._assign(transcript, turns)
        except Exception as e:
            raise ProcessingError.from_exception(e, "Combining speakers failed.") from e
        speakers = sorted({t.speaker for t in turns})
        return labelled.model_copy(update={"speaker_turns": turns, "speakers": speakers})

    @staticmethod
    def _assign(transcript: Transcript, turns: list[SpeakerTurn]) -> Transcript:
        return assign_speakers(transcript, turns)


NEAREST_TURN_SECONDS = 1.0
"""A timed word or segment that overlaps no turn takes the speaker of the nearest turn
within this distance (speech the segmentation missed at a turn's edge); further away it
stays unlabelled."""


def _speaker_of(start: float, end: float, turns: list[SpeakerTurn]) -> str | None:
    """The speaker who talks longest within [start, end]; for a zero-length span (a word
    whose start equals its end), the turn containing it; else the nearest turn close by.

    whisperx.assign_word_speakers drops zero-length words (their intersection with any turn
    is 0) and every word between two turns, so words inside a turn came back unlabelled."""
    overlap: dict[str, float] = {}
    inside: str | None = None
    nearest: tuple[float, str] | None = None
    for t in turns:
        shared = min(t.end, end) - max(t.start, start)
        if shared > 0:
            overlap[t.speaker] = overlap.get(t.speaker, 0.0) + shared
        elif t.start <= start <= t.end and inside is None:
            inside = t.speaker
        gap = max(t.start - end, start - t.end, 0.0)
        if nearest is None or gap < nearest[0]:
            nearest = (gap, t.speaker)
    if overlap:
        return max(overlap.items(), key=lambda kv: kv[1])[0]
    if inside is not None:
        return inside
    if nearest is not None and nearest[0] <= NEAREST_TURN_SECONDS:
        return nearest[1]
    return None


def assign_speakers(transcript: Transcript, turns: list[SpeakerTurn]) -> Transcript:
    """Label each timed word and each segment with the speaker of its turn; words without
    times keep no speaker, and so does everything when there are no turns."""
    if not turns:
        return transcript.model_copy(deep=True)
    segments = []
    for seg in transcript.segments:
        words = [
            w
            if w.start is None
            else w.model_copy(
                update={
                    "speaker": _speaker_of(w.start, w.end if w.end is not None else w.start, turns)
                }
            )
            for w in seg.words
        ]
        segments.append(
            seg.model_copy(
                update={"speaker": _speaker_of(seg.start, seg.end, turns), "words": words}
            )
        )
    return transcript.model_copy(update={"segments": segments})


@serve.deployment(
    name="DiarizationDeployment", max_ongoing_requests=4, ray_actor_options={"num_cpus": 0.5}
)
class DiarizationDeployment:
    """One pipeline per replica; requests run one at a time in a worker thread."""

    def __init__(
        self,
        config: DiarizationConfig,
        *,
        models_dir: Path | None = None,
    ) -> None:
        settings = Settings()
        configure_service_logging(settings.log_level)
        check_replica_device(config.device, "DiarizationDeployment")
        token = settings.hf_token  # a secret: read from the environment, never bind args
        self._engine = DiarizationEngine(
            config, models_dir=models_dir, hf_token=token.get_secret_value() if token else None
        )
        self._lock = threading.Lock()

    async def diarize(
        self, audio: np.ndarray, req: DiarizeRequest
    ) -> AsyncIterator[ModelProgress | Transcript]:
        """Streams the diarization's progress, then the (labelled) transcript."""

        def work(report: Progress) -> Transcript:
            with log_context(request_id=req.request_id):
                return self._locked_diarize(audio, req, report)

        async for item in stream_stoppable(work):
            yield item

    async def assign(self, transcript: Transcript, turns: list[SpeakerTurn]) -> Transcript:
        return await asyncio.to_thread(self._engine.assign, transcript, turns)

    def _locked_diarize(
        self, audio: np.ndarray, req: DiarizeRequest, progress: Progress | None
    ) -> Transcript:
        with self._lock:
            return self._engine.diarize(audio, req, progress)

    def ping(self) -> bool:
        return True
