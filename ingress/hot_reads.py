"""Finished tasks' answers, served from this ingress replica's memory.

A task that has ended changes only when it is deleted or its speakers are renamed, and a
client that polls ``GET /task/{id}`` or ``GET /tasks/{id}/progress`` keeps asking after the
end (the last poll of every loop, dashboards, many clients watching one task). So the first
read of a finished task keeps its JSON body here, and later reads send those bytes without
a database or tracker round trip, and without building the response models again.

What this costs in correctness: a delete or a rename evicts the entry on the replica that
handled it at once; another ingress replica may serve the task as it was for up to
``ttl_s`` more (with one ingress replica, the default, never). Unfinished tasks are never
kept. The owner is kept with the body, so a caller sees only what the database read would
have shown it; a body kept without knowing its owner (read with no owner check) goes only
to callers who see every task.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    body: bytes
    owner_key_id: str | None
    owner_known: bool
    expires: float

    def for_caller(self, owner_scope: str | None) -> bytes | None:
        """The body, if a caller whose tasks are ``owner_scope`` (``None``: all) sees it."""
        if owner_scope is None or (self.owner_known and self.owner_key_id == owner_scope):
            return self.body
        return None


class FinishedTasks:
    """An LRU of JSON bodies by (route, task id), bounded in bytes, each kept ``ttl_s``."""

    def __init__(
        self, *, max_bytes: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._entries: OrderedDict[tuple[str, str], Entry] = OrderedDict()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._ttl = ttl_s
        self._clock = clock

    def body(self, route: str, task_id: str, owner_scope: str | None) -> bytes | None:
        """The kept body for a caller whose tasks are ``owner_scope``, if any."""
        entry = self.get(route, task_id)
        return entry.for_caller(owner_scope) if entry is not None else None

    def get(self, route: str, task_id: str) -> Entry | None:
        key = (route, task_id)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(
        self,
        route: str,
        task_id: str,
        body: bytes,
        *,
        owner_key_id: str | None = None,
        owner_known: bool = True,
    ) -> None:
        if self._ttl <= 0 or len(body) > self._max_bytes:
            return
        key = (route, task_id)
        self._drop(key)
        expires = self._clock() + self._ttl
        self._entries[key] = Entry(body, owner_key_id, owner_known, expires)
        self._bytes += len(body)
        while self._bytes > self._max_bytes:
            self._drop(next(iter(self._entries)))

    def evict(self, task_id: str) -> None:
        """Every route's entry for ``task_id`` (a delete on this replica)."""
        for key in [k for k in self._entries if k[1] == task_id]:
            self._drop(key)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry.body)
