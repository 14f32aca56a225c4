"""Cold start: from ``serve run serve_config.local.yaml`` to ``/health/ready`` answering 200.

Each run starts ``serve run`` on a copy of serve_config.local.yaml that differs only in
its port (a free one; 8000 is left alone), with a fresh data directory (SQLite created and
migrated) and a Ray cluster of its own (``RAY_ADDRESS=local``): Ray start, the Serve
controller and proxy, every replica's model load, and the first ready answer. It records
when the HTTP port first answers anything and when readiness first says 200, then stops
the process with SIGINT (as Ctrl-C) and times the shutdown too.

    .venv/bin/python bench/cold_start.py --runs 3
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import _common as c
import httpx
import yaml

from tests.processes import interrupt_group, start_group


def one_run(work: Path) -> tuple[float, float, float]:
    config = yaml.safe_load((c.REPO / "serve_config.local.yaml").read_text())
    port = c.free_port()
    config["http_options"]["port"] = port
    config_path = work / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        **c.ENV,
        "WHISPERX_SERVE_DATA_DIR": str(work / "data"),
        "WHISPERX_SERVE_MODELS_DIR": str(c.MODELS),
        "RAY_ADDRESS": "local",
        "PYTHONUNBUFFERED": "1",  # its shutdown log survives a SIGKILL
    }
    env.pop("WHISPERX_SERVE_DATABASE_URL", None)
    base = f"http://127.0.0.1:{port}"
    log = (work / "serve.log").open("wb")
    started = time.perf_counter()
    serve_bin = Path(sys.executable).with_name("serve")
    proc = start_group([str(serve_bin), "run", str(config_path)], cwd=c.REPO, env=env, log=log)
    first_answer: float | None = None
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve run exited {proc.returncode}; see {work / 'serve.log'}")
            try:
                code = httpx.get(f"{base}/health/ready", timeout=5).status_code
                first_answer = first_answer or time.perf_counter() - started
                if code == 200:
                    ready = time.perf_counter() - started
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - started > 900:
                raise TimeoutError("not ready after 900 s")
            time.sleep(0.2)
    finally:
        stopping = time.perf_counter()
        if not interrupt_group(proc, timeout=120):
            print(f"serve run ignored SIGINT for 120 s and was killed; see {work / 'serve.log'}")
        stopped = time.perf_counter() - stopping
        log.close()
    return first_answer or ready, ready, stopped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    results = [one_run(c.temp_dir("bench-cold-")) for _ in range(args.runs)]
    c.table(
        ["step", "median s", "min s", "max s"],
        [
            [name, c.median(col), min(col), max(col)]
            for name, col in zip(
                ["serve run → HTTP answers", "serve run → /health/ready 200", "SIGINT → exit"],
                zip(*results, strict=True),
                strict=True,
            )
        ],
        note=f"{args.runs} runs; {c.machine_note()}",
    )


if __name__ == "__main__":
    main()
