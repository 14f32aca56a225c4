"""Finished tasks' answers from the ingress replica's memory (``ingress.hot_reads``)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from common.schemas import Segment, TaskStatus, Transcript
from ingress.hot_reads import FinishedTasks
from ingress.services import IngressServices
from storage import lifecycle, repository
from tests.fakes import add_task
from tests.unit.test_ingress import client, services

__all__ = ["client", "services"]  # fixtures shared with test_ingress

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bodies_are_kept_for_their_time_within_their_bytes() -> None:
    clock = Clock()
    kept = FinishedTasks(max_bytes=10, ttl_s=5, clock=clock)
    kept.put("task", "a", b"aaaa")
    kept.put("task", "b", b"bbbb")
    assert kept.body("task", "a", None) == b"aaaa"  # now the most recently used
    kept.put("task", "c", b"cccc")  # 12 bytes > 10: the least recently used goes
    assert kept.body("task", "b", None) is None and kept.size_bytes == 8
    clock.now = 5.0
    assert kept.body("task", "a", None) is None and kept.body("task", "c", None) is None
    kept.put("task", "huge", b"x" * 11)  # larger than the whole cache: not kept
    assert kept.size_bytes == 0


def test_an_eviction_drops_every_route_of_the_task() -> None:
    kept = FinishedTasks(max_bytes=100, ttl_s=5)
    kept.put("task", "a", b"row")
    kept.put("progress", "a", b"snap")
    kept.put("task", "b", b"other")
    kept.evict("a")
    assert kept.body("task", "a", None) is None and kept.body("progress", "a", None) is None
    assert kept.body("task", "b", None) == b"other"


def test_a_body_goes_only_to_callers_who_could_read_it() -> None:
    kept = FinishedTasks(max_bytes=100, ttl_s=5)
    kept.put("task", "mine", b"1", owner_key_id="k1")
    kept.put("progress", "unchecked", b"2", owner_known=False)
    assert kept.body("task", "mine", "k1") == b"1"
    assert kept.body("task", "mine", "k2") is None  # another key: the database says 404
    assert kept.body("task", "mine", None) == b"1"  # admin, or auth off
    assert kept.body("progress", "unchecked", None) == b"2"
    assert kept.body("progress", "unchecked", "k1") is None  # owner never checked


def test_zero_turns_it_off() -> None:
    for kept in (FinishedTasks(max_bytes=0, ttl_s=5), FinishedTasks(max_bytes=100, ttl_s=0)):
        kept.put("task", "a", b"1")
        assert kept.body("task", "a", None) is None


def _finished(services: IngressServices, task_id: str) -> None:
    add_task(services.db, task_id)
    result = Transcript(
        language="en",
        segments=[Segment(start=0, end=1, text=" Ask not.", speaker="SPEAKER_00")],
        speakers=["SPEAKER_00"],
    )
    assert lifecycle.finish(
        services.db, task_id=task_id, status=TaskStatus.completed, result=result, seq=3
    )
    services.progress.state(task_id).finish(TaskStatus.completed)  # type: ignore[attr-defined]


async def test_a_finished_task_is_read_once_then_served_from_memory(
    client: httpx.AsyncClient, services: IngressServices
) -> None:
    _finished(services, "f1")
    first = await client.get("/task/f1")
    progress = await client.get("/tasks/f1/progress")
    assert first.status_code == progress.status_code == 200
    assert first.json()["status"] == progress.json()["status"] == "completed"
    assert first.headers["content-type"] == "application/json"
    # Gone from the database and the tracker behind the ingress's back: still answered
    # (that is the cache), the same bytes.
    repository.delete_task(services.db, task_id="f1")
    await services.progress.forget("f1")
    again = await client.get("/task/f1")
    assert again.status_code == 200 and again.content == first.content
    assert (await client.get("/tasks/f1/progress")).content == progress.content


async def test_a_delete_or_a_rename_through_this_replica_is_seen_at_once(
    client: httpx.AsyncClient, services: IngressServices
) -> None:
    _finished(services, "f1")
    assert not (await client.get("/task/f1")).json()["speaker_names"]
    named = await client.put("/task/f1/speakers", json={"names": {"SPEAKER_00": "Alice"}})
    assert named.status_code == 200, named.text
    assert (await client.get("/task/f1")).json()["speaker_names"] == {"SPEAKER_00": "Alice"}
    assert (await client.delete("/task/f1/delete")).status_code == 200
    assert (await client.get("/task/f1")).status_code == 404
    assert (await client.get("/tasks/f1/progress")).status_code == 404


async def test_an_unfinished_task_is_read_afresh_every_time(
    client: httpx.AsyncClient, services: IngressServices, jfk_path: Path
) -> None:
    r = await client.post("/speech-to-text", files={"file": ("a.flac", jfk_path.read_bytes())})
    task_id = r.json()["identifier"]
    assert (await client.get(f"/task/{task_id}")).json()["status"] == "queued"
    lifecycle.claim(services.db, worker_id="w", limit=1, lease_seconds=30)
    assert (await client.get(f"/task/{task_id}")).json()["status"] == "processing"
    assert lifecycle.finish(services.db, task_id=task_id, status=TaskStatus.cancelled)
    assert (await client.get(f"/task/{task_id}")).json()["status"] == "cancelled"
