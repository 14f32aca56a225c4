"""Peak memory: each deployment's replica process in the service against the plain whisperx
process, on the same clip and the same work (ASR + diarization, no alignment).

- **plain whisperx**: a child process loads the models and runs the clip once; it reports
  its RSS after loading and its peak RSS (``ru_maxrss``).
- **service**: one replica per deployment (no autoscaling), one task on the same clip.
  Every process of the local Ray this script started is sampled every 0.25 s with
  psutil and grouped: each Serve deployment (the ProgressTracker included), Serve's controller
  and proxy, and Ray's own processes (GCS, raylet, agents, idle workers). Idle = models
  loaded, no task; peak = the highest sum seen while the task ran.

RSS counts shared library pages in every process that maps them (torch alone is a few
hundred MiB), so per-process figures do not add up to machine memory; the USS column
(memory unique to the group's processes, at idle) is what one more replica would cost.

    .venv/bin/python bench/memory.py --seconds 300
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import _common as c
import psutil

_PLAIN = """
import resource, sys, json
sys.path[:0] = [{bench!r}]
import _common as c
from pathlib import Path
import psutil
plain = c.PlainWhisperx()
loaded = psutil.Process().memory_info().rss / 2**20
c.PlainWhisperx.run(plain, Path({clip!r}))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"loaded": loaded, "peak": peak}}))
"""


def plain_memory(path: Path) -> tuple[float, float]:
    import json

    code = _PLAIN.format(bench=str(Path(__file__).parent), clip=str(path))
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=c.REPO
    )
    numbers = json.loads(out.stdout.strip().splitlines()[-1])
    return float(numbers["loaded"]), float(numbers["peak"])


def group_of(proc: psutil.Process) -> str:
    try:
        title = " ".join(proc.cmdline())
    except psutil.Error:
        return "Ray core (GCS, raylet, agents, idle workers)"
    marker = f"ServeReplica:{c.APP}:"
    if marker in title:
        # a busy replica titles itself e.g. "AsrDeployment.handle_request_with_rejection"
        return title.split(marker, 1)[1].split()[0].split(".")[0]
    for needle, name in (
        ("ServeController", "Serve controller"),
        ("ProxyActor", "Serve proxy"),
    ):
        if needle in title:
            return name
    return "Ray core (GCS, raylet, agents, idle workers)"


def snapshot(unique: bool = False) -> dict[str, float]:
    """MiB per group over every descendant of this process (the local Ray it started):
    RSS, or USS when ``unique``."""
    sums: dict[str, float] = defaultdict(float)
    for proc in psutil.Process().children(recursive=True):
        name = group_of(proc)
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info() if unique else proc.memory_info()
            sums[name] += (info.uss if unique else info.rss) / 2**20
    return dict(sums)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="clip length")
    args = parser.parse_args()
    clip = c.speech_clip(args.seconds, c.temp_dir("bench-audio-") / "clip.wav")

    plain_loaded, plain_peak = plain_memory(clip)

    service = c.start_service(config_autoscaling=False)
    try:
        time.sleep(2)
        idle = snapshot()
        idle_uss = snapshot(unique=True)
        peak: dict[str, float] = dict(idle)
        stop = threading.Event()

        def sampler() -> None:
            while not stop.is_set():
                for name, value in snapshot().items():
                    peak[name] = max(peak.get(name, 0.0), value)
                stop.wait(0.25)

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        wall = asyncio.run(c.run_task(service, clip, align="false"))
        stop.set()
        thread.join()
    finally:
        c.stop_service()

    order = [
        "AsrDeployment",
        "AlignmentDeployment",
        "DiarizationDeployment",
        "TaskRunner",
        "Ingress",
    ]
    groups = set(idle) | set(peak)
    names = [n for n in order if n in groups] + sorted(groups - set(order))
    rows: list[list[object]] = [
        [name, idle.get(name, 0.0), peak.get(name, 0.0), idle_uss.get(name, 0.0)] for name in names
    ]
    rows.append(
        ["service, all processes", sum(idle.values()), sum(peak.values()), sum(idle_uss.values())]
    )
    rows.append(["plain whisperx process", plain_loaded, plain_peak, "-"])
    c.table(
        ["process group", "idle RSS MiB", "peak RSS MiB", "idle USS MiB"],
        rows,
        note=(
            f"{args.seconds:.0f} s clip, ASR + diarization; service task took {wall:.1f} s; "
            f"'all processes' peak sums per-group peaks; pid {os.getpid()}; {c.machine_note()}"
        ),
    )


if __name__ == "__main__":
    main()
