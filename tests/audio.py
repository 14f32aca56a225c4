"""Writing test and bench clips: float samples in [-1, 1] as 16-bit mono PCM WAV."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from deployments.audio import SAMPLE_RATE


def sample_wav() -> Path:
    """pyannote's two-speaker sample, 30 s (importing pyannote.audio.sample would decode it)."""
    import pyannote.audio

    return Path(pyannote.audio.__file__).parent / "sample" / "sample.wav"


def write_wav(audio: np.ndarray, path: Path, rate: int = SAMPLE_RATE) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def tiled_wav(source: Path, path: Path, repeats: int) -> Path:
    """``source`` played ``repeats`` times in a row: a longer clip of the same speech."""
    from deployments.audio import decode_audio

    return write_wav(np.tile(decode_audio(source), repeats), path)
