"""The model deployments' progress stream and the clients that read it (no Ray)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from common.errors import ProcessingError
from common.schemas import AlignRequest, AsrRequest, DiarizeRequest, Transcript
from deployments.clients import AlignClient, AsrClient, DiarizeClient
from deployments.model_stream import (
    ModelProgress,
    ProgressCallback,
    ProgressThrottle,
    RequestStopped,
    collect,
    stream_stoppable,
)

DONE = Transcript(language="en")


def test_progress_is_rate_limited_monotonic_and_always_ends_at_100() -> None:
    now = [0.0]
    throttle = ProgressThrottle(min_interval_s=1.0, clock=lambda: now[0])
    passed = [throttle(10), throttle(20)]  # the second within the interval: dropped
    now[0] = 2.0
    passed += [throttle(5), throttle(30), throttle(100), throttle(100)]  # backwards: dropped
    assert passed == [10.0, None, None, 30.0, 100.0, None]


def test_no_model_request_carries_a_task() -> None:
    for request in (AsrRequest, AlignRequest, DiarizeRequest):
        assert not {"task_id", "app_name"} & set(request.model_fields)


async def _items(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


async def test_the_stream_yields_throttled_progress_then_the_result() -> None:
    def work(report: ProgressCallback) -> Transcript:
        for pct in (10.0, 10.0, 5.0, 60.0, 100.0):
            report(pct)
        return DONE

    items = await _items(stream_stoppable(work, throttle=ProgressThrottle(min_interval_s=0.0)))
    assert items == [
        ModelProgress(percentage=10.0),
        ModelProgress(percentage=60.0),
        ModelProgress(percentage=100.0),
        DONE,
    ]


async def test_the_work_error_is_raised_from_the_stream() -> None:
    def work(report: ProgressCallback) -> Transcript:
        raise ProcessingError("Transcription failed.", "boom")

    with pytest.raises(ProcessingError, match="Transcription failed"):
        await _items(stream_stoppable(work))


class _Looping:
    """Work that reports progress until its callback stops it; says how it ended."""

    def __init__(self) -> None:
        self.started, self.stopped = threading.Event(), threading.Event()

    def __call__(self, report: ProgressCallback) -> Transcript:
        pct = 0.0
        try:
            while pct < 1000:
                report(min(pct, 99.0))
                self.started.set()
                pct += 0.01
                threading.Event().wait(0.005)
        except RequestStopped:
            self.stopped.set()
            raise
        return DONE


async def test_closing_the_stream_stops_the_worker_at_its_next_callback() -> None:
    work = _Looping()
    stream = stream_stoppable(work)
    first = await anext(stream)
    assert isinstance(first, ModelProgress)
    await stream.aclose()  # the caller stopped reading
    assert await asyncio.to_thread(work.stopped.wait, 5.0)


async def test_cancelling_the_reader_stops_the_worker() -> None:
    work = _Looping()
    reader = asyncio.create_task(_items(stream_stoppable(work)))
    assert await asyncio.to_thread(work.started.wait, 5.0)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert await asyncio.to_thread(work.stopped.wait, 5.0)


class FakeStream:
    """Stands in for a ``DeploymentResponseGenerator``: yields ``items``, records cancel."""

    def __init__(self, items: list[Any], block: asyncio.Event | None = None) -> None:
        self.items, self.block, self.cancelled = items, block, False

    async def _gen(self) -> AsyncIterator[Any]:
        for item in self.items:
            yield item
        if self.block is not None:
            await self.block.wait()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._gen()

    def cancel(self) -> None:
        self.cancelled = True


async def test_collect_awaits_progress_per_item_and_returns_the_result() -> None:
    seen: list[float] = []

    async def progress(pct: float) -> None:
        seen.append(pct)

    stream = FakeStream([ModelProgress(percentage=20), ModelProgress(percentage=100), DONE])
    assert await collect(stream, Transcript, progress) == DONE
    assert seen == [20.0, 100.0] and not stream.cancelled
    assert await collect(FakeStream([ModelProgress(percentage=5), DONE]), Transcript) == DONE


async def test_a_stream_without_a_result_is_a_processing_error() -> None:
    with pytest.raises(ProcessingError):
        await collect(FakeStream([ModelProgress(percentage=5)]), Transcript)
    stream = FakeStream([ModelProgress(percentage=5), "what?"])
    with pytest.raises(TypeError):
        await collect(stream, Transcript)
    assert stream.cancelled


async def test_cancelling_the_caller_cancels_the_stream() -> None:
    stream = FakeStream([ModelProgress(percentage=5)], block=asyncio.Event())
    seen: list[float] = []

    async def progress(pct: float) -> None:
        seen.append(pct)

    caller = asyncio.create_task(collect(stream, Transcript, progress))
    while not seen:
        await asyncio.sleep(0.001)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert stream.cancelled


class FakeHandle:
    """A DeploymentHandle whose ``options(stream=True)`` methods return a ``FakeStream``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.streaming = False

    def options(self, *, stream: bool = False) -> FakeHandle:
        handle = FakeHandle()
        handle.calls, handle.streaming = self.calls, stream
        return handle

    def __getattr__(self, method: str) -> Any:
        outer = self

        class Method:
            @staticmethod
            def remote(*args: Any) -> Any:
                outer.calls.append((method, args))
                assert outer.streaming, f"{method} must be called as a stream"
                return FakeStream([ModelProgress(percentage=100), DONE])

        return Method()


async def test_the_clients_call_the_models_as_streams() -> None:
    handle, seen = FakeHandle(), []

    async def progress(pct: float) -> None:
        seen.append(pct)

    audio = object()  # passed through untouched (an ObjectRef in production)
    asr, align, diarize = AsrClient(handle), AlignClient(handle), DiarizeClient(handle)
    assert await asr.transcribe(audio, AsrRequest(), progress=progress) == DONE
    assert await asr.add_word_timestamps(audio, DONE, progress=progress) == DONE
    assert await align.align(audio, AlignRequest(transcript=DONE), progress=progress) == DONE
    assert await diarize.diarize(audio, DiarizeRequest(), progress=progress) == DONE
    assert [m for m, _ in handle.calls] == ["transcribe", "add_word_timestamps", "align", "diarize"]
    assert all(args[0] is audio for _, args in handle.calls)
    assert seen == [100.0] * 4


class AskedHandle:
    """A handle whose ``supports`` answers True and records each language asked."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        outer = self

        class Supports:
            @staticmethod
            async def remote(language: str) -> bool:
                outer.asked.append(language)
                return True

        self.supports = Supports()

    def options(self, *, stream: bool = False) -> AskedHandle:
        return self


async def test_a_language_no_configured_aligner_serves_is_answered_without_a_call() -> None:
    from common.config import AlignConfig

    handle = AskedHandle()
    only_de = AlignConfig(use_default_models=False, models={"DE": "/models/de"})
    align = AlignClient(handle, languages=only_de.candidate_languages())
    assert await align.supports("en") is False  # the deployment (maybe at zero) is not woken
    assert await align.supports("de") is True
    assert handle.asked == ["de"]
    assert AlignConfig().candidate_languages() is None  # defaults may serve any language
    assert await AlignClient(handle).supports("en") is True
    assert handle.asked == ["de", "en"]
