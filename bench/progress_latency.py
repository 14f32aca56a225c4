"""Progress event latency: from emit (the event's ``timestamp``, set by the ProgressTracker
when it records the event) to the WebSocket frame arriving at a client, with 1 to 1,000
watchers of one task, on one machine.

Per row: one ASR-only task on a ``--seconds`` clip is submitted and, once it runs, watched
by ``--watchers`` WebSocket clients spread over ``--procs`` client processes (each its own
event loop, so the clients' parsing is not one queue). When every socket has its snapshot,
the bench sends ``--events`` progress notes for that task to the tracker deployment at
``--rate`` per second (through its Serve handle, as the stages do), then cancels the task;
its ``cancelled`` event closes the sockets. Each note's frame counts: receive time
(``time.time()`` at the client) minus the event's timestamp. The task's ASR keeps running
meanwhile, so the ingress shares the CPU as it would in service.

A phase is one start of the service (``--phases``): ``proxy`` as shipped, behind Serve's
Python proxy; ``haproxy`` behind Serve's HAProxy ingress (``make run HAPROXY=1``); ``redis``
with events carried over Redis streams (``--redis URL``).

    .venv/bin/python bench/progress_latency.py --watchers 1,10,100,1000 --phases proxy,haproxy
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import shutil
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import _common as c
import httpx

NOTE = "bench note"
_opened: Any = None  # a shared counter of sockets that have their snapshot (per pool)


def _init(counter: Any) -> None:
    global _opened
    _opened = counter


async def _watch(ws_base: str, task_id: str) -> list[float]:
    import json

    import websockets

    latencies: list[float] = []
    async with websockets.connect(f"{ws_base}/ws/tasks/{task_id}", max_size=None) as ws:
        await ws.recv()  # the snapshot
        with _opened.get_lock():
            _opened.value += 1
        try:
            async for message in ws:
                got = time.time()
                frame = json.loads(message)
                if str(frame.get("message", "")).startswith(NOTE):
                    latencies.append((got - c.parse_ts(frame["timestamp"])) * 1000)
        except websockets.ConnectionClosed:
            pass
    return latencies


async def _watch_many(ws_base: str, task_id: str, count: int) -> list[float]:
    streams = await asyncio.gather(*(_watch(ws_base, task_id) for _ in range(count)))
    return [x for s in streams for x in s]


def watch_in_process(ws_base: str, task_id: str, count: int) -> list[float]:
    return asyncio.run(_watch_many(ws_base, task_id, count))


def one_row(
    service: c.Service,
    clip: Path,
    watchers: int,
    pool: ProcessPoolExecutor,
    counter: Any,
    procs: int,
    args: argparse.Namespace,
) -> tuple[list[float], float]:
    """Latencies (ms) of every note frame at every watcher, and seconds to open them all."""
    from ray import serve

    tracker = serve.get_deployment_handle("ProgressTracker", app_name=c.APP)
    with httpx.Client(timeout=120) as client:
        r = client.post(
            f"{service.base}/speech-to-text",
            params={"align": "false", "diarize": "false"},
            files={"file": (clip.name, clip.read_bytes())},
        )
        r.raise_for_status()
        task_id = r.json()["identifier"]
        c.wait_status(service.base, task_id, "processing", timeout=120)
        counter.value = 0
        started = time.perf_counter()
        shares = [watchers // procs + (i < watchers % procs) for i in range(procs)]
        jobs = [pool.submit(watch_in_process, service.ws, task_id, n) for n in shares if n]
        deadline = time.monotonic() + 300
        while counter.value < watchers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{counter.value} of {watchers} sockets open after 300 s")
            time.sleep(0.05)
        open_s = time.perf_counter() - started
        for i in range(args.events):
            tracker.note.remote(task_id, f"{NOTE} {i}").result()
            time.sleep(1 / args.rate)
        client.post(f"{service.base}/task/{task_id}/cancel").raise_for_status()
    latencies = [x for job in jobs for x in job.result()]
    expected = watchers * args.events
    if len(latencies) != expected:
        raise RuntimeError(f"{len(latencies)} note frames of {expected} arrived")
    return latencies, open_s


def phase(
    name: str,
    clip: Path,
    env: dict[str, str],
    pool: ProcessPoolExecutor,
    counter: Any,
    args: argparse.Namespace,
) -> list[list[object]]:
    service = c.start_service(env=env)
    rows: list[list[object]] = []
    try:
        for w in [int(w) for w in args.watchers.split(",")]:
            latencies, open_s = one_row(service, clip, w, pool, counter, min(args.procs, w), args)
            rows.append(
                [
                    f"{name}, {w} watcher(s)",
                    len(latencies),
                    round(open_s, 1),
                    c.percentile(latencies, 50),
                    c.percentile(latencies, 99),
                    max(latencies),
                ]
            )
            print(rows[-1], flush=True)
    finally:
        c.stop_service()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--watchers", default="1,10,100,1000", help="comma-separated counts")
    parser.add_argument("--events", type=int, default=40, help="notes per row")
    parser.add_argument("--rate", type=float, default=10.0, help="notes per second")
    parser.add_argument("--seconds", type=float, default=900.0, help="clip length (ASR)")
    parser.add_argument("--procs", type=int, default=2, help="client processes for watchers")
    parser.add_argument(
        "--phases", default="proxy,haproxy", help="comma-separated: proxy, haproxy, redis"
    )
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="for phase redis")
    args = parser.parse_args()
    # Forked before Ray starts in this process; each worker runs its own event loop.
    counter = mp.get_context("fork").Value("i", 0)
    pool = ProcessPoolExecutor(
        args.procs, mp_context=mp.get_context("fork"), initializer=_init, initargs=(counter,)
    )
    list(pool.map(abs, range(args.procs)))
    clip = c.speech_clip(args.seconds, c.temp_dir("bench-audio-") / "clip.wav")

    rows: list[list[object]] = []
    for name in args.phases.split(","):
        if name == "proxy":
            rows += phase("Serve proxy", clip, {}, pool, counter, args)
        elif name == "haproxy":
            binary = shutil.which("haproxy")
            if binary is None:
                raise SystemExit("phase haproxy needs haproxy: apt-get install haproxy")
            env = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_BINARY_PATH": binary}
            rows += phase("HAProxy", clip, env, pool, counter, args)
        elif name == "redis":
            env = {
                "WHISPERX_SERVE_REDIS_URL": args.redis,
                "WHISPERX_SERVE_REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}",
            }
            rows += phase("Redis streams", clip, env, pool, counter, args)
        else:
            raise SystemExit(f"unknown phase {name!r}")
    c.table(
        ["ingress, events via", "frames", "open all, s", "p50 ms", "p99 ms", "max ms"],
        rows,
        note=(
            f"{args.events} notes at {args.rate:g}/s per row, one ASR task running; "
            f"emit = tracker timestamp, frame = client receive time; {c.machine_note()}"
        ),
    )


if __name__ == "__main__":
    main()
