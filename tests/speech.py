"""Real speech for tests: espeak-ng speaks sentences in many languages (``.ci/run`` installs it).

Synthetic but real audio: the models hear actual speech, so the transcripts, language
detection and word times they give are real model output, not fixtures.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from deployments.audio import decode_audio


def espeak(text: str, path: Path, *, voice: str = "en-us", rate: int = 150) -> Path:
    """``text`` spoken by espeak-ng into the WAV file ``path``; skips the test without it."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; .ci/run does)")
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(path), text],
        check=True,
        capture_output=True,
    )
    return path


def spoken(text: str, folder: Path, name: str, *, voice: str = "en-us") -> np.ndarray:
    """``text`` spoken by espeak-ng as 16 kHz mono float32 samples."""
    return decode_audio(espeak(text, folder / f"{name}.wav", voice=voice))
