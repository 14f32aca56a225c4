"""How many progress events one ProgressTracker replica records per second, with 1,000
and 10,000 tasks in flight, through Serve handles as the TaskRunner sends them.

No models: ``--emitters`` Ray actors stand in for the stages. Each first starts its share
of ``--tasks`` tasks (rows created beforehand in the database), then sends ``note`` events
(every call logs one event, wakes that task's watchers and, within the mirror interval,
writes the task's row) round-robin over its tasks from ``--lanes`` concurrent loops, for
``--duration`` seconds. Reported: events/s the tracker acknowledged, the call latency
seen by the emitters, and the tracker's CPU and memory.

    .venv/bin/python bench/tracker_load.py --tasks 1000,10000 --duration 20
    .venv/bin/python bench/tracker_load.py --tasks 1000,10000 --database postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from typing import Any

import _common as c

APP = "tracker-bench"


def make_rows(url: str, count: int) -> list[str]:
    """``count`` queued tasks in the database, as the ingress creates them."""
    from storage.db import Database, migrate
    from tests.fakes import add_task

    migrate(url)
    db = Database(url)
    ids = [add_task(db, uuid.uuid4().hex).id for _ in range(count)]
    db.dispose()
    return ids


def emitter_class() -> Any:
    import ray
    from ray import serve

    @ray.remote(num_cpus=0)
    class Emitter:
        def __init__(self) -> None:
            self._h = serve.get_deployment_handle("ProgressTracker", app_name=APP)

        async def start(self, task_ids: list[str]) -> None:
            for i in range(0, len(task_ids), 200):
                chunk = task_ids[i : i + 200]
                await asyncio.gather(*(self._h.start.remote(t, ["transcribing"]) for t in chunk))

        async def run(
            self, task_ids: list[str], lanes: int, duration: float
        ) -> tuple[int, list[float]]:
            deadline = time.monotonic() + duration
            latencies: list[float] = []

            async def lane(ids: list[str]) -> None:
                n = 0
                while time.monotonic() < deadline:
                    for task_id in ids:
                        t0 = time.perf_counter()
                        await self._h.note.remote(task_id, f"step {n}")
                        latencies.append((time.perf_counter() - t0) * 1000)
                        n += 1
                        if time.monotonic() >= deadline:
                            return

            shares = [task_ids[i::lanes] for i in range(lanes)]
            await asyncio.gather(*(lane(s) for s in shares if s))
            return len(latencies), latencies

    return Emitter


def tracker_pid(timeout: float = 60) -> int:
    """The tracker replica's process, by its Ray worker title."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in psutil.process_iter(["cmdline"]):
            title = " ".join(proc.info["cmdline"] or [])
            if f"ServeReplica:{APP}:ProgressTracker" in title:
                return int(proc.pid)
        time.sleep(0.5)
    raise RuntimeError("no tracker replica process")


def one_size(url: str, tasks: int, emitters: int, lanes: int, duration: float) -> list[object]:
    import psutil
    import ray
    from ray import serve

    from deployments.progress import TrackerDeployment

    serve.run(
        TrackerDeployment.bind(app_name=APP, mirror_interval_s=1.0, retain_terminal_s=900.0),
        name=APP,
        route_prefix=None,
    )
    ids = make_rows(url, tasks)
    Emitter = emitter_class()
    actors = [Emitter.remote() for _ in range(emitters)]
    shares = [ids[i::emitters] for i in range(emitters)]
    t0 = time.perf_counter()
    ray.get([a.start.remote(s) for a, s in zip(actors, shares, strict=True)])
    start_s = time.perf_counter() - t0
    proc = psutil.Process(tracker_pid())
    cpu0 = sum(proc.cpu_times()[:2])
    t0 = time.perf_counter()
    results = ray.get(
        [a.run.remote(s, lanes, duration) for a, s in zip(actors, shares, strict=True)]
    )
    wall = time.perf_counter() - t0
    cpu = sum(proc.cpu_times()[:2]) - cpu0
    rss = proc.memory_info().rss / 2**20
    events = sum(n for n, _ in results)
    latencies = [x for _, lat in results for x in lat]
    serve.delete(APP)
    for a in actors:
        ray.kill(a)
    return [
        tasks,
        round(start_s, 1),
        round(events / wall),
        c.percentile(latencies, 50),
        c.percentile(latencies, 99),
        round(cpu / wall, 2),
        round(rss),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="1000,10000", help="comma-separated tasks in flight")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--emitters", type=int, default=4, help="emitting Ray actors")
    parser.add_argument("--lanes", type=int, default=16, help="concurrent calls per emitter")
    parser.add_argument("--database", default=None, help="SQLAlchemy URL (default: SQLite)")
    args = parser.parse_args()

    import ray
    from ray import serve

    data = c.temp_dir("bench-tracker-")
    url = args.database or f"sqlite:///{data / 'tasks.db'}"
    env = {**c.ENV, "WHISPERX_SERVE_DATA_DIR": str(data), "WHISPERX_SERVE_DATABASE_URL": url}
    os.environ.update(env)
    ray.init(
        address="local", include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False
    )
    serve.start()
    rows = []
    try:
        for size in (int(s) for s in args.tasks.split(",")):
            rows.append(one_size(url, size, args.emitters, args.lanes, args.duration))
    finally:
        serve.shutdown()
        ray.shutdown()
    c.table(
        [
            "tasks in flight",
            "start all, s",
            "events/s",
            "call p50 ms",
            "call p99 ms",
            "tracker cores",
            "tracker RSS MiB",
        ],
        rows,
        note=(
            f"{args.emitters} emitters x {args.lanes} lanes, {args.duration:.0f} s each, "
            f"database {url.split(':')[0]}; {c.machine_note()}"
        ),
    )


if __name__ == "__main__":
    main()
