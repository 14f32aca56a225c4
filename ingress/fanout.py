"""One reader per task per ingress replica, however many WebSockets watch it.

Without this every socket asked for the next event on its own: 500 watchers of one task
were 500 long-polls of the tracker actor (or 500 Redis ``XREAD``s) and 500 serialisations
of each event, and the last socket got an event hundreds of milliseconds after the first.
Here the first watcher of a task starts a :class:`TaskChannel`, whose one pump reads the
task's events (:class:`~ingress.ws.EventFeed`: Redis first, the tracker as fallback),
serialises each once and wakes every watcher with one future. Each watcher then sends the
frames past its own cursor at its own pace, so a slow client delays only itself.

The channel keeps its recent frames (``keep`` of them) for watchers that are behind: one
that joins with an older ``after_seq``, or one whose sends lag, reads what fell out of
the window through its own feed first. The channel ends with the task's terminal event,
when the task is gone or over, or when its last watcher leaves.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from deployments.progress_state import Event

logger = logging.getLogger(__name__)

KEEP_FRAMES = 2048
"""Frames a channel keeps for watchers behind its head (a task logs far fewer)."""


class Feed(Protocol):
    async def after(self, cursor: int) -> list[Event] | None: ...
    async def ended(self, cursor: int) -> bool: ...


@dataclass(frozen=True, slots=True)
class Frame:
    seq: int
    text: str
    terminal: str | None
    """The terminal status (the close reason), or ``None`` for a running event."""

    @classmethod
    def of(cls, event: Event) -> Frame:
        return cls(
            event.seq,
            event.model_dump_json(),
            event.status.value if event.status.terminal else None,
        )


class End:
    """Why a channel stopped: the task is unknown, it is over, or reading failed."""

    NOT_FOUND = "not found"
    OVER = "over"


class TaskChannel:
    """The frames of one task after ``start``, read once and shared by its watchers."""

    def __init__(self, task_id: str, feed: Feed, start: int, *, keep: int = KEEP_FRAMES) -> None:
        self.task_id = task_id
        self._feed = feed
        self._keep = keep
        self.head = start  # the highest seq read so far
        self.base = start  # frames with seq > base are in ``_frames``
        self._frames: list[Frame] = []
        self._seqs: list[int] = []
        self.ended: str | None = None  # End.NOT_FOUND, End.OVER, or an error's description
        self.error: BaseException | None = None
        self.watchers = 0
        self._news: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pump = asyncio.ensure_future(self._run())

    def frames_after(self, cursor: int) -> list[Frame]:
        """Kept frames with seq > ``cursor`` (all are there when ``cursor >= base``)."""
        return self._frames[bisect.bisect_right(self._seqs, cursor) :]

    def news(self, cursor: int) -> asyncio.Future[None]:
        """Resolved once the channel is past ``cursor`` or has ended."""
        if self.head > cursor or self.ended is not None:
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        return self._news

    def stop(self) -> None:
        self._pump.cancel()

    async def _run(self) -> None:
        try:
            while self.ended is None:
                events = await self._feed.after(self.head)
                if events is None:
                    self._end(End.NOT_FOUND)
                elif not events and await self._feed.ended(self.head):
                    self._end(End.OVER)
                else:
                    self._add([e for e in events if e.seq > self.head])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning(
                "reading events failed (%s)", type(exc).__name__, extra={"task_id": self.task_id}
            )
            self.error = exc
            self._end(type(exc).__name__)

    def _add(self, events: list[Event]) -> None:
        if not events:
            return
        for event in events:
            frame = Frame.of(event)
            self._frames.append(frame)
            self._seqs.append(frame.seq)
            self.head = frame.seq
            if frame.terminal is not None:
                self.ended = End.OVER
        if len(self._frames) > self._keep:
            drop = len(self._frames) - self._keep // 2
            self.base = self._seqs[drop - 1]
            del self._frames[:drop], self._seqs[:drop]
        self._wake()

    def _end(self, why: str) -> None:
        self.ended = why
        self._wake()

    def _wake(self) -> None:
        news, self._news = self._news, asyncio.get_running_loop().create_future()
        if not news.done():  # never cancelled by a watcher (``ws._unless_left``); be sure
            news.set_result(None)


class TaskFanout:
    """This replica's channels, one per task with at least one watcher."""

    def __init__(self, *, keep: int = KEEP_FRAMES) -> None:
        self._keep = keep
        self._channels: dict[str, TaskChannel] = {}

    def join(self, task_id: str, cursor: int, make_feed: Callable[[], Feed]) -> TaskChannel:
        channel = self._channels.get(task_id)
        if channel is None or (channel.ended is not None and channel.ended != End.OVER):
            # A channel that failed is not handed on: the new watcher starts a fresh read.
            channel = self._channels[task_id] = TaskChannel(
                task_id, make_feed(), cursor, keep=self._keep
            )
        channel.watchers += 1
        return channel

    def leave(self, channel: TaskChannel) -> None:
        channel.watchers -= 1
        if channel.watchers == 0:
            channel.stop()
            if self._channels.get(channel.task_id) is channel:
                del self._channels[channel.task_id]

    def __len__(self) -> int:
        return len(self._channels)
