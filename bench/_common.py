"""Shared pieces of the bench scripts: clips, a local service, submitting and timing tasks.

Every script measures both sides of its ratio in one run, on the same audio, the same
offline models (``../shared/models``, override with ``WHISPERX_SERVE_MODELS_DIR``) and the
same device (CPU here). The service runs on a fresh local Ray (never one started by
someone else: ``address="local"``) and a free port, with SQLite in a temporary folder.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

ENV = {
    "PYANNOTE_METRICS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}
for _key, _value in ENV.items():
    os.environ.setdefault(_key, _value)

import httpx  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.audio import write_wav  # noqa: E402
from tests.ports import free_port  # noqa: E402

MODELS = Path(
    os.environ.get("WHISPERX_SERVE_MODELS_DIR", REPO.parent / "shared" / "models")
).resolve()
SR = 16_000
JFK = MODELS / "audio" / "jfk.flac"
APP = "bench"


# ---------------------------------------------------------------------------- audio


def speech_clip(seconds: float, path: Path) -> Path:
    """``seconds`` of real speech: pyannote's two-speaker sample and jfk.flac, alternated.

    The same recipe as the first bench (jfk + sample), so a 300 s clip is that one.
    """
    import pyannote.audio

    from deployments.audio import decode_audio

    jfk = decode_audio(JFK)
    sample = decode_audio(Path(pyannote.audio.__file__).parent / "sample" / "sample.wav")
    pieces: list[np.ndarray] = []
    total, want = 0, int(seconds * SR)
    while total < want:
        for piece in (sample, jfk):
            pieces.append(piece)
            total += len(piece)
    return write_wav(np.concatenate(pieces)[:want], path)


def temp_dir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


# ---------------------------------------------------------------------------- service


def local_args(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """serve_config.local.yaml's app args, models from ``MODELS``, ``overrides`` merged in."""
    import yaml

    doc = yaml.safe_load((REPO / "serve_config.local.yaml").read_text())
    args: dict[str, Any] = doc["applications"][0]["args"]
    args["models_dir"] = str(MODELS)
    return _merge(args, overrides or {})


def local_deployment_overrides() -> dict[str, dict[str, Any]]:
    """The ``deployments:`` entries of serve_config.local.yaml, by deployment name."""
    import yaml

    doc = yaml.safe_load((REPO / "serve_config.local.yaml").read_text())
    entries = doc["applications"][0].get("deployments") or []
    return {entry["name"]: {k: v for k, v in entry.items() if k != "name"} for entry in entries}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


@dataclass
class Service:
    base: str
    ws: str
    data_dir: Path


