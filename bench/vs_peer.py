"""Ours against whisperX-FastAPI, side by side: the same ASR-only work on the same clip and model.

The peer (github pavelzbornik/whisperX-FastAPI, run from its own source and venv as
../shared/peers/whisperx-fastapi.md sets it up, never copied) and this service are started
in turn, one at a time, so each has the machine to itself: ours, the peer, ours, the peer
for ``--rounds`` rounds. Each start runs the same phases:

- **warm-up:** one task, not timed (ours: its first request; the peer loads its model in
  every task anyway);
- **sequential:** ``--tasks`` tasks, each submitted when the previous one completed; wall
  from the first submit to the last completion;
- **burst:** ``--tasks`` tasks submitted at once; wall until all completed, and until the
  first completed;
- **polling:** ``GET /task/{id}`` of a completed task from 1 and from 50 clients (coroutines
  on one aiohttp session, each sends its next request when the last one answered), for
  ``--duration`` s each; requests/s, p50, p99, and the server's CPU per request;
- **idle:** the server's CPU over ``--idle`` s with nothing to do, after the burst's
  downscale delay has had ``--settle`` s to pass.

Memory is the proportional set size (PSS) of the server's whole process tree (for ours: the
``serve run`` process, its Ray, every worker and replica), sampled every 0.5 s: the peak
over the sequential and burst phases, and at idle. Tasks are ASR only: the peer's
``POST /service/transcribe?model=tiny.en&device=cpu&compute_type=int8&language=en`` and
our ``POST /service/transcribe?language=en``; both poll ``GET /task/{id}`` every 0.1 s for
completion. Both sides run as shipped: the peer with its defaults (batch 8, beam 5, the
model loaded in each task, every task at once), ours with serve_config.local.yaml.

    .venv/bin/python bench/vs_peer.py --peer /work/peer --rounds 2

``--peer`` is a folder holding ``wxfa/`` (the peer's source), ``venv/`` (its venv) and
``hf/`` (its Hugging Face cache linked to the bundle's tiny.en). ``--ours-env K=V`` starts
ours with extra environment (for example ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``) and
``--ours-config`` with another config file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import _common as c
import aiohttp
import httpx
import psutil
import yaml
from polling import client_loop as _poller  # the same load generator as bench/polling.py

from tests.processes import interrupt_group, start_group

TERMINAL = {"completed", "failed", "cancelled"}


# ---------------------------------------------------------------------------- the two servers


@dataclass
class Server:
    name: str
    base: str
    proc: subprocess.Popen[bytes]
    submit_path: str
    submit_params: dict[str, str]
    work: Path
    stop: Callable[[], None]


def start_ours(work: Path, config: Path, extra_env: dict[str, str]) -> Server:
    doc = yaml.safe_load(config.read_text())
    port = c.free_port()
    doc["http_options"]["port"] = port
    config_path = work / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(doc))
    env = {
        **os.environ,
        **c.ENV,
        **extra_env,
        "WHISPERX_SERVE_DATA_DIR": str(work / "data"),
        "WHISPERX_SERVE_MODELS_DIR": str(c.MODELS),
        "RAY_ADDRESS": "local",
    }
    env.pop("WHISPERX_SERVE_DATABASE_URL", None)
    log = (work / "serve.log").open("wb")
    serve_bin = Path(sys.executable).with_name("serve")
    proc = start_group([str(serve_bin), "run", str(config_path)], cwd=c.REPO, env=env, log=log)

    def stop() -> None:
        interrupt_group(proc, timeout=120)
        log.close()

    return Server(
        "ours", f"http://127.0.0.1:{port}", proc, "/service/transcribe",
        {"language": "en"}, work, stop,
    )  # fmt: skip


def start_peer(work: Path, peer: Path) -> Server:
    port = c.free_port()
    tmp = work / "tmp"  # it leaves every upload in the temp directory: keep them in ours
    tmp.mkdir()
    env = {
        **os.environ,
        **c.ENV,
        "HF_HOME": str(peer / "hf"),
        "DB_URL": f"sqlite:///{work / 'records.db'}",
        "WHISPER_MODEL": "tiny.en",
        "DEVICE": "cpu",
        "COMPUTE_TYPE": "int8",
        "DEFAULT_LANG": "en",
        "ENVIRONMENT": "production",
        "TMPDIR": str(tmp),
    }
    log = (work / "peer.log").open("wb")
    cmd = [str(peer / "venv" / "bin" / "uvicorn"), "app.main:app", "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1"]  # fmt: skip
    proc = start_group(cmd, cwd=peer / "wxfa", env=env, log=log)

    def stop() -> None:
        interrupt_group(proc, timeout=60)
        log.close()

    params = {"model": "tiny.en", "device": "cpu", "compute_type": "int8", "language": "en"}
    return Server(
        "peer", f"http://127.0.0.1:{port}", proc, "/service/transcribe", params, work, stop
    )


def wait_ready(server: Server, timeout: float = 600) -> float:
    started = time.perf_counter()
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited {server.proc.returncode}; see {server.work}")
        try:
            if httpx.get(f"{server.base}/health/ready", timeout=5).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"{server.name} not ready after {timeout} s")
        time.sleep(0.2)


# ---------------------------------------------------------------------------- the process tree


class Tree:
    """PSS and CPU time of a server's whole process tree, sampled every 0.5 s."""

    def __init__(self, root: int) -> None:
        self.root = psutil.Process(root)
        self.peak_mib = 0.0
        self.sampling = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def processes(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def pss_mib(self) -> float:
        total = 0
        for proc in self.processes():
            with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += proc.memory_full_info().pss
        return total / 2**20

    def cpu_s(self) -> float:
        total = 0.0
        for proc in self.processes():
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            if self.sampling:
                self.peak_mib = max(self.peak_mib, self.pss_mib())

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------- the phases


async def submit(client: httpx.AsyncClient, server: Server, clip: Path) -> str:
    r = await client.post(
        f"{server.base}{server.submit_path}",
        params=server.submit_params,
        files={"file": (clip.name, clip.read_bytes(), "audio/wav")},
        timeout=120,
    )
    r.raise_for_status()
    return str(r.json()["identifier"])


async def completed(client: httpx.AsyncClient, server: Server, task_id: str) -> float:
    """Poll until terminal; the time it was seen completed (perf_counter)."""
    deadline = time.perf_counter() + 900
    while time.perf_counter() < deadline:
        r = await client.get(f"{server.base}/task/{task_id}", timeout=60)
        status = r.json().get("status")
        if status in TERMINAL:
            if status != "completed":
                raise RuntimeError(f"{server.name} task {task_id} ended {status}: {r.text[:500]}")
            return time.perf_counter()
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{server.name} task {task_id} not done after 900 s")


async def one_task(client: httpx.AsyncClient, server: Server, clip: Path) -> float:
    return await completed(client, server, await submit(client, server, clip))


async def sequential(server: Server, clip: Path, n: int) -> float:
    async with httpx.AsyncClient() as client:
        started = time.perf_counter()
        for _ in range(n):
            await one_task(client, server, clip)
        return time.perf_counter() - started


async def burst(server: Server, clip: Path, n: int) -> tuple[float, float]:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=n * 2)) as client:
        started = time.perf_counter()
        ids = await asyncio.gather(*(submit(client, server, clip) for _ in range(n)))
        done = await asyncio.gather(*(completed(client, server, i) for i in ids))
        return max(done) - started, min(done) - started


