"""The tracker deployment's handle as the Ingress and the TaskRunner hold it: a call whose
replica died is sent again once Serve replaced it; a failure inside the tracker is not."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ray.exceptions import ActorDiedError

from deployments.progress import TrackerHandle


class _Method:
    def __init__(self, fake: FlakyTracker, name: str) -> None:
        self._fake, self._name = fake, name

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self._fake.call(self._name, args, kwargs)


class FlakyTracker:
    """A Serve handle whose replica is gone for the first ``dead_calls`` calls."""

    def __init__(self, dead_calls: int, error: Exception | None = None) -> None:
        self.dead_calls = dead_calls
        self.error = error
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> _Method:
        return _Method(self, name)

    async def call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        self.calls.append((name, args, kwargs))
        if len(self.calls) <= self.dead_calls:
            raise ActorDiedError()
        if self.error is not None:
            raise self.error
        return f"{name} done"


def test_a_call_whose_replica_died_is_sent_again() -> None:
    fake = FlakyTracker(dead_calls=2)
    handle = TrackerHandle(fake, retry_for_s=5, backoff_s=0.01)
    assert asyncio.run(handle.enter_stage.remote("t", "diarizing", message="m")) == (
        "enter_stage done"
    )
    assert fake.calls == [("enter_stage", ("t", "diarizing"), {"message": "m"})] * 3


def test_retries_are_bounded_in_time() -> None:
    fake = FlakyTracker(dead_calls=10_000)
    handle = TrackerHandle(fake, retry_for_s=0.05, backoff_s=0.01)
    with pytest.raises(ActorDiedError):
        asyncio.run(handle.ping.remote())
    assert 2 <= len(fake.calls) < 10


def test_an_error_inside_the_tracker_is_not_retried() -> None:
    fake = FlakyTracker(dead_calls=0, error=ValueError("bad stage"))
    handle = TrackerHandle(fake, retry_for_s=5, backoff_s=0.01)
    with pytest.raises(ValueError, match="bad stage"):
        asyncio.run(handle.report.remote("t", "nope", 1.0))
    assert len(fake.calls) == 1
