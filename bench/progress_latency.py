"""Progress event latency: from emit (the event's ``timestamp``, set by the ProgressTracker
when it records the event) to the WebSocket frame arriving at a client, on one machine.

Runs ``--tasks`` tasks one after another (ASR + diarization on a ``--seconds`` clip, so
each emits many in-stage events), each watched by ``--watchers`` WebSocket clients that
connect right after the submit. Every frame after the snapshot counts: receive time
(``time.time()`` at the client) minus the event's timestamp. Without ``--redis`` the
ingress reads events from the tracker actor; with ``--redis URL`` a second phase runs the
same tasks with events carried by Redis streams, in the same run.

    .venv/bin/python bench/progress_latency.py --tasks 4 --watchers 1,10 --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from pathlib import Path

import _common as c
import httpx


async def one_task(service: c.Service, path: Path, watchers: int) -> list[float]:
    async with httpx.AsyncClient() as client:
        task_id = await c.asubmit(client, service.base, path, align="false")
    streams = await asyncio.gather(*(c.watch(service.ws, task_id) for _ in range(watchers)))
    latencies = []
    for frames in streams:
        if c.final_status(frames) != "completed":
            raise RuntimeError(f"task {task_id} ended {c.final_status(frames)}")
        for received, frame in frames[1:]:  # after the snapshot
            latencies.append((received - c.parse_ts(frame["timestamp"])) * 1000)
    return latencies


def phase(
    name: str, path: Path, tasks: int, watchers: list[int], env: dict[str, str]
) -> list[list[object]]:
    service = c.start_service(env=env)
    rows: list[list[object]] = []
    try:
        asyncio.run(one_task(service, path, 1))  # warm-up
        for w in watchers:
            latencies: list[float] = []
            for _ in range(tasks):
                latencies.extend(asyncio.run(one_task(service, path, w)))
            rows.append(
                [
                    f"{name}, {w} watcher(s)",
                    len(latencies),
                    c.percentile(latencies, 50),
                    c.percentile(latencies, 99),
                    max(latencies),
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
    args = parser.parse_args()
    clip = c.speech_clip(args.seconds, c.temp_dir("bench-audio-") / "clip.wav")
    watchers = [int(w) for w in args.watchers.split(",")]

    rows = phase("tracker actor", clip, args.tasks, watchers, {})
    if args.redis:
        env = {
            "WHISPERX_SERVE_REDIS_URL": args.redis,
            "WHISPERX_SERVE_REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}",
        }
        rows += phase("redis streams", clip, args.tasks, watchers, env)
    c.table(
        ["events via", "frames", "p50 ms", "p99 ms", "max ms"],
        rows,
        note=(
            f"{args.tasks} tasks x {args.seconds:.0f} s clip (ASR + diarization) per row; "
            f"emit = tracker timestamp, frame = client receive time; {c.machine_note()}"
        ),
    )


if __name__ == "__main__":
    main()
