"""Audio decoding and upload-time probing with PyAV (no ffmpeg binary needed).

``decode_audio`` turns any file FFmpeg can read (audio or video) into 16 kHz mono float32,
the input every model stage expects. ``probe_audio`` is the cheap check the ingress runs
on an upload before accepting a task: it opens the container, insists on an audio stream
and reports the duration without decoding the samples.

A task's audio is decoded once, by :class:`RayDecoder`: a Ray task (``decode_num_cpus``
CPUs, not the 0.1-CPU runner) on whichever node has room reads the file from the blob
store and decodes it; its return value is the one copy of the samples in Ray's object
store, and every model stage is handed the same ``ObjectRef`` (zero-copy, read-only).

Both raise :class:`InvalidAudioError` (422) with a message fit for the user and a one-line
technical detail that never contains the server-side file path.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from common.errors import InvalidAudioError
from common.settings import Settings
from storage.blobs import (
    BlobStore,
    LocalBlobStore,
    blob_store_from,
    copy_to_file,
    require_cluster_readable,
)
from storage.db import Database

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000

_NOT_AUDIO = "The file could not be read as audio or video. Upload a valid audio or video file."
_NO_AUDIO_STREAM = "The file has no audio track."
_NO_SAMPLES = "The file contains no audio samples."


def _detail(exc: BaseException) -> str:
    """``Type: reason`` without the file name PyAV appends to its messages."""
    reason = getattr(exc, "strerror", None) or str(exc)
    return f"{type(exc).__name__}: {reason}"


def probe_audio(path: Path, max_frames: int = 64) -> float:
    """Check that ``path`` holds decodable audio; return its duration in seconds (-1 if unknown).

    Reads the container header and decodes up to the first audio frame that has samples,
    so it stays cheap for long files but catches bytes a demuxer accepts by file extension
    alone (e.g. text named ``.flac``). A file whose body is truncated after a valid start
    passes here and decodes short later in :func:`decode_audio`.
    """
    import av

    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.audio:
                raise InvalidAudioError(_NO_AUDIO_STREAM, "container has no audio stream")
            stream = container.streams.audio[0]
            if not any(
                frame.samples > 0
                for _, frame in zip(range(max_frames), container.decode(stream), strict=False)
            ):
                raise InvalidAudioError(
                    _NO_SAMPLES, "no decodable audio frame at the start of the stream"
                )
            if stream.duration is not None and stream.time_base is not None:
                return float(stream.duration * stream.time_base)
            if container.duration is not None:
                return float(container.duration) / av.time_base
            return -1.0
    except InvalidAudioError:
        raise
    except Exception as exc:  # PyAV raises FFmpegError subclasses, OSError, ValueError, ...
        raise InvalidAudioError(_NOT_AUDIO, _detail(exc)) from exc


def decode_audio(path: Path) -> np.ndarray:
    """Decode ``path`` to 16 kHz mono float32 samples in [-1, 1].

    Raises InvalidAudioError for files PyAV cannot open or decode, files without an audio
    stream, and files that decode to zero samples.
    """
    import av
    from faster_whisper import decode_audio as fw_decode_audio

    started = time.perf_counter()
    try:
        with av.open(str(path), mode="r") as container:
            has_audio = bool(container.streams.audio)
    except Exception as exc:
        raise InvalidAudioError(_NOT_AUDIO, _detail(exc)) from exc
    if not has_audio:
        raise InvalidAudioError(_NO_AUDIO_STREAM, "container has no audio stream")
    try:
        audio = fw_decode_audio(str(path), sampling_rate=SAMPLE_RATE)
    except Exception as exc:
        raise InvalidAudioError(_NOT_AUDIO, _detail(exc)) from exc
    samples = np.ascontiguousarray(audio, dtype=np.float32)
    if samples.size == 0:
        raise InvalidAudioError(_NO_SAMPLES, "decoder produced 0 samples")
    logger.debug(
        "decoded %.2f s of audio in %.3f s",
        samples.size / SAMPLE_RATE,
        time.perf_counter() - started,
    )
    return samples


AudioRef: TypeAlias = Any
"""A task's samples as the model clients get them: an ``ObjectRef`` to a float32 16 kHz
ndarray in production (Ray resolves it inside the replica, read-only), a plain ndarray
in unit tests."""


@dataclass(frozen=True)
class DecodedAudio:
    audio: AudioRef
    duration_s: float


def decode_blob(key: str) -> tuple[np.ndarray, float]:
    """Decode the blob ``key`` on this node: copied from the store (this node's settings
    say which) into this node's spool directory, decoded, the copy removed."""
    settings = Settings()
    db = Database(settings.resolved_database_url()) if settings.blob_store == "database" else None
    try:
        store = (
            blob_store_from(settings, db)
            if db is not None
            else LocalBlobStore(settings.upload_dir(), shared=settings.blob_dir_shared)
        )
        spool = settings.spool_dir()
        spool.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=spool, prefix="decode-", suffix=Path(key).suffix) as f:
            try:
                copy_to_file(store, key, f)
            except FileNotFoundError as exc:
                raise InvalidAudioError(
                    "The task's audio file is no longer stored.", f"blob {key!r} not found"
                ) from exc
            audio = decode_audio(Path(f.name))
    finally:
        if db is not None:
            db.dispose()
    return audio, audio.size / SAMPLE_RATE


class RayDecoder:
    """The pipeline's decoder in production: one Ray task per file (see the module doc)."""

    def __init__(self, num_cpus: float = 1.0) -> None:
        import ray

        self._decode: Any = ray.remote(num_returns=2, num_cpus=num_cpus)(decode_blob)

    async def __call__(self, key: str) -> DecodedAudio:
        import ray

        audio, duration = self._decode.remote(key)
        try:  # only the duration comes here; the samples stay in the object store
            duration_s = float(await duration)
        except asyncio.CancelledError:  # the task was cancelled or its runner stops
            ray.cancel(audio)
            raise
        return DecodedAudio(audio=audio, duration_s=duration_s)


def alive_nodes() -> int:
    import ray

    nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    return len([node for node in nodes if node.get("Alive")])


def require_shared_blob_store(store: BlobStore) -> None:
    """Refuse to start (ConfigurationError) on a cluster of several alive nodes whose blob
    store only this node can read; see :func:`storage.blobs.require_cluster_readable`."""
    require_cluster_readable(store, alive_nodes())
