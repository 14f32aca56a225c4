"""decode_audio / probe_audio on real and broken files (PyAV only; no Ray, no models).

What each input does:
- jfk.flac (44.1 kHz stereo, 11 s): probe -> 11.0 s; decode -> 176,000 mono float32 samples.
- empty file, random bytes, a text file: FFmpeg cannot open them -> InvalidAudioError at probe
  and at decode ("InvalidDataError: Invalid data found when processing input").
- jfk.flac cut to its first 2 KiB: the FLAC header itself is cut -> InvalidAudioError
  ("EOFError: End of file") at probe and decode.
- jfk.flac cut to 20 KiB: the header is intact, so probe still reports the header's 11 s;
  decode returns only the few hundred ms that survived (no error). Truncation past the
  header is therefore visible only as a short decode.
- a WAV with zero frames: probe passes (duration unknown, -1); decode -> InvalidAudioError
  ("no audio samples").
- a video file without an audio track: InvalidAudioError ("no audio track") at both.
"""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np
import pytest

from common.errors import InvalidAudioError
from deployments.audio import SAMPLE_RATE, decode_audio, probe_audio

pytestmark = pytest.mark.unit

MODELS_DIR = Path(
    os.environ.get(
        "WHISPERX_SERVE_MODELS_DIR",
        Path(__file__).resolve().parents[2].parent / "shared" / "models",
    )
)
JFK = MODELS_DIR / "audio" / "jfk.flac"


@pytest.fixture(scope="module")
def jfk_bytes() -> bytes:
    if not JFK.exists():
        pytest.skip(f"test clip not found at {JFK}")
    return JFK.read_bytes()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _assert_invalid(path: Path, *, user_fragment: str) -> None:
    for check in (probe_audio, decode_audio):
        with pytest.raises(InvalidAudioError) as info:
            check(path)
        err = info.value
        assert user_fragment in err.user_message
        assert err.technical_detail and "\n" not in err.technical_detail
        assert str(path) not in err.technical_detail  # no server paths in error details
        assert err.status_code == 422


def test_decode_jfk_is_16k_mono_float32(jfk_bytes: bytes) -> None:
    audio = decode_audio(JFK)
    assert audio.dtype == np.float32
    assert audio.ndim == 1
    assert audio.shape[0] == pytest.approx(11.0 * SAMPLE_RATE, abs=SAMPLE_RATE * 0.05)
    assert float(np.abs(audio).max()) <= 1.0
    assert float(np.abs(audio).max()) > 0.1  # real speech, not silence


def test_probe_jfk_duration(jfk_bytes: bytes) -> None:
    assert probe_audio(JFK) == pytest.approx(11.0, abs=0.05)


def test_empty_file(tmp_path: Path) -> None:
    _assert_invalid(_write(tmp_path / "empty.wav", b""), user_fragment="could not be read")


def test_random_bytes(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes()
    _assert_invalid(_write(tmp_path / "noise.mp3", data), user_fragment="could not be read")


def test_text_file(tmp_path: Path) -> None:
    _assert_invalid(
        _write(tmp_path / "notes.wav", b"hello, this is not audio\n" * 20),
        user_fragment="could not be read",
    )


def test_flac_cut_inside_header(tmp_path: Path, jfk_bytes: bytes) -> None:
    _assert_invalid(
        _write(tmp_path / "cut.flac", jfk_bytes[:2048]), user_fragment="could not be read"
    )


def test_flac_cut_after_header_decodes_short(tmp_path: Path, jfk_bytes: bytes) -> None:
    path = _write(tmp_path / "cut.flac", jfk_bytes[:20_000])
    assert probe_audio(path) == pytest.approx(11.0, abs=0.05)  # header still claims 11 s
    audio = decode_audio(path)
    assert 0 < audio.shape[0] < SAMPLE_RATE  # only what survived the cut


def test_wav_without_frames(tmp_path: Path) -> None:
    path = tmp_path / "zero.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(b"")
    with pytest.raises(InvalidAudioError, match="no audio samples"):
        probe_audio(path)  # rejected at upload, not later in the task
    with pytest.raises(InvalidAudioError, match="no audio samples"):
        decode_audio(path)


def test_text_named_flac_is_rejected_at_probe(tmp_path: Path) -> None:
    path = tmp_path / "fake.flac"  # the flac demuxer accepts it by extension, no samples decode
    path.write_bytes(b"this is not audio at all" * 100)
    with pytest.raises(InvalidAudioError):
        probe_audio(path)


def test_short_wav_is_resampled(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(tone.tobytes())
    assert probe_audio(path) == pytest.approx(1.0, abs=0.01)
    assert decode_audio(path).shape[0] == pytest.approx(SAMPLE_RATE, abs=160)


def test_video_without_audio_track(tmp_path: Path) -> None:
    import av

    path = tmp_path / "silent_video.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuvj420p"
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    _assert_invalid(path, user_fragment="no audio track")
