"""End-to-end wall time through the service vs the plain whisperx library, in one run.

Same audio, same models (the offline bundle), same device (CPU here), same work: ASR with
tiny.en, then pyannote diarization (segmentation-3.0 + CAM++) and
``whisperx.assign_word_speakers``. No word alignment on either side (the bundle has no
wav2vec2). Both sides have their models loaded before timing starts. The plain side is
``whisperx.load_model(...).transcribe`` plus the diarization pipeline, called in this
process; the service side is submit → terminal WebSocket event → ``GET /task``.

    .venv/bin/python bench/e2e_vs_whisperx.py --runs 3

Prints per-clip medians and the ratio service / plain (overhead of the graph).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import wave
from pathlib import Path

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.streams import collect, submit  # noqa: E402

MODELS = Path(
    os.environ.get("WHISPERX_SERVE_MODELS_DIR", REPO.parent / "shared" / "models")
).resolve()
SR = 16_000


def five_minute_clip(path: Path) -> Path:
    """~5 min of real speech: jfk.flac and pyannote's two-speaker sample, alternated."""
    import pyannote.audio

    from deployments.audio import decode_audio

    jfk = decode_audio(MODELS / "audio" / "jfk.flac")
    sample = decode_audio(Path(pyannote.audio.__file__).parent / "sample" / "sample.wav")
    pieces, total = [], 0
    while total < 300 * SR:
        for piece in (sample, jfk):
            pieces.append(piece)
            total += len(piece)
    audio = np.concatenate(pieces)[: 300 * SR]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def plain_whisperx(clips: dict[str, Path], runs: int) -> dict[str, list[float]]:
    import whisperx

    from common.config import DiarizationConfig
    from common.schemas import DiarizeRequest, Segment, Transcript
    from deployments.audio import decode_audio
    from deployments.diarization import DiarizationEngine

    model = whisperx.load_model(
        str(MODELS / "asr" / "faster-whisper-tiny.en"),
        "cpu",
        compute_type="int8",
        local_files_only=True,
        threads=2,
    )
    diarizer = DiarizationEngine(
        DiarizationConfig(
            pipeline=None,
            segmentation=Path("diarization/segmentation-3.0"),
            embedding=Path("diarization/campplus-cn-en-common/campplus_cn_en_common.pt"),
        ),
        models_dir=MODELS,
    )
    times: dict[str, list[float]] = {}
    for name, path in clips.items():
        for _ in range(runs):
            t0 = time.perf_counter()
            audio = decode_audio(path)
            out = model.transcribe(audio, batch_size=4)
            transcript = Transcript(
                language=out["language"],
                segments=[
                    Segment(start=s["start"], end=s["end"], text=s["text"]) for s in out["segments"]
                ],
            )
            diarizer.diarize(audio, DiarizeRequest(transcript=transcript))
            times.setdefault(name, []).append(time.perf_counter() - t0)
    return times


def service(base: str, clips: dict[str, Path], runs: int) -> dict[str, list[float]]:
    ws = base.replace("http", "ws", 1)
    times: dict[str, list[float]] = {}
    for name, path in clips.items():
        for _ in range(runs):
            t0 = time.perf_counter()
            task_id = submit(base, path, align="false")
            stream = asyncio.run(collect(ws, task_id, after_seq=0, timeout=1800))
            assert stream.events[-1]["status"] == "completed", stream.events[-1]
            httpx.get(f"{base}/task/{task_id}", timeout=30).raise_for_status()
            times.setdefault(name, []).append(time.perf_counter() - t0)
    return times


def start_service() -> str:
    import ray
    from ray import serve

    from ingress.builder import build_app

    data = tempfile.mkdtemp(prefix="bench-data-")
    env = {"WHISPERX_SERVE_DATA_DIR": data, "PYANNOTE_METRICS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}
    os.environ.update(env)
    ray.init(include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": 8123})
    import yaml

    args = yaml.safe_load((REPO / "serve_config.local.yaml").read_text())["applications"][0]["args"]
    args["models_dir"] = str(MODELS)
    serve.run(build_app(args), name="bench", route_prefix="/")
    base = "http://127.0.0.1:8123"
    deadline = time.monotonic() + 600
    while httpx.get(f"{base}/health/ready", timeout=10).status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError("service not ready")
        time.sleep(1)
    return base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-audio-"))
    clips = {
        "jfk (11 s)": MODELS / "audio" / "jfk.flac",
        "mix (300 s)": five_minute_clip(tmp / "mix.wav"),
    }

    plain = plain_whisperx(clips, args.runs)
    base = start_service()
    served = service(base, clips, args.runs)

    print(
        f"\n{'clip':<14}{'plain whisperx s':>18}{'service s':>12}{'ratio':>8}"
        f"   (medians of {args.runs}, CPU)"
    )
    for name in clips:
        p, s = statistics.median(plain[name]), statistics.median(served[name])
        print(f"{name:<14}{p:>18.2f}{s:>12.2f}{s / p:>8.2f}")


if __name__ == "__main__":
    main()