def start_service(
    overrides: dict[str, Any] | None = None,
    *,
    deployments: dict[str, dict[str, Any]] | None = None,
    num_cpus: int | None = None,
    config_autoscaling: bool = True,
    env: dict[str, str] | None = None,
) -> Service:
    """The app on a fresh local Ray, as ``serve run serve_config.local.yaml`` deploys it.

    ``overrides`` are merged over the config's ``args``; ``deployments`` (name → Serve
    options) over its ``deployments:`` entries, which apply as Serve applies them. With
    ``config_autoscaling`` off, the config's autoscaling is dropped: one replica each.
    """
    import ray
    from ray import serve

    from ingress.builder import build_app
    from tests.serving import with_deployment_options

    data = temp_dir("bench-data-")
    env = {**ENV, **(env or {}), "WHISPERX_SERVE_DATA_DIR": str(data)}
    os.environ.update(env)
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        runtime_env={"env_vars": env},
        log_to_driver=False,
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    options = local_deployment_overrides()
    if not config_autoscaling:
        for entry in options.values():
            entry.pop("autoscaling_config", None)
    options = _merge(options, deployments or {})
    app = build_app(local_args(overrides))
    entries = [{"name": name, **entry} for name, entry in options.items()]
    serve.run(with_deployment_options(app, entries), name=APP, route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    wait_ready(base, timeout=600)
    return Service(base, base.replace("http", "ws", 1), data)


def stop_service() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def wait_ready(base: str, *, timeout: float) -> float:
    """Seconds until ``/health/ready`` answers 200."""
    started = time.monotonic()
    while True:
        try:
            if httpx.get(f"{base}/health/ready", timeout=10).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{base} not ready after {timeout} s")
        time.sleep(0.25)


def wait_status(base: str, task_id: str, status: str, *, timeout: float) -> None:
    """Poll ``GET /tasks/{id}/progress`` until the task reaches ``status``."""
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get(f"{base}/tasks/{task_id}/progress", timeout=30).json()
        if body.get("status") == status:
            return
        if body.get("status") in ("completed", "failed", "cancelled"):
            raise RuntimeError(f"task {task_id} ended {body.get('status')}: {body}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {task_id} not {status} after {timeout} s: {body}")
        time.sleep(0.5)


async def asubmit(client: httpx.AsyncClient, base: str, path: Path, **params: Any) -> str:
    r = await client.post(
        f"{base}/speech-to-text",
        params=params,
        files={"file": (path.name, path.read_bytes())},
        timeout=120,
    )
    r.raise_for_status()
    return str(r.json()["identifier"])


async def watch(
    ws_base: str, task_id: str, *, timeout: float = 3600
) -> list[tuple[float, dict[str, Any]]]:
    """Every WebSocket frame of one task with its receive time (epoch s), to the close."""
    import websockets

    frames: list[tuple[float, dict[str, Any]]] = []
    async with (
        asyncio.timeout(timeout),
        websockets.connect(f"{ws_base}/ws/tasks/{task_id}", max_size=None) as ws,
    ):
        try:
            async for message in ws:
                frames.append((time.time(), json.loads(message)))
        except websockets.ConnectionClosed:
            pass
    return frames


def final_status(frames: Sequence[tuple[float, dict[str, Any]]]) -> str:
    return str(frames[-1][1].get("status")) if frames else "none"


async def run_task(service: Service, path: Path, **params: Any) -> float:
    """Submit, follow over WebSocket to the terminal event, read the task: wall seconds."""
    started = time.perf_counter()
    async with httpx.AsyncClient() as client:
        task_id = await asubmit(client, service.base, path, **params)
        frames = await watch(service.ws, task_id)
        if final_status(frames) != "completed":
            raise RuntimeError(f"task {task_id} ended {final_status(frames)}: {frames[-1:]}")
        (await client.get(f"{service.base}/task/{task_id}", timeout=60)).raise_for_status()
    return time.perf_counter() - started


def parse_ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------------------- numbers


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation): p99 of 100 values is the 99th."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, int(np.ceil(pct / 100 * len(ordered))))
    return float(ordered[rank - 1])


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], note: str = "") -> None:
    """A plain aligned table on stdout (and a markdown copy to paste into BENCHMARKS.md)."""
    cells = [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print()
    print(
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    )
    for row in cells:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    if note:
        print(note)
    print("\n| " + " | ".join(headers) + " |")
    print("| " + " | ".join("---" if i == 0 else "---:" for i in range(len(headers))) + " |")
    for row in cells:
        print("| " + " | ".join(row) + " |")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return (
            f"{value:.3f}"
            if abs(value) < 10
            else f"{value:.2f}"
            if abs(value) < 1000
            else f"{value:.0f}"
        )
    return str(value)


def machine_note() -> str:
    """Load average and CPU count, to read noisy figures by."""
    load = os.getloadavg()
    return f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


# ---------------------------------------------------------------------------- plain whisperx


class PlainWhisperx:
    """The plain library in this process: ``whisperx.load_model(...).transcribe`` plus the
    same pyannote diarization (segmentation-3.0 + CAM++) and ``assign_word_speakers`` the
    service runs. No word alignment (the bundle has no wav2vec2), as ``align=false``."""

    def __init__(self) -> None:
        import whisperx

        from common.config import DiarizationConfig
        from deployments.diarization import DiarizationEngine

        self.model = whisperx.load_model(
            str(MODELS / "asr" / "faster-whisper-tiny.en"),
            "cpu",
            compute_type="int8",
            local_files_only=True,
            threads=2,
        )
        self.diarizer = DiarizationEngine(
            DiarizationConfig(
                pipeline=None,
                segmentation=Path("diarization/segmentation-3.0"),
                embedding=Path("diarization/campplus-cn-en-common/campplus_cn_en_common.pt"),
            ),
            models_dir=MODELS,
        )

    def run(self, path: Path) -> Any:
        from common.schemas import DiarizeRequest, Segment, Transcript
        from deployments.audio import decode_audio

        audio = decode_audio(path)
        out = self.model.transcribe(audio, batch_size=4)
        transcript = Transcript(
            language=out["language"],
            segments=[
                Segment(start=s["start"], end=s["end"], text=s["text"]) for s in out["segments"]
            ],
        )
        return self.diarizer.diarize(audio, DiarizeRequest(transcript=transcript))


def time_plain(plain: PlainWhisperx, path: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        plain.run(path)
        times.append(time.perf_counter() - started)
    return times
