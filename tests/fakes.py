"""In-process fakes for the ingress, and one builder for its services, shared by the tests.

``make_ingress_services`` gives the ingress real SQLite storage under a test's directory,
an in-memory progress tracker and a runner stand-in, so its routes run without Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.config import IngressConfig
from common.schemas import TaskParams, TaskSnapshot, TaskStatus, TaskType
from common.settings import Settings
from deployments.progress_state import Event, TaskProgressState
from ingress.hot_reads import FinishedTasks
from ingress.services import EventStreamReader, IngressServices, ProgressReader
from ingress.services import Notifier as RunnerLink
from storage import lifecycle, repository
from storage.blobs import blob_store_from
from storage.db import Database, migrate
from storage.models import TaskRow


class FakeTracker:
    """In-memory stand-in for the ProgressTracker actor, backed by the same state class."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.states: dict[str, TaskProgressState] = {}
        self.changed = asyncio.Event()

    def state(self, task_id: str) -> TaskProgressState | None:
        if task_id not in self.states and repository.get_task(self.db, task_id=task_id) is not None:
            self.states[task_id] = TaskProgressState(task_id=task_id)
        return self.states.get(task_id)

    async def snapshot(self, task_id: str) -> TaskSnapshot | None:
        state = self.state(task_id)
        return state.snapshot() if state else None

    async def events_after(
        self, task_id: str, after_seq: int, timeout_s: float
    ) -> list[Event] | None:
        state = self.state(task_id)
        if state is None:
            return None
        if state.seq <= after_seq and not state.status.terminal:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout_s)
        return state.events_after(after_seq)

    async def ping(self) -> bool:
        return True

    async def forget(self, task_id: str) -> None:
        self.states.pop(task_id, None)

    async def finished(self, task_id: str, status: TaskStatus, error: Any = None) -> None:
        """The terminal event, published after the (fake) runner wrote the row."""
        state = self.state(task_id)
        if state is not None and state.finish(status, error) is not None:
            self.changed.set()


class Notifier:
    """Stands in for the TaskRunner handle: counts wake-ups, and takes cancels the way the
    runner does (``storage.lifecycle``; a queued task ends now and its callback is "sent",
    recorded in ``ended``; a running one is flagged, recorded in ``stopping``)."""

    def __init__(self, db: Database | None = None, tracker: Any = None) -> None:
        self.db, self.tracker = db, tracker
        self.count = 0
        self.ended: list[str] = []
        self.stopping: list[str] = []

    def notify(self) -> None:
        self.count += 1

    async def cancel(self, task_id: str) -> TaskStatus | None:
        assert self.db is not None, "a Notifier built without a database takes no cancels"
        outcome = await asyncio.to_thread(lifecycle.cancel, self.db, task_id=task_id)
        if outcome is None:
            return None
        if outcome.ended_now:
            if self.tracker is not None and hasattr(self.tracker, "finished"):
                await self.tracker.finished(task_id, TaskStatus.cancelled)
            self.ended.append(task_id)
        elif outcome.status is TaskStatus.processing:
            self.stopping.append(task_id)
        return outcome.status


def make_ingress_services(
    data_dir: Path,
    *,
    db_name: str = "ingress.db",
    config: IngressConfig | None = None,
    tracker: Callable[[Database], ProgressReader] = FakeTracker,
    runner: Callable[[Database, Any], RunnerLink] | None = None,
    ready: dict[str, str] | None = None,
    ws_wait_seconds: float = IngressServices.ws_wait_seconds,
    events: EventStreamReader | None = None,
    **settings: Any,
) -> IngressServices:
    """Services on a freshly migrated SQLite database ``data_dir / db_name``.

    ``tracker`` is built from the database and ``runner`` (default: a :class:`Notifier`)
    from the database and that tracker; ``ready`` is what the deployments' readiness
    check answers. Further keyword arguments are :class:`Settings` fields.
    """
    settings_ = Settings(
        data_dir=data_dir, database_url=f"sqlite:///{data_dir / db_name}", **settings
    )
    url = settings_.resolved_database_url()
    migrate(url)
    db = Database(url)
    progress = tracker(db)

    async def deployments_ready() -> dict[str, str]:
        return dict(ready or {})

    config = config or IngressConfig()
    return IngressServices(
        settings=settings_,
        config=config,
        finished=FinishedTasks(
            max_bytes=config.finished_cache_bytes, ttl_s=config.finished_cache_seconds
        ),
        db=db,
        blobs=blob_store_from(settings_, db),
        progress=progress,
        runner=runner(db, progress) if runner else Notifier(db, progress),
        deployments_ready=deployments_ready,
        ws_wait_seconds=ws_wait_seconds,
        events=events,
    )


def add_task(db: Database, task_id: str) -> TaskRow:
    """A queued ASR task without audio, as the ingress creates one."""
    return repository.create_task(
        db,
        task_id=task_id,
        task_type=TaskType.speech_to_text,
        params=TaskParams(),
        file_name=None,
        audio_key=None,
    )


def task_database(path: Path, *task_ids: str, claimed_by: str | None = None) -> Database:
    """A fresh, migrated SQLite task database at ``path`` holding one queued task per id
    (:func:`add_task`), each claimed by ``claimed_by`` when given, as a runner would have."""
    url = f"sqlite:///{path}"
    migrate(url)
    db = Database(url)
    for task_id in task_ids:
        add_task(db, task_id)
    if claimed_by is not None:
        lifecycle.claim(db, worker_id=claimed_by, limit=len(task_ids), lease_seconds=60)
    return db
