"""Throughput: N tasks submitted at once against the same N run one after another.

One service (serve_config.local.yaml's graph: runner ``max_concurrent_tasks: 2``, ASR
autoscaling 1..2), one clip, the same work per task (ASR + diarization, no alignment).
Sequential: submit, wait for the terminal WebSocket event, submit the next. Concurrent:
submit all N, wait for every terminal event. Both timed from the first submit to the
last terminal event, in the same run; repeated ``--runs`` times, alternating the order.

    .venv/bin/python bench/concurrency.py --tasks 8 --runs 2
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import _common as c


async def sequential(service: c.Service, path: Path, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await c.run_task(service, path, align="false")
    return time.perf_counter() - started


async def concurrent(service: c.Service, path: Path, n: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(c.run_task(service, path, align="false") for _ in range(n)))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0, help="clip length")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--no-autoscaling", action="store_true", help="one replica per deployment")
    args = parser.parse_args()
    clip = c.speech_clip(args.seconds, c.temp_dir("bench-audio-") / "clip.wav")

    service = c.start_service(config_autoscaling=not args.no_autoscaling)
    seq: list[float] = []
    conc: list[float] = []
    try:
        asyncio.run(c.run_task(service, clip, align="false"))  # warm-up
        for run in range(args.runs):
            order = [(sequential, seq), (concurrent, conc)]
            for fn, out in order if run % 2 == 0 else reversed(order):
                out.append(asyncio.run(fn(service, clip, args.tasks)))
    finally:
        c.stop_service()

    s, k = c.median(seq), c.median(conc)
    audio = args.tasks * args.seconds
    c.table(
        ["mode", "wall s", "audio s / wall s", "speed-up"],
        [
            [f"{args.tasks} sequential", s, audio / s, 1.0],
            [f"{args.tasks} concurrent", k, audio / k, s / k],
        ],
        note=(
            f"{args.seconds:.0f} s clip, ASR + diarization, medians of {args.runs} runs, "
            f"autoscaling {'off' if args.no_autoscaling else 'as serve_config.local.yaml'}; "
            f"{c.machine_note()}"
        ),
    )


if __name__ == "__main__":
    main()
