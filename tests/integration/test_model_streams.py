"""A model deployment on its own: no tracker, no task, no app around it (real Ray Serve).

The AsrDeployment is deployed alone and called through its typed client, the way the
runner calls it: it streams its progress back to the caller and returns the transcript,
and cancelling the caller stops the work it was doing, so the replica is free at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.config import AsrConfig
from common.schemas import AsrOptions, AsrRequest
from deployments.audio import SAMPLE_RATE, decode_audio
from deployments.clients import AsrClient
from tests.ports import free_port
from tests.serving import OFFLINE_ENV
from tests.waiting import wait_until_async

pytestmark = pytest.mark.integration

APP_ALONE = "asr-alone"


@pytest.fixture(scope="module")
def asr_handle(models_dir: Path) -> Iterator[Any]:
    """The ASR deployment alone, in the tier's Ray when one runs, else in a Ray of its own."""
    import ray
    from ray import serve

    from deployments.asr import AsrDeployment

    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": OFFLINE_ENV})
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    try:
        config = AsrConfig(model="asr/faster-whisper-tiny.en", local_files_only=True)
        deployment: Any = AsrDeployment  # Serve's decorator, untyped
        app = deployment.options(max_ongoing_requests=4).bind(config, models_dir=models_dir)
        yield serve.run(app, name=APP_ALONE, route_prefix=None)
    finally:
        serve.delete(APP_ALONE)
        if own_ray:
            serve.shutdown()  # type: ignore[no-untyped-call]
            ray.shutdown()


@pytest.fixture(scope="module")
def jfk(jfk_path: Path) -> np.ndarray:
    return decode_audio(jfk_path)


async def test_progress_streams_back_to_the_caller(asr_handle: Any, jfk: np.ndarray) -> None:
    import ray

    seen: list[float] = []

    async def progress(pct: float) -> None:
        seen.append(pct)

    audio = ray.put(jfk)  # by reference, as the pipeline passes it
    request = AsrRequest(word_timestamps=True)
    transcript = await AsrClient(asr_handle).transcribe(audio, request, progress=progress)
    assert "country" in transcript.text.lower() and transcript.word_timestamps == "whisper"
    assert seen and seen[-1] == 100.0 and seen == sorted(seen)


async def test_cancelling_the_caller_stops_the_model_and_frees_the_replica(
    asr_handle: Any, jfk: np.ndarray
) -> None:
    import ray

    client = AsrClient(asr_handle)
    quick = ray.put(jfk)
    t0 = time.perf_counter()
    await client.transcribe(quick, AsrRequest())
    alone = time.perf_counter() - t0

    # 30x the quick clip: transcribing it to the end would hold the engine ~30x as long;
    # batch_size 1, so the worker reaches a progress step after every VAD chunk
    repeated = np.tile(jfk, 30)
    assert repeated.shape[0] / SAMPLE_RATE > 300
    long, one_by_one = ray.put(repeated), AsrRequest(options=AsrOptions(batch_size=1))
    seen: list[float] = []

    async def progress(pct: float) -> None:
        seen.append(pct)

    running = asyncio.create_task(client.transcribe(long, one_by_one, progress=progress))
    await wait_until_async(lambda: seen, timeout=120, what="the long transcription under way")
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running

    # the engine handles one transcription at a time: the next one gets it at once only if
    # the cancelled one stopped at its next progress step
    t0 = time.perf_counter()
    transcript = await asyncio.wait_for(client.transcribe(quick, AsrRequest()), timeout=300)
    waited = time.perf_counter() - t0
    assert "country" in transcript.text.lower()
    assert waited < 8 * alone + 10, f"{waited:.1f}s after the cancel; {alone:.1f}s alone"
