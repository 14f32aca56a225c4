"""The tracker's side of the Redis event bus: copies its logged events to Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.exceptions import ResponseError

from deployments.events_bus import (
    BATCH,
    FALLBACK,
    OUTAGE,
    EventsBusConfig,
    connect,
    describe,
    entry_seq,
)
from deployments.progress_state import Event

logger = logging.getLogger(__name__)


EventSource = Callable[[str, int], list[Event] | None]
"""``(task_id, after_seq)`` → the tracker's logged events after ``after_seq``; ``None``
once the tracker has forgotten the task."""


class EventPublisher:
    """Copies a tracker's events to Redis from one background task.

    The tracker only marks a task as having news (``offer``, never blocks); the worker reads
    the events from the tracker's own bounded log. So a slow or dead Redis can neither block
    nor fail progress, memory stays bounded by that log, and events logged during an outage
    are backfilled when Redis answers again. An outage is logged once, not per event.
    """

    def __init__(
        self,
        config: EventsBusConfig,
        source: EventSource,
        *,
        retry_min_s: float = 0.2,
        retry_max_s: float = 5.0,
    ) -> None:
        self._config = config
        self._source = source
        self._redis = connect(config.url, socket_timeout=5.0)
        self._retry = (retry_min_s, retry_max_s)
        self._pending: dict[str, None] = {}  # tasks with unpublished events, in order
        self._published: dict[str, int] = {}  # last seq known to be in each task's stream
        self._wake = asyncio.Event()
        self._kick = asyncio.Event()  # Redis answered a ping: stop backing off
        self._worker: asyncio.Task[None] | None = None
        self._outage: str | None = None
        self._closed = False

    def offer(self, task_id: str) -> None:
        """Note that ``task_id`` logged new events (call from the tracker's event loop)."""
        self._pending[task_id] = None
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run())
        self._wake.set()

    async def state(self) -> str:
        """``ok`` or ``unavailable: <error>``, from a live ping."""
        try:
            await asyncio.wait_for(self._redis.ping(), 2.0)
        except OUTAGE as exc:
            self._mark_down(exc)
        else:
            self._mark_up()
            self._kick.set()
        return "ok" if self._outage is None else f"unavailable: {self._outage}"

    async def last_seq(self, task_id: str) -> int:
        """The highest seq in the task's stream; 0 when it has none or Redis is down."""
        try:
            top = await asyncio.wait_for(
                self._redis.xrevrange(self._config.stream_key(task_id), count=1), 2.0
            )
        except ResponseError:  # not a stream: nothing to continue from
            return 0
        except OUTAGE as exc:
            self._mark_down(exc)
            return 0
        return entry_seq(top[0][0]) if top else 0

    async def aclose(self) -> None:
        """Stop the worker, then close the connection. The worker is told to stop and
        cancelled until it has ended: a cancellation that lands inside a Redis call can be
        lost on the way (seen in test_redis_events: the cancelled worker went back to
        waiting for work, and a single ``cancel()`` + ``gather`` waited for ever)."""
        self._closed = True
        self._wake.set()
        self._kick.set()
        while self._worker is not None and not self._worker.done():
            self._worker.cancel()
            await asyncio.wait({self._worker}, timeout=1.0)
        await self._redis.aclose()

    async def _run(self) -> None:
        delay = self._retry[0]
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            while self._pending and not self._closed:
                try:
                    await self._flush()
                except OUTAGE as exc:
                    self._mark_down(exc)
                    self._kick.clear()
                    try:
                        await asyncio.wait_for(self._kick.wait(), delay)
                    except TimeoutError:
                        delay = min(delay * 2, self._retry[1])
                    continue
                self._mark_up()
                delay = self._retry[0]

    async def _flush(self) -> None:
        while self._pending:
            task_id = next(iter(self._pending))
            del self._pending[task_id]
            try:
                await self._flush_task(task_id)
            except ResponseError as exc:  # this key is unusable; not an outage
                self._published.pop(task_id, None)
                logger.warning(
                    "Redis rejected the events of task %s: %s",
                    task_id,
                    describe(exc),
                    extra={"task_id": task_id},
                )
            except OUTAGE:
                self._pending[task_id] = None  # retried after the backoff
                self._published.pop(task_id, None)  # how much of the batch landed is unknown
                raise
            except Exception:  # a bug must not stop publishing for every other task
                self._published.pop(task_id, None)
                logger.exception("publishing events of task %s failed", task_id)

    async def _flush_task(self, task_id: str) -> None:
        last = self._published.get(task_id)
        events = self._source(task_id, last or 0)
        if events is None:
            self._published.pop(task_id, None)
            return
        key = self._config.stream_key(task_id)
        if last is None and events:
            events = await self._unpublished(key, events)
        for start in range(0, len(events), BATCH):
            batch = events[start : start + BATCH]
            async with self._redis.pipeline(transaction=False) as pipe:
                for event in batch:
                    data = event.model_dump_json()
                    pipe.xadd(
                        key,
                        {"event": data},
                        id=f"{event.seq}-0",
                        maxlen=self._config.stream_maxlen,
                        approximate=True,
                    )
                    pipe.publish(self._config.channel, data)
                pipe.expire(key, self._config.ttl_seconds)
                await pipe.execute()
            self._published[task_id] = batch[-1].seq
        if events and events[-1].status.terminal:
            self._published.pop(task_id, None)

    async def _unpublished(self, key: str, events: list[Event]) -> list[Event]:
        """The events the stream lacks, the first time this publisher writes a task.

        A stream whose last entry is one of ``events`` verbatim was partly written (an
        outage mid-batch): skip what it has. One whose last entry differs was numbered by an
        earlier tracker incarnation whose seq mirror lagged behind: start it over.
        """
        top = await self._redis.xrevrange(key, count=1)
        if not top or entry_seq(top[0][0]) < events[0].seq:
            return events
        top_seq, fields = entry_seq(top[0][0]), top[0][1]
        ours = next((e for e in events if e.seq == top_seq), None)
        if ours is not None and fields.get(b"event") == ours.model_dump_json().encode():
            return [e for e in events if e.seq > top_seq]
        logger.warning("replacing stale Redis stream %s (renumbered after a tracker restart)", key)
        await self._redis.delete(key)
        return events

    def _mark_down(self, exc: BaseException) -> None:
        if self._outage is None:
            logger.warning(
                "Redis unavailable for progress events (%s); %s until it is back",
                describe(exc),
                FALLBACK,
            )
        self._outage = describe(exc)

    def _mark_up(self) -> None:
        if self._outage is not None:
            logger.info("Redis is back; publishing progress events again")
        self._outage = None
