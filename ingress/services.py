"""What the routes need, gathered once per ingress replica and reached through Depends."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Protocol

from fastapi import Depends, Request

from common.config import IngressConfig
from common.schemas import TaskSnapshot, TaskStatus
from common.settings import Settings
from deployments.progress_state import Event
from ingress.catalog import AsrCatalog
from ingress.fanout import TaskFanout
from ingress.hot_reads import FinishedTasks
from storage.blobs import BlobStore
from storage.db import Database


class ProgressReader(Protocol):
    async def snapshot(self, task_id: str) -> TaskSnapshot | None: ...
    async def events_after(
        self, task_id: str, after_seq: int, timeout_s: float
    ) -> list[Event] | None: ...
    async def ping(self) -> bool: ...
    async def forget(self, task_id: str) -> None: ...


class EventStreamReader(Protocol):
    """Task events from a shared store (Redis) that every ingress replica can read."""

    def usable(self) -> bool: ...
    async def read_after(
        self, task_id: str, after_seq: int, wait_s: float
    ) -> list[Event] | None: ...
    async def health(self) -> str: ...


class Notifier(Protocol):
    """The TaskRunner, owner of every status transition: woken for new work, and asked to
    cancel (it ends a queued task, or stops the run wherever a replica holds it)."""

    def notify(self) -> None: ...
    async def cancel(self, task_id: str) -> TaskStatus | None: ...


ReadinessCheck = Callable[[], Awaitable[dict[str, str]]]
"""Returns {component: "ok" | problem}; the ingress adds the database and tracker checks."""


@dataclass
class IngressServices:
    settings: Settings
    config: IngressConfig
    db: Database
    blobs: BlobStore
    """Where uploads are kept (``storage.blobs``); a task row holds its audio's key."""
    progress: ProgressReader
    runner: Notifier
    deployments_ready: ReadinessCheck
    ws_wait_seconds: float = 20.0
    events: EventStreamReader | None = None
    """Redis event reader when ``redis_url`` is set; the tracker actor is the fallback."""
    asr_catalog: AsrCatalog | None = None
    """The models (and their languages) the ASR deployment serves; ``None``: not checked."""
    finished: FinishedTasks = field(
        default_factory=lambda: FinishedTasks(max_bytes=0, ttl_s=0)  # off unless given
    )
    """Finished tasks' answers in this replica's memory (``ingress.hot_reads``)."""
    fanout: TaskFanout = field(default_factory=TaskFanout)
    """One event reader per watched task, shared by its WebSockets (``ingress.fanout``)."""


async def get_services(request: Request) -> IngressServices:  # async: no thread hop
    services: IngressServices = request.app.state.services
    return services


ServicesDep = Annotated[IngressServices, Depends(get_services)]
