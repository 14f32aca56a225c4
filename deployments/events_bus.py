"""Progress events on Redis: a bounded stream per task plus one live channel per app.

The ProgressTracker actor stays the source of truth; Redis is a copy that lets any ingress
replica (and any process outside Ray) read a task's events without asking the actor.

Layout, under ``{prefix}:{app}`` (so two apps on one Redis never mix):

- ``{prefix}:{app}:task:{task_id}:events``: a Redis Stream whose entry ID is ``{seq}-0``
  and whose one field ``event`` holds the event JSON (``ProgressEvent`` or ``ErrorEvent``).
  ``XREAD``/``XRANGE`` from ``{after_seq}-0`` resume gap-free. Trimmed to about
  ``stream_maxlen`` entries; the key expires ``ttl_seconds`` after its last event.
- ``{prefix}:{app}:events``: every event JSON of every task, ``PUBLISH``ed live
  (at least once; dedupe by ``task_id`` and ``seq``).

No Ray import here: ``iter_task_events`` is the documented way to follow a task from a
plain Python process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from common.schemas import TaskEvent
from common.settings import Settings
from deployments.progress_state import Event

logger = logging.getLogger(__name__)

FALLBACK = "falling back to the Ray actor"
_EVENT = TypeAdapter[Event](TaskEvent)
_BATCH = 500
_Outage = (RedisError, OSError)  # OSError covers refused/reset sockets and TimeoutError


@dataclass(frozen=True)
class EventsBusConfig:
    """Where one app's events live on Redis (picklable: it travels to the tracker actor)."""

    url: str
    app_name: str
    prefix: str = "whisperx"
    stream_maxlen: int = 1000
    ttl_seconds: int = 86_400

    @classmethod
    def from_settings(cls, settings: Settings, app_name: str) -> EventsBusConfig | None:
        if not settings.redis_url:
            return None
        return cls(
            url=settings.redis_url,
            app_name=app_name,
            prefix=settings.redis_prefix,
            stream_maxlen=settings.redis_stream_maxlen,
            ttl_seconds=settings.redis_ttl_seconds,
        )

    @property
    def base(self) -> str:
        return f"{self.prefix}:{self.app_name}"

    @property
    def channel(self) -> str:
        return f"{self.base}:events"

    def stream_key(self, task_id: str) -> str:
        return f"{self.base}:task:{task_id}:events"


def connect(url: str, *, socket_timeout: float) -> Redis:
    """A client that fails fast: callers have their own fallback or backoff, so redis-py's
    default retries (seconds of sleeping per command while Redis is down) only add latency.
    One immediate retry reconnects a pooled connection that a Redis restart left stale."""
    client: Redis = Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=2.0,
        retry=Retry(NoBackoff(), 1),
    )
    return client


def describe(exc: BaseException) -> str:
    """One line for logs and /health/ready (no traceback; Redis errors name host:port only)."""
    text = " ".join(str(exc).split()).rstrip(".")
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:200]


def entry_seq(entry_id: bytes | str) -> int:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(raw.split("-", 1)[0])


def parse_entry(fields: dict[bytes, bytes]) -> Event:
    return _EVENT.validate_json(fields[b"event"])


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
        except _Outage as exc:
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
        except _Outage as exc:
            self._mark_down(exc)
            return 0
        return entry_seq(top[0][0]) if top else 0

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        await self._redis.aclose()

    async def _run(self) -> None:
        delay = self._retry[0]
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                try:
                    await self._flush()
                except _Outage as exc:
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
            except _Outage:
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
        for start in range(0, len(events), _BATCH):
            batch = events[start : start + _BATCH]
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
                    {key: f"{after_seq}-0"}, count=_BATCH, block=block_ms
                )
                entries = reply[0][1] if reply else []
            else:
                entries = await self._redis.xrange(key, min=f"{after_seq + 1}-0", count=_BATCH)
        except _Outage as exc:
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
        except _Outage as exc:
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
            reply: Any = await client.xread({key: cursor}, count=_BATCH, block=int(block_s * 1000))
            for entry_id, fields in reply[0][1] if reply else []:
                event = parse_entry(fields)
                cursor = entry_id
                yield event
                if event.status.terminal:
                    return
    finally:
        await client.aclose()
