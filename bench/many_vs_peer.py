"""Many files, ours against whisperX-FastAPI: ``--files`` different clips of ``--seconds``
each, ASR only, the same files and model on both, started in turn (never both at once).

- **ours:** the client package's ``Client.transcribe_many(paths, concurrency=N)``, as a
  notebook user runs it, against ``serve run serve_config.local.yaml``;
- **peer:** the same ``--concurrency`` files in flight, each submitted when another
  completed (``POST /service/transcribe`` then ``GET /task/{id}`` every 0.1 s); its own
  default would submit all at once, which only thrashes a 2-core CPU.

Reported per side: wall time, throughput (audio seconds per wall second), tasks lost or
failed, and the words of every result (the two must transcribe the same files). For ours,
the ASR replicas are counted every 0.5 s from the process tree (``ServeReplica:…:
AsrDeployment`` workers): the most at once, how many times the count changed during the
run (thrash would be many), and the count ``--settle`` s after the run.

    .venv/bin/python bench/many_vs_peer.py --peer /work/peer --files 100 --seconds 30
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import threading
import time
import wave
from pathlib import Path

import _common as c
import httpx
import psutil
from vs_peer import Server, completed, quiet_cpu, start_ours, start_peer, submit, wait_ready


def cut(source: Path, out_dir: Path, count: int, seconds: float) -> list[Path]:
    """``count`` consecutive ``seconds``-long WAV files of one long clip."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    with wave.open(str(source)) as src:
        frames = int(seconds * src.getframerate())
        for i in range(count):
            data = src.readframes(frames)
            path = out_dir / f"part{i:03d}.wav"
            with wave.open(str(path), "wb") as dst:
                dst.setparams(src.getparams())
                dst.writeframes(data)
            paths.append(path)
    return paths


class ReplicaCounter:
    """ASR replicas of ours over time, read from the process titles of Ray's workers."""

    def __init__(self, root: int) -> None:
        self._root = psutil.Process(root)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def count(self) -> int:
        n = 0
        try:
            procs = self._root.children(recursive=True)
        except psutil.NoSuchProcess:
            return 0
        for proc in procs:
            try:
                title = " ".join(proc.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            n += "ServeReplica" in title and "AsrDeployment" in title
        return n

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.samples.append((time.monotonic(), self.count()))

    def changes(self, since: float, until: float) -> int:
        counts = [n for t, n in self.samples if since <= t <= until]
        return sum(a != b for a, b in itertools.pairwise(counts))

    def most(self, since: float, until: float) -> int:
        return max((n for t, n in self.samples if since <= t <= until), default=0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def words_of(text: str) -> int:
    return len(text.split())


def run_ours(server: Server, paths: list[Path], concurrency: int) -> tuple[float, int, int]:
    from whisperx_serve_client import Client

    with Client(server.base) as client:
        started = time.perf_counter()
        batch = client.transcribe_many(
            paths, concurrency=concurrency, progress=False, language="en", align=False,
            diarize=False,
        )  # fmt: skip
        wall = time.perf_counter() - started
    ok = [item for item in batch if item.ok]
    words = sum(words_of(item.transcript.text) for item in ok)  # type: ignore[union-attr]
    return wall, len(paths) - len(ok), words


async def _run_peer(server: Server, paths: list[Path], concurrency: int) -> tuple[int, int]:
    gate = asyncio.Semaphore(concurrency)
    failed = 0
    words = 0

    async def one(client: httpx.AsyncClient, path: Path) -> None:
        nonlocal failed, words
        async with gate:
            try:
                task_id = await submit(client, server, path)
                await completed(client, server, task_id)
                body = (await client.get(f"{server.base}/task/{task_id}", timeout=60)).json()
                result = body.get("result") or {}
                text = " ".join(s.get("text", "") for s in result.get("segments", []))
                words += words_of(text)
            except (RuntimeError, TimeoutError, httpx.HTTPError):
                failed += 1

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency * 2)) as client:
        await asyncio.gather(*(one(client, p) for p in paths))
    return failed, words


def run_peer(server: Server, paths: list[Path], concurrency: int) -> tuple[float, int, int]:
    started = time.perf_counter()
    failed, words = asyncio.run(_run_peer(server, paths, concurrency))
    return time.perf_counter() - started, failed, words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", type=Path, required=True)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--settle", type=float, default=90.0, help="s after the run, ours")
    parser.add_argument("--only", choices=["ours", "peer"], default=None)
    parser.add_argument("--ours-config", type=Path, default=c.REPO / "serve_config.local.yaml")
    args = parser.parse_args()

    audio = c.temp_dir("bench-many-")
    long_clip = c.speech_clip(args.files * args.seconds + 5, audio / "long.wav")
    paths = cut(long_clip, audio / "parts", args.files, args.seconds)
    total_audio = args.files * args.seconds
    rows: list[list[object]] = []
    for kind in [args.only] if args.only else ["ours", "peer"]:
        work = c.temp_dir(f"bench-many-{kind}-")
        server = (
            start_ours(work, args.ours_config, {})
            if kind == "ours"
            else start_peer(work, args.peer)
        )
        counter = ReplicaCounter(server.proc.pid) if kind == "ours" else None
        try:
            wait_ready(server)
            load = quiet_cpu()
            t0 = time.monotonic()
            runner = run_ours if kind == "ours" else run_peer
            wall, lost, words = runner(server, paths, args.concurrency)
            t1 = time.monotonic()
            replicas = "-"
            if counter is not None:
                time.sleep(args.settle)
                after = counter.count()
                replicas = (
                    f"max {counter.most(t0, t1)}, {counter.changes(t0, t1)} changes, "
                    f"{after} after {args.settle:.0f} s"
                )
            rows.append(
                [kind, round(wall, 1), round(total_audio / wall, 1), lost, words, replicas,
                 round(load, 2)]
            )  # fmt: skip
            print(rows[-1], flush=True)
        finally:
            if counter is not None:
                counter.close()
            server.stop()
    c.table(
        ["server", "wall s", "audio s / wall s", "lost or failed", "words", "ASR replicas",
         "load before"],
        rows,
        note=(
            f"{args.files} files x {args.seconds:.0f} s, ASR only (tiny.en int8, CPU), "
            f"{args.concurrency} in flight; {c.machine_note()}"
        ),
    )  # fmt: skip


if __name__ == "__main__":
    main()