async def polling(url: str, clients: int, duration: float, tree: Tree) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        warm: list[float] = []
        await asyncio.gather(
            *(_poller(session, url, time.perf_counter() + 2, warm) for _ in range(clients))
        )
        latencies: list[float] = []
        cpu0 = tree.cpu_s()
        started = time.perf_counter()
        errors = await asyncio.gather(
            *(_poller(session, url, started + duration, latencies) for _ in range(clients))
        )
        wall = time.perf_counter() - started
        cpu = tree.cpu_s() - cpu0
    return {
        "rps": len(latencies) / wall,
        "p50": c.percentile(latencies, 50),
        "p99": c.percentile(latencies, 99),
        "errors": float(sum(errors)),
        "cpu_ms": cpu / len(latencies) * 1000,
    }


def quiet_cpu(limit: float = 1.0, timeout: float = 120) -> float:
    """Wait (up to ``timeout``) for the 1-minute load average to fall under ``limit``."""
    deadline = time.monotonic() + timeout
    while os.getloadavg()[0] > limit and time.monotonic() < deadline:
        time.sleep(2)
    return os.getloadavg()[0]


@dataclass
class Figures:
    ready_s: float = 0.0
    seq_s: float = 0.0
    burst_s: float = 0.0
    first_s: float = 0.0
    poll: dict[int, dict[str, float]] = field(default_factory=dict)
    peak_pss_mib: float = 0.0
    idle_pss_mib: float = 0.0
    idle_cores: float = 0.0
    loads: list[float] = field(default_factory=list)


def measure(server: Server, clip: Path, args: argparse.Namespace) -> Figures:
    out = Figures()
    tree = Tree(server.proc.pid)
    try:
        out.ready_s = wait_ready(server)
        out.loads.append(quiet_cpu())
        asyncio.run(_warm_up(server, clip))
        tree.sampling = True
        out.loads.append(quiet_cpu())
        out.seq_s = asyncio.run(sequential(server, clip, args.tasks))
        out.loads.append(quiet_cpu())
        out.burst_s, out.first_s = asyncio.run(burst(server, clip, args.tasks))
        tree.sampling = False
        out.peak_pss_mib = tree.peak_mib
        task_id = asyncio.run(_one_id(server, clip))
        for clients in (1, 50):
            out.loads.append(quiet_cpu())
            url = f"{server.base}/task/{task_id}"
            out.poll[clients] = asyncio.run(polling(url, clients, args.duration, tree))
        time.sleep(args.settle)  # the burst's extra replicas (if any) go back down
        cpu0, t0 = tree.cpu_s(), time.perf_counter()
        time.sleep(args.idle)
        out.idle_cores = (tree.cpu_s() - cpu0) / (time.perf_counter() - t0)
        out.idle_pss_mib = tree.pss_mib()
    finally:
        tree.close()
    return out


