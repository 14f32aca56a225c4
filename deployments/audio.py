"""Audio decoding and upload-time probing with PyAV (no ffmpeg binary needed).

``decode_audio`` turns any file FFmpeg can read (audio or video) into 16 kHz mono float32,
the input every model stage expects. ``probe_audio`` is the cheap check the ingress runs
on an upload before accepting a task: it opens the container, insists on an audio stream
and reports the duration without decoding the samples.

Both raise :class:`InvalidAudioError` (422) with a message fit for the user and a one-line
technical detail that never contains the server-side file path.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from common.errors import InvalidAudioError

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
