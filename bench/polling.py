"""``GET /tasks/{id}/progress`` throughput and latency at 1 and 50 concurrent clients.

One service, one finished task (jfk.flac). Each client is a coroutine that sends the next
request as soon as the last one answered, for ``--duration`` seconds per level, on one
aiohttp session (keep-alive). The load generator runs on the same machine as the service
and takes CPU from it; the figures are what the whole box serves.

    .venv/bin/python bench/polling.py --clients 1,50 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import time

import _common as c
import aiohttp

from tests.streams import submit


async def client_loop(
    session: aiohttp.ClientSession, url: str, until: float, latencies: list[float]
) -> int:
    errors = 0
    while time.perf_counter() < until:
        started = time.perf_counter()
        async with session.get(url) as r:
            await r.read()
            if r.status != 200:
                errors += 1
        latencies.append((time.perf_counter() - started) * 1000)
    return errors


async def level(url: str, clients: int, duration: float) -> tuple[float, float, float, int]:
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        warm: list[float] = []
        await asyncio.gather(
            *(client_loop(session, url, time.perf_counter() + 2, warm) for _ in range(clients))
        )
        latencies: list[float] = []
        started = time.perf_counter()
        errors = await asyncio.gather(
            *(client_loop(session, url, started + duration, latencies) for _ in range(clients))
        )
        wall = time.perf_counter() - started
    return (
        len(latencies) / wall,
        c.percentile(latencies, 50),
        c.percentile(latencies, 99),
        sum(errors),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,50")
    parser.add_argument("--duration", type=float, default=20.0)
    args = parser.parse_args()

    service = c.start_service()
    rows = []
    try:
        task_id = submit(service.base, c.JFK, align="false")
        c.wait_status(service.base, task_id, "completed", timeout=600)
        url = f"{service.base}/tasks/{task_id}/progress"
        for n in (int(x) for x in args.clients.split(",")):
            rps, p50, p99, errors = asyncio.run(level(url, n, args.duration))
            rows.append([n, rps, p50, p99, errors])
    finally:
        c.stop_service()
    c.table(
        ["clients", "req/s", "p50 ms", "p99 ms", "non-200"],
        rows,
        note=f"{args.duration:.0f} s per level, a completed task; {c.machine_note()}",
    )


if __name__ == "__main__":
    main()