async def _warm_up(server: Server, clip: Path) -> None:
    async with httpx.AsyncClient() as client:
        await one_task(client, server, clip)


async def _one_id(server: Server, clip: Path) -> str:
    async with httpx.AsyncClient() as client:
        task_id = await submit(client, server, clip)
        await completed(client, server, task_id)
        return task_id


@contextmanager
def started(kind: str, args: argparse.Namespace) -> Iterator[Server]:
    work = c.temp_dir(f"bench-vs-peer-{kind}-")
    server = (
        start_ours(work, args.ours_config, dict(kv.split("=", 1) for kv in args.ours_env))
        if kind == "ours"
        else start_peer(work, args.peer)
    )
    try:
        yield server
    finally:
        server.stop()
        if kind == "peer":
            shutil.rmtree(work / "tmp", ignore_errors=True)


# ---------------------------------------------------------------------------- report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=33.0, help="clip length")
    parser.add_argument("--duration", type=float, default=10.0, help="s per polling level")
    parser.add_argument("--settle", type=float, default=75.0)
    parser.add_argument("--idle", type=float, default=20.0)
    parser.add_argument("--ours-env", action="append", default=[], metavar="K=V")
    parser.add_argument("--ours-config", type=Path, default=c.REPO / "serve_config.local.yaml")
    parser.add_argument("--only", choices=["ours", "peer"], default=None)
    args = parser.parse_args()

    clip = c.speech_clip(args.seconds, c.temp_dir("bench-vs-peer-clip-") / "clip.wav")
    kinds = [args.only] if args.only else ["ours", "peer"]
    results: dict[str, list[Figures]] = {k: [] for k in kinds}
    for round_no in range(args.rounds):
        for kind in kinds if round_no % 2 == 0 else kinds[::-1]:
            with started(kind, args) as server:
                figures = measure(server, clip, args)
            results[kind].append(figures)
            print(f"round {round_no + 1} {kind}: {figures}", flush=True)
    report(results, args)


def _med(figs: list[Figures], get: Callable[[Figures], float]) -> float:
    return c.median(get(f) for f in figs)


ROWS: list[tuple[str, Callable[[Figures], float], bool]] = [
    # (figure, how to read it, higher is better)
    ("serve start → ready, s", lambda f: f.ready_s, False),
    ("tasks one after another, wall s", lambda f: f.seq_s, False),
    ("tasks at once, wall s", lambda f: f.burst_s, False),
    ("tasks at once, first result s", lambda f: f.first_s, False),
    ("polling, 1 client, req/s", lambda f: f.poll[1]["rps"], True),
    ("polling, 1 client, p99 ms", lambda f: f.poll[1]["p99"], False),
    ("polling, 50 clients, req/s", lambda f: f.poll[50]["rps"], True),
    ("polling, 50 clients, p99 ms", lambda f: f.poll[50]["p99"], False),
    ("server CPU per status request, ms (50 clients)", lambda f: f.poll[50]["cpu_ms"], False),
    ("peak memory (tree PSS) during tasks, MiB", lambda f: f.peak_pss_mib, False),
    ("idle memory (tree PSS), MiB", lambda f: f.idle_pss_mib, False),
    ("idle CPU, cores", lambda f: f.idle_cores, False),
]


def report(results: dict[str, list[Figures]], args: argparse.Namespace) -> None:
    ours, peer = results.get("ours", []), results.get("peer", [])
    rows = []
    for name, get, higher_better in ROWS:
        o = _med(ours, get) if ours else float("nan")
        p = _med(peer, get) if peer else float("nan")
        if ours and peer and p and o:
            ratio = o / p if higher_better else p / o
            ratio_text = f"{ratio:.2f}× {'better' if ratio >= 1 else 'worse'}"
        else:
            ratio_text = "-"
        rows.append([name.replace("tasks", f"{args.tasks} tasks"), o, p, ratio_text])
    loads = [x for figs in results.values() for f in figs for x in f.loads]
    errors = [f.poll[n]["errors"] for figs in results.values() for f in figs for n in f.poll]
    c.table(
        ["figure", "ours", "whisperX-FastAPI", "ours vs peer"],
        rows,
        note=(
            f"medians of {args.rounds} starts each, {args.seconds:.0f} s clip, ASR only; "
            f"load average before phases {min(loads):.2f}-{max(loads):.2f}; "
            f"non-200 polls {sum(errors):.0f}; ours env {args.ours_env or 'as shipped'}; "
            f"{c.machine_note()}"
        ),
    )


if __name__ == "__main__":
    main()
