"""The readers' side of the Redis event bus: an ingress replica's WebSockets
(:class:`RedisEventReader`) and any plain Python process (:func:`iter_task_events`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from deployments.events_bus import (
    BATCH,
    FALLBACK,
    OUTAGE,
    EventsBusConfig,
    connect,
    describe,
    entry_seq,
    parse_entry,
)
from deployments.progress_state import Event

logger = logging.getLogger(__name__)


class RedisEventReader:
    """Reads task events from Redis for one ingress replica's WebSockets.

    Answers only with a run of events starting right after the cursor with no gap; anything
    else (Redis down, range trimmed or expired, not yet published) is ``None`` and the
    caller asks the tracker actor instead. After a failure Redis is skipped for
    ``retry_s`` so a dead server costs nothing per event.
    """

    def __init__(
        self,
        config: EventsBusConfig,
        *,
        publisher_state: Callable[[], Awaitable[str]] | None = None,
        max_block_s: float = 10.0,
        retry_s: float = 2.0,
    ) -> None:
        self._config = config
        self._publisher_state = publisher_state
        self._max_block = max_block_s
        self._retry = retry_s
        self._redis = connect(config.url, socket_timeout=max_block_s + 5.0)
        self._skip_until = 0.0
        self._outage = False
        self.stats: Counter[str] = Counter()  # reads served from Redis vs. handed back

    def usable(self) -> bool:
        return time.monotonic() >= self._skip_until

    async def read_after(self, task_id: str, after_seq: int, wait_s: float) -> list[Event] | None:
        """Events ``after_seq+1, after_seq+2, …`` from the stream, waiting up to ``wait_s``
        for the first; ``[]`` if none came in time, ``None`` if Redis cannot serve them."""
        key = self._config.stream_key(task_id)
        block_ms = int(min(wait_s, self._max_block) * 1000)
        try:
            if block_ms > 0:
                reply = await self._redis.xread(
                    {key: f"{after_seq}-0"}, count=BATCH, block=block_ms
                )
                entries = reply[0][1] if reply else []
            else:
                entries = await self._redis.xrange(key, min=f"{after_seq + 1}-0", count=BATCH)
        except OUTAGE as exc:
            self._failed(exc)
            return None
        self._recovered()
        events: list[Event] = []
        for entry_id, fields in entries:
            if entry_seq(entry_id) != after_seq + 1 + len(events):
                break
            try:
                events.append(parse_entry(fields))
            except (KeyError, ValidationError):
                logger.warning("unreadable entry %s in %s", entry_id, key)
                break
        if entries and not events:
            self.stats["gap"] += 1
            return None
        self.stats["redis"] += bool(events)
        return events

    async def health(self) -> str:
        """``ok``, or what is wrong and that the service carries on through the actor."""
        try:
            await asyncio.wait_for(self._redis.ping(), 2.0)
        except OUTAGE as exc:
            self._failed(exc)
            return f"unavailable: {describe(exc)}; {FALLBACK}"
        self._recovered()
        if self._publisher_state is not None:
            try:
                state = await asyncio.wait_for(self._publisher_state(), 5.0)
            except Exception as exc:
                return f"publisher state unknown: {describe(exc)}; {FALLBACK}"
            if state != "ok":
                return f"publisher {state}; {FALLBACK}"
        return "ok"

    async def aclose(self) -> None:
        await self._redis.aclose()

    def _failed(self, exc: BaseException) -> None:
        if not self._outage:
            logger.warning("Redis unreadable (%s); %s until it is back", describe(exc), FALLBACK)
        self._outage = True
        self.stats["unavailable"] += 1
        self._skip_until = time.monotonic() + self._retry

    def _recovered(self) -> None:
        if self._outage:
            logger.info("Redis is readable again; WebSockets read events from it")
        self._outage = False
        self._skip_until = 0.0


async def iter_task_events(
    redis_url: str,
    task_id: str,
    *,
    app_name: str,
    prefix: str = "whisperx",
    after_seq: int = 0,
    block_s: float = 5.0,
) -> AsyncIterator[Event]:
    """Follow one task from any Python process (no Ray): each event after ``after_seq`` in
    seq order, live, ending with the terminal one. To resume, pass the last seq you saw.

    An event older than the stream's trimmed or expired range is not replayed; compare
    the first ``seq`` with ``after_seq + 1`` if that matters.
    """
    config = EventsBusConfig(url=redis_url, app_name=app_name, prefix=prefix)
    client = connect(redis_url, socket_timeout=block_s + 5.0)
    key, cursor = config.stream_key(task_id), f"{after_seq}-0"
    try:
        while True:
            reply: Any = await client.xread({key: cursor}, count=BATCH, block=int(block_s * 1000))
            for entry_id, fields in reply[0][1] if reply else []:
                event = parse_entry(fields)
                cursor = entry_id
                yield event
                if event.status.terminal:
                    return
    finally:
        await client.aclose()
