"""Backpressure: a burst of 1,000 submissions is accepted, queued durably and worked off at
the runner's bound, while the service stays ready and reports each task's queue position.

The tasks are cheap (a 1 s slice of jfk, ASR only); the test does not wait for all of
them: once the checks are done it cancels what is still queued and waits for the queue to
drain, so the rest of the suite is not held up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.audio import write_wav
from tests.integration.conftest import Service
from tests.waiting import wait_until

BURST = 1_000
CONNECTIONS = 16  # a bounded client pool, as a well-behaved batch client would use
ACCEPT_DEADLINE_S = 150.0
SPEECH = {"align": "false", "diarize": "false"}


@pytest.fixture(scope="module")
def one_second_wav(tmp_path_factory: pytest.TempPathFactory, jfk_path: Path) -> Path:
    from deployments.audio import SAMPLE_RATE, decode_audio

    audio = decode_audio(jfk_path)[SAMPLE_RATE : 2 * SAMPLE_RATE]
    return write_wav(audio, tmp_path_factory.mktemp("burst") / "jfk-1s.wav")


@dataclass
class Watch:
    """What the sampler saw while the burst was running."""

    ready_codes: list[int] = field(default_factory=list)
    not_ready: list[str] = field(default_factory=list)
    """The body of every readiness answer that was not 200."""
    processing: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    over_bound: list[list[str]] = field(default_factory=list)
    """The processing rows (id, attempts, claimer, lease) whenever more than the bound."""


def _processing_rows(database_url: str) -> list[str]:
    import sqlalchemy as sa

    from storage.db import Database
    from storage.models import TaskRow

    db = Database(database_url)
    try:
        with db.session() as session:
            rows = session.scalars(sa.select(TaskRow).where(TaskRow.status == "processing"))
            return [
                f"{r.id[:8]} attempts={r.attempts} by={r.claimed_by} lease={r.lease_expires_at}"
                f" started={r.started_at}"
                for r in rows
            ]
    finally:
        db.dispose()


async def _total(client: httpx.AsyncClient, base: str, status: str) -> int:
    r = await client.get(f"{base}/task/all", params={"status": status, "limit": 1}, timeout=30)
    r.raise_for_status()
    return int(r.json()["total"])


async def _sample(service: Service, bound: int, watch: Watch, stop: asyncio.Event) -> None:
    """Readiness and the number of tasks in flight, about twice a second, on its own client."""
    base = service.base_url
    async with httpx.AsyncClient() as client:
        while not stop.is_set():
            try:
                r = await client.get(f"{base}/health/ready", timeout=15)
                watch.ready_codes.append(r.status_code)
                if r.status_code != 200:
                    watch.not_ready.append(r.text)
                watch.processing.append(await _total(client, base, "processing"))
                if watch.processing[-1] > bound:
                    rows = await asyncio.to_thread(_processing_rows, service.database_url)
                    watch.over_bound.append(rows)
            except httpx.HTTPError as exc:
                watch.errors.append(f"{type(exc).__name__}: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


async def _submit(client: httpx.AsyncClient, base: str, body: bytes) -> tuple[int, str]:
    r = await client.post(
        f"{base}/speech-to-text",
        params=SPEECH,
        files={"file": ("jfk-1s.wav", body, "audio/wav")},
        timeout=ACCEPT_DEADLINE_S,
    )
    return r.status_code, (r.json().get("identifier", "") if r.status_code == 200 else r.text)


async def _progress(client: httpx.AsyncClient, base: str, task_id: str) -> dict[str, Any]:
    r = await client.get(f"{base}/tasks/{task_id}/progress", timeout=30)
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


async def _positions_read_backwards(
    client: httpx.AsyncClient, base: str, ids: list[str]
) -> list[dict[str, Any]]:
    """Progress of ``ids`` (in queue order), read last first.

    Work taken off the queue meanwhile only moves the head, so every task read later can
    only have moved forward: for tasks in queue order the positions read this way must
    still increase strictly, however many tasks the runner claimed between two reads.
    """
    out = [await _progress(client, base, task_id) for task_id in reversed(ids)]
    return list(reversed(out))


async def test_burst_of_1000_is_queued_bounded_and_reported(
    service: Service, one_second_wav: Path
) -> None:
    base = service.base_url
    bound = int(service.app_args["runner"]["max_concurrent_tasks"])  # type: ignore[index]
    body = one_second_wav.read_bytes()
    watch, stop = Watch(), asyncio.Event()
    sampler = asyncio.create_task(_sample(service, bound, watch, stop))

    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(limits=limits) as client:
        started = time.monotonic()
        results = await asyncio.wait_for(
            asyncio.gather(*(_submit(client, base, body) for _ in range(BURST))),
            ACCEPT_DEADLINE_S,
        )
        accept_s = time.monotonic() - started
        refused = [r for r in results if r[0] != 200]
        assert not refused, f"{len(refused)} of {BURST} submissions refused, e.g. {refused[:3]}"
        ids = [task_id for _, task_id in results]
        assert len(set(ids)) == BURST

        # A few more, one after another: their submission order is known exactly.
        tail = []
        for _ in range(5):
            code, task_id = await _submit(client, base, body)
            assert code == 200, task_id
            tail.append(task_id)

        # Most of the burst is still waiting: the queue, not the deployments, holds it.
        queued_total = await _total(client, base, "queued")
        assert queued_total > BURST // 2, f"only {queued_total} queued after {accept_s:.1f} s"

        # Queued tasks say so, with a position consistent with the queue order.
        r = await client.get(
            f"{base}/task/all",
            params={"status": "queued", "sort": "oldest", "limit": 1000},
            timeout=60,
        )
        r.raise_for_status()
        in_order = [t["identifier"] for t in r.json()["tasks"]]
        sample = in_order[:: max(1, len(in_order) // 25)][:25]
        checks = [*sample, *tail]
        reads = await _positions_read_backwards(client, base, checks)
        still_queued = [p for p in reads if p["status"] == "queued"]
        assert len(still_queued) >= len(checks) // 2, reads[:3]
        for p in still_queued:
            assert p["progress_stage"] == "queued", p
            assert isinstance(p["queue_position"], int) and p["queue_position"] >= 1, p
        positions = [p["queue_position"] for p in still_queued]
        assert positions == sorted(positions) and len(set(positions)) == len(positions), (
            f"queue positions out of order: {positions}"
        )
        tail_positions = [p["queue_position"] for p in reads[-len(tail) :]]
        assert all(isinstance(x, int) for x in tail_positions), reads[-len(tail) :]
        assert tail_positions == sorted(set(tail_positions)), tail_positions

        # Let the runner work a little under the full queue, then clear what remains.
        completed_before = await _total(client, base, "completed")
        wait_until_completed = completed_before + 2 * bound
        deadline = time.monotonic() + 90
        while await _total(client, base, "completed") < wait_until_completed:
            assert time.monotonic() < deadline, "the runner made no progress under the burst"
            await asyncio.sleep(0.5)

        everyone = [*ids, *tail]
        cancelled = await asyncio.gather(
            *(client.post(f"{base}/task/{t}/cancel", timeout=60) for t in everyone)
        )
        assert all(c.status_code == 200 for c in cancelled), [
            c.text for c in cancelled if c.status_code != 200
        ][:3]

    stop.set()
    await sampler
    print(  # the figures, with -s
        f"\nburst of {BURST}: accepted in {accept_s:.1f} s ({BURST / accept_s:.0f}/s), "
        f"{queued_total} still queued then; processing at most {max(watch.processing)} "
        f"(bound {bound}); /health/ready {len(watch.ready_codes)} samples, "
        f"codes {sorted(set(watch.ready_codes))}"
    )

    def drained() -> bool:
        with httpx.Client() as c:
            counts = [
                c.get(f"{base}/task/all", params={"status": s, "limit": 1}, timeout=30).json()[
                    "total"
                ]
                for s in ("queued", "processing")
            ]
        return counts == [0, 0]

    try:
        await asyncio.to_thread(
            wait_until, drained, timeout=120, interval=0.5, what="queue drained"
        )
    except TimeoutError as exc:
        left = await asyncio.to_thread(_processing_rows, service.database_url)
        with httpx.Client() as c:
            queued = c.get(f"{base}/task/all", params={"status": "queued"}, timeout=30).json()
        raise AssertionError(
            f"not drained: processing {left[:5]}; queued {queued['total']}: "
            f"{[(t['identifier'][:8], t['created_at']) for t in queued['tasks'][:5]]}"
        ) from exc

    assert not watch.errors, watch.errors[:3]
    assert len(watch.ready_codes) >= 5, "the sampler barely ran"
    assert set(watch.ready_codes) == {200}, (
        f"/health/ready not 200 during the burst: {watch.ready_codes} {watch.not_ready}"
    )
    assert max(watch.processing) <= bound, (
        f"{max(watch.processing)} tasks processing at once; the runner bound is {bound}; "
        f"rows: {watch.over_bound[:3]}"
    )
    assert max(watch.processing) >= 1, "no task was ever seen processing"

    # Every task of the burst ended completed or cancelled, none failed or left behind.
    async with httpx.AsyncClient(limits=limits) as client:
        finals = await asyncio.gather(*(_progress(client, base, t) for t in everyone))
    statuses = {p["status"] for p in finals}
    assert statuses <= {"completed", "cancelled"}, statuses
    assert sum(p["status"] == "completed" for p in finals) >= 2 * bound
