"""Poll with a deadline instead of sleeping and hoping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")


class _Poll:
    """One deadline's attempts: each ``attempt`` calls the probe once, keeping its error."""

    def __init__(self, timeout: float, what: str) -> None:
        self.deadline = time.monotonic() + timeout
        self.timeout, self.what = timeout, what
        self.last_error: Exception | None = None

    def attempts(self) -> Iterator[None]:
        while time.monotonic() < self.deadline:
            yield None

    def attempt(self, probe: Callable[[], T | None]) -> T | None:
        try:
            return probe()
        except Exception as exc:  # the thing polled may not be up yet
            self.last_error = exc
            return None

    def timed_out(self) -> TimeoutError:
        return TimeoutError(
            f"timed out after {self.timeout}s waiting for {self.what}; "
            f"last error: {self.last_error!r}"
        )


def wait_until(
    probe: Callable[[], T | None], *, timeout: float, interval: float = 0.2, what: str = "condition"
) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    poll = _Poll(timeout, what)
    for _ in poll.attempts():
        if value := poll.attempt(probe):
            return value
        time.sleep(interval)
    raise poll.timed_out()


async def wait_until_async(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """``wait_until`` for async tests: polls without blocking the event loop, so work the
    test awaits (a tracker publishing to Redis in the same loop) can make progress."""
    poll = _Poll(timeout, what)
    for _ in poll.attempts():
        if value := poll.attempt(probe):
            return value
        await asyncio.sleep(interval)
    raise poll.timed_out()
