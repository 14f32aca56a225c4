"""N repeated tasks through the service (models loaded once per replica) against a process
that loads the models again for every task, as single-process wrappers do.

Same clip, same work (ASR + diarization, no alignment), run sequentially on both sides:

- **service**: the running app; each task is submit → terminal WebSocket event → ``GET``.
- **reload in process**: for every task, ``whisperx.load_model`` and the diarization
  pipeline are built again in this (already warm) Python process, then run.
- **fresh process**: every task in a new Python process (imports + model loads + run),
  what ``whisperx file.wav`` per file amounts to. Skipped with ``--no-fresh-process``.

    .venv/bin/python bench/reload.py --tasks 8
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from pathlib import Path

import _common as c

_ONE_TASK = """
import sys
sys.path[:0] = [{bench!r}]
import _common as c
from pathlib import Path
c.PlainWhisperx().run(Path({clip!r}))
"""


def reload_in_process(path: Path, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        c.PlainWhisperx().run(path)
    return time.perf_counter() - started


def fresh_processes(path: Path, n: int) -> float:
    code = _ONE_TASK.format(bench=str(Path(__file__).parent), clip=str(path))
    started = time.perf_counter()
    for _ in range(n):
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=c.REPO)
    return time.perf_counter() - started


async def through_service(service: c.Service, path: Path, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await c.run_task(service, path, align="false")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0, help="clip length")
    parser.add_argument("--no-fresh-process", action="store_true")
    args = parser.parse_args()
    clip = c.speech_clip(args.seconds, c.temp_dir("bench-audio-") / "clip.wav")

    rows: list[list[object]] = []
    reload_s = reload_in_process(clip, args.tasks)
    fresh_s = None if args.no_fresh_process else fresh_processes(clip, args.tasks)

    service = c.start_service()
    try:
        asyncio.run(c.run_task(service, clip, align="false"))  # warm-up, as a running service is
        service_s = asyncio.run(through_service(service, clip, args.tasks))
    finally:
        c.stop_service()

    n = args.tasks
    rows.append(["service (models loaded once)", service_s, service_s / n, 1.0])
    rows.append(
        ["reload models per task (in process)", reload_s, reload_s / n, reload_s / service_s]
    )
    if fresh_s is not None:
        rows.append(["fresh process per task", fresh_s, fresh_s / n, fresh_s / service_s])
    c.table(
        [f"{n} tasks x {args.seconds:.0f} s clip", "total s", "per task s", "vs service"],
        rows,
        note=f"ASR + diarization, sequential; {c.machine_note()}",
    )


if __name__ == "__main__":
    main()
