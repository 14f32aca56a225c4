"""A batch of tasks scales the ASR deployment up, and idleness scales it back down.

Starts the app on a fresh local Ray (CPU, offline models) with ASR autoscaling between
``--min`` and ``--max`` replicas (``target_ongoing_requests: 1``, short delays), and the
runner allowed ``--inflight`` tasks at once, so that enough ASR requests are in flight to
push the ongoing count over the target. Submits ``--tasks`` ASR-only tasks
(``align=false&diarize=false``) on a ``--seconds`` speech clip, samples ``serve.status()``
twice a second, and prints a timeline of replica counts, the most replicas reached, and how
long after the batch finished the deployment was back at its minimum.

    .venv/bin/python bench/autoscaling.py --tasks 16 --seconds 60

It also probes ``/health/ready`` at each sample: the column shows whether readiness stays
200 while Serve marks the deployment UPSCALING or DOWNSCALING.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

import _common as c
import httpx


@dataclass
class Sample:
    t: float
    running: int
    starting: int
    stopping: int
    status: str
    queued: int
    processing: int
    ready: int


def asr_replicas() -> tuple[int, int, int, str]:
    from ray import serve

    dep = serve.status().applications[c.APP].deployments["AsrDeployment"]
    states = {str(getattr(k, "value", k)): v for k, v in dep.replica_states.items()}
    return (
        states.get("RUNNING", 0),
        states.get("STARTING", 0),
        states.get("STOPPING", 0),
        str(getattr(dep.status, "value", dep.status)),
    )


def count(client: httpx.Client, base: str, status: str) -> int:
    r = client.get(f"{base}/task/all", params={"status": status, "limit": 1}, timeout=30)
    return int(r.json()["total"]) if r.status_code == 200 else -1


def sample(client: httpx.Client, base: str, t0: float) -> Sample:
    running, starting, stopping, status = asr_replicas()
    try:
        ready = client.get(f"{base}/health/ready", timeout=10).status_code
    except httpx.HTTPError:
        ready = 0
    return Sample(
        round(time.monotonic() - t0, 1),
        running,
        starting,
        stopping,
        status,
        count(client, base, "queued"),
        count(client, base, "processing"),
        ready,
    )


async def submit_all(service: c.Service, clip: Path, n: int) -> list[str]:
    async with httpx.AsyncClient() as client:
        return list(
            await asyncio.gather(
                *(
                    c.asubmit(client, service.base, clip, align="false", diarize="false")
                    for _ in range(n)
                )
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0, help="clip length")
    parser.add_argument("--min", type=int, default=1, dest="min_replicas")
    parser.add_argument("--max", type=int, default=3, dest="max_replicas")
    parser.add_argument("--inflight", type=int, default=6, help="runner max_concurrent_tasks")
    parser.add_argument("--upscale-delay", type=float, default=2.0)
    parser.add_argument("--downscale-delay", type=float, default=15.0)
    parser.add_argument(
        "--metrics-push-s",
        type=float,
        default=2.0,
        help="RAY_SERVE_{HANDLE,REPLICA}_AUTOSCALING_METRIC_PUSH_INTERVAL_S (Ray default 10)",
    )
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()

    push = str(args.metrics_push_s)
    os.environ["RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] = push
    os.environ["RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] = push
    c.ENV["RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] = push
    c.ENV["RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S"] = push

    clip = c.speech_clip(args.seconds, c.temp_dir("bench-audio-") / "clip.wav")
    autoscaling = {
        "min_replicas": args.min_replicas,
        "max_replicas": args.max_replicas,
        "target_ongoing_requests": 1,
        "upscale_delay_s": args.upscale_delay,
        "downscale_delay_s": args.downscale_delay,
        "look_back_period_s": 15,
    }
    service = c.start_service(
        {"runner": {"max_concurrent_tasks": args.inflight}},
        deployments={"AsrDeployment": {"autoscaling_config": autoscaling}},
    )
    samples: list[Sample] = []
    try:
        with httpx.Client() as client:
            t0 = time.monotonic()
            samples.append(sample(client, service.base, t0))
            ids = asyncio.run(submit_all(service, clip, args.tasks))
            submitted = time.monotonic() - t0
            done_at: float | None = None
            back_at: float | None = None
            while time.monotonic() - t0 < args.timeout:
                s = sample(client, service.base, t0)
                samples.append(s)
                if done_at is None and s.queued == 0 and s.processing == 0:
                    done_at = s.t
                if (
                    done_at is not None
                    and s.running + s.starting + s.stopping <= args.min_replicas
                    and s.status == "HEALTHY"
                ):
                    back_at = s.t
                    break
                time.sleep(0.5)
            completed = count(client, service.base, "completed")
    finally:
        c.stop_service()

    print(
        f"\nASR autoscaling: {args.tasks} tasks x {args.seconds:.0f} s clip, ASR only, "
        f"runner max_concurrent_tasks={args.inflight}, "
        f"replicas {args.min_replicas}..{args.max_replicas}, "
        f"target_ongoing_requests=1, upscale_delay_s={args.upscale_delay}, "
        f"downscale_delay_s={args.downscale_delay}, metric push {push} s"
    )
    print(
        f"{'t (s)':>7} {'running':>8} {'starting':>9} {'stopping':>9} {'status':<12} "
        f"{'queued':>7} {'processing':>11} {'ready':>6}"
    )
    last: tuple[object, ...] | None = None
    for s in samples:
        key = (s.running, s.starting, s.stopping, s.status, s.ready)
        if key != last or s is samples[-1]:
            print(
                f"{s.t:>7.1f} {s.running:>8} {s.starting:>9} {s.stopping:>9} {s.status:<12} "
                f"{s.queued:>7} {s.processing:>11} {s.ready:>6}"
            )
            last = key
    peak = max(s.running for s in samples)
    first_up = next((s.t for s in samples if s.running > args.min_replicas), None)
    not_ready = sum(1 for s in samples if s.ready != 200)
    print(f"\ntasks submitted in {submitted:.1f} s; completed {completed}/{len(ids)}")
    print(f"max ASR replicas running: {peak} (min {args.min_replicas}, max {args.max_replicas})")
    print(f"first scale-up seen at t={first_up} s")
    print(
        f"batch done at t={done_at} s; back to {args.min_replicas} replica(s) at t={back_at} s"
        + (
            f" ({back_at - done_at:.1f} s after the batch)"
            if back_at is not None and done_at is not None
            else ""
        )
    )
    print(f"/health/ready not 200 in {not_ready} of {len(samples)} samples")
    print(c.machine_note())


if __name__ == "__main__":
    main()
