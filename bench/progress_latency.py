"""Progress event latency: from emit (the event's ``timestamp``, set by the ProgressTracker
when it records the event) to the WebSocket frame arriving at a client, on one machine.

Runs ``--tasks`` tasks one after another (ASR + diarization on a ``--seconds`` clip, so
each emits many in-stage events), each watched by ``--watchers`` WebSocket clients that
connect right after the submit, spread over ``--procs`` client processes (each its own
event loop, so the clients' parsing is not one queue). A frame counts when its event was
emitted after every watcher had its snapshot (earlier ones met sockets still opening):
receive time (``time.time()`` at the client) minus the event's timestamp. Without ``--redis`` the
ingress reads events from the tracker actor; with ``--redis URL`` a second phase runs the
same tasks with events carried by Redis streams, in the same run.

    .venv/bin/python bench/progress_latency.py --tasks 4 --watchers 1,10 --redis redis://127.0.0.1:6379/0
    .venv/bin/python bench/progress_latency.py --tasks 2 --watchers 100,1000 --seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import _common as c
import httpx

Watched = list[tuple[float, list[tuple[float, float]]]]
"""Per watcher: when its snapshot arrived, then (receive time, emit time) per frame."""


async def _watch_many(ws_base: str, task_id: str, count: int) -> Watched:
    streams = await asyncio.gather(*(c.watch(ws_base, task_id) for _ in range(count)))
    out: Watched = []
    for frames in streams:
        if c.final_status(frames) != "completed":
            raise RuntimeError(f"task {task_id} ended {c.final_status(frames)}")
        out.append((frames[0][0], [(got, c.parse_ts(f["timestamp"])) for got, f in frames[1:]]))
    return out


def watch_in_process(ws_base: str, task_id: str, count: int) -> Watched:
    """One client process's share of the watchers (a loop of its own per process, so the
    clients' JSON parsing is not one core's queue)."""
    return asyncio.run(_watch_many(ws_base, task_id, count))


async def _submit(service: c.Service, path: Path) -> str:
    async with httpx.AsyncClient() as client:
        return await c.asubmit(client, service.base, path, align="false")


def one_task(
    service: c.Service, path: Path, watchers: int, pool: ProcessPoolExecutor, procs: int
) -> tuple[list[float], int]:
    """Latencies (ms) of the frames emitted after every watcher had its snapshot, and
    how many frames came before that (connections still opening; not counted)."""
    task_id = asyncio.run(_submit(service, path))
    shares = [watchers // procs + (i < watchers % procs) for i in range(procs)]
    jobs = [pool.submit(watch_in_process, service.ws, task_id, n) for n in shares if n]
    watched = [w for job in jobs for w in job.result()]
    all_open = max(opened for opened, _ in watched)
    latencies = [
        (got - emitted) * 1000
        for _, frames in watched
        for got, emitted in frames
        if emitted > all_open
    ]
    early = sum(len(frames) for _, frames in watched) - len(latencies)
    return latencies, early


def phase(
    name: str,
    path: Path,
    tasks: int,
    watchers: list[int],
    env: dict[str, str],
    pool: ProcessPoolExecutor,
    procs: int,
) -> list[list[object]]:
    service = c.start_service(env=env)
    rows: list[list[object]] = []
    try:
        one_task(service, path, 1, pool, 1)  # warm-up
        for w in watchers:
            latencies: list[float] = []
            early = 0
            for _ in range(tasks):
                got, before = one_task(service, path, w, pool, min(procs, w))
                latencies.extend(got)
                early += before
            rows.append(
                [
                    f"{name}, {w} watcher(s)",
                    len(latencies),
                    early,
                    c.percentile(latencies, 50),
                    c.percentile(latencies, 99),
                    max(latencies, default=float("nan")),
                ]
            )
    finally:
        c.stop_service()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=120.0, help="clip length")
    parser.add_argument("--watchers", default="1,10", help="comma-separated watcher counts")
    parser.add_argument("--redis", default=None, help="also run with events over this Redis")
    parser.add_argument("--procs", type=int, default=2, help="client processes for watchers")
    args = parser.parse_args()
    # Forked before Ray starts in this process; each worker runs its own event loop.
    pool = ProcessPoolExecutor(args.procs)
    list(pool.map(abs, range(args.procs)))
    clip = c.speech_clip(args.seconds, c.temp_dir("bench-audio-") / "clip.wav")
    watchers = [int(w) for w in args.watchers.split(",")]

    rows = phase("tracker actor", clip, args.tasks, watchers, {}, pool, args.procs)
    if args.redis:
        env = {
            "WHISPERX_SERVE_REDIS_URL": args.redis,
            "WHISPERX_SERVE_REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}",
        }
        rows += phase("redis streams", clip, args.tasks, watchers, env, pool, args.procs)
    c.table(
        ["events via", "frames", "before all open", "p50 ms", "p99 ms", "max ms"],
        rows,
        note=(
            f"{args.tasks} tasks x {args.seconds:.0f} s clip (ASR + diarization) per row; "
            f"emit = tracker timestamp, frame = client receive time; {c.machine_note()}"
        ),
    )


if __name__ == "__main__":
    main()
