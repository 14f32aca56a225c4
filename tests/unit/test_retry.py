"""The one retry loop: what it sends again, how often, how long it waits."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

import common.retry
from common.retry import Retry, call_with_retry, instances_of

pytestmark = pytest.mark.unit


class Flaky:
    """Fails with ``errors`` in turn, then answers ``"ok"``."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits the retry loop asks for, without waiting them. Only the loop's own sleeps
    are replaced: the session's event loop may run other tests' leftover tasks, and their
    sleeps are not ours to count."""
    asked: list[float] = []

    async def fake_sleep(delay: float, *args: Any) -> None:
        asked.append(delay)
        await asyncio.sleep(0)

    fake = SimpleNamespace(sleep=fake_sleep, get_running_loop=asyncio.get_running_loop)
    monkeypatch.setattr(common.retry, "asyncio", fake)
    return asked


async def test_a_retried_failure_is_sent_again_with_a_doubling_wait(waits: list[float]) -> None:
    call = Flaky(OSError(), OSError(), OSError())
    told: list[tuple[int, float]] = []
    policy = Retry(instances_of(OSError), attempts=4, first_delay_s=0.5)
    result = await call_with_retry(call, policy, on_retry=lambda n, _, d: told.append((n, d)))
    assert result == "ok" and call.calls == 4
    assert waits == [0.5, 1.0, 2.0]
    assert told == [(1, 0.5), (2, 1.0), (3, 2.0)]


async def test_the_last_failure_is_raised_once_the_attempts_are_spent(waits: list[float]) -> None:
    call = Flaky(OSError("1"), OSError("2"), OSError("3"))
    with pytest.raises(OSError, match="2"):
        await call_with_retry(call, Retry(instances_of(OSError), attempts=2))
    assert call.calls == 2 and len(waits) == 1


async def test_a_failure_not_worth_retrying_is_raised_at_once(waits: list[float]) -> None:
    call = Flaky(ValueError("input"))
    with pytest.raises(ValueError, match="input"):
        await call_with_retry(call, Retry(instances_of(OSError), attempts=5))
    assert call.calls == 1 and waits == []


async def test_no_retry_starts_past_the_time_bound(waits: list[float]) -> None:
    call = Flaky(*(OSError() for _ in range(10)))
    policy = Retry(instances_of(OSError), within_s=0.0, first_delay_s=0.1)
    with pytest.raises(OSError):
        await call_with_retry(call, policy)
    assert call.calls == 1


async def test_the_wait_is_capped(waits: list[float]) -> None:
    call = Flaky(*(OSError() for _ in range(5)))
    policy = Retry(instances_of(OSError), attempts=6, first_delay_s=1.0, max_delay_s=3.0)
    await call_with_retry(call, policy)
    assert waits == [1.0, 2.0, 3.0, 3.0, 3.0]


async def test_an_async_hook_is_awaited_before_the_wait(waits: list[float]) -> None:
    seen: list[int] = []

    async def note(retry: int, exc: Exception, delay: float) -> None:
        seen.append(len(waits))  # no wait yet for this retry

    await call_with_retry(Flaky(OSError()), Retry(instances_of(OSError), attempts=2), on_retry=note)
    assert seen == [0] and len(waits) == 1


def test_a_retry_needs_a_bound() -> None:
    with pytest.raises(ValueError):
        Retry(instances_of(OSError))
