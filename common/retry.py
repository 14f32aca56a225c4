"""Sending a call again after a failure worth retrying, with a doubling backoff.

One loop for every place that retries a call in-process: the pipeline's model stages (a
replica died under the request), its outcome writes (the database did not take one), the
runner's terminal events and the tracker handle (the tracker replica was being replaced).
Each says what is worth retrying and for how long; the loop is the same. (Callback delivery
keeps its own loop: it records every attempt, adds jitter and times each attempt out.)
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Retry:
    """Which failures are sent again, how many times and for how long."""

    retry_on: Callable[[Exception], bool]
    attempts: int | None = None
    """Calls in all, the first included; ``None``: as many as ``within_s`` allows."""
    within_s: float | None = None
    """No retry starts later than this after the first call; ``None``: no time bound."""
    first_delay_s: float = 0.5
    """The wait before the second call; it doubles for each further one ..."""
    max_delay_s: float = math.inf
    """... up to this."""

    def __post_init__(self) -> None:
        if self.attempts is None and self.within_s is None:
            raise ValueError("a retry needs a bound: attempts, within_s or both")

    def delay(self, retry: int) -> float:
        """The wait before retry number ``retry`` (1: before the second call)."""
        return min(self.max_delay_s, self.first_delay_s * 2.0 ** (retry - 1))


def instances_of(*errors: type[Exception]) -> Callable[[Exception], bool]:
    """``retry_on`` for failures of these types."""
    return lambda exc: isinstance(exc, errors)


OnRetry = Callable[[int, Exception, float], Awaitable[None] | None]
"""Told ``(retry number, the failure, the wait)`` before each wait: logs, progress notes."""


async def call_with_retry(
    call: Callable[[], Awaitable[T]], policy: Retry, *, on_retry: OnRetry | None = None
) -> T:
    """``await call()``, again after each failure ``policy`` retries while its bounds allow;
    the last failure (or any other) is raised as it is."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + policy.within_s if policy.within_s is not None else math.inf
    retry = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            retry += 1
            delay = policy.delay(retry)
            out_of_attempts = policy.attempts is not None and retry >= policy.attempts
            if out_of_attempts or not policy.retry_on(exc) or loop.time() + delay > deadline:
                raise
            if on_retry is not None and (told := on_retry(retry, exc, delay)) is not None:
                await told
        await asyncio.sleep(delay)
