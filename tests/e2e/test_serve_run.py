"""The service started as the README starts it (`serve run serve_config.local.yaml`),
driven over real HTTP and WebSocket: embedded defaults, SQLite, offline models."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO, normalise
from tests.ports import free_port
from tests.processes import interrupt_group, start_group
from tests.streams import assert_well_ordered, collect, submit
from tests.waiting import wait_until


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[str]:
    work = tmp_path_factory.mktemp("e2e")
    config = yaml.safe_load((REPO / "serve_config.local.yaml").read_text())
    port = free_port()
    config["http_options"]["port"] = port  # the only change: a free port instead of 8000
    config_path = work / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "WHISPERX_SERVE_DATA_DIR": str(work / "data"),
        "WHISPERX_SERVE_MODELS_DIR": str(models_dir),
        "RAY_ADDRESS": "local",  # a cluster of its own, as on a fresh machine
    }
    env.pop("WHISPERX_SERVE_DATABASE_URL", None)  # embedded default: SQLite under the data dir
    serve_bin = Path(sys.executable).with_name("serve")
    log = (work / "serve.log").open("wb")
    proc = start_group([str(serve_bin), "run", str(config_path)], cwd=REPO, env=env, log=log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: (
                (
                    proc.poll() is None
                    and httpx.get(f"{base}/health/ready", timeout=5).status_code == 200
                )
                or (proc.poll() is not None and pytest.fail(f"serve run exited {proc.returncode}"))
            ),
            timeout=420,
            interval=1,
            what="serve run to become ready",
        )
        yield base
    finally:
        interrupt_group(proc, timeout=60)
        log.close()
    assert (work / "data" / "whisperx-serve.db").is_file()  # the embedded SQLite default was used


async def test_jfk_over_http_and_websocket(served: str, jfk_path: Path) -> None:
    task_id = submit(served, jfk_path)
    stream = await collect(served.replace("http", "ws", 1), task_id, after_seq=0)
    assert_well_ordered(stream)
    assert stream.events[-1]["status"] == "completed"
    # The config starts diarization at zero replicas (this module's only task wakes it):
    # the task says so while it waits, then how long the replica took to start.
    notes = [e["message"] for e in stream.events if "replica" in (e.get("message") or "")]
    assert notes[0].startswith("Waiting for a diarization replica to start"), notes
    assert notes[-1].startswith("Diarization replica started in "), notes

    polled = httpx.get(f"{served}/tasks/{task_id}/progress", timeout=10).json()
    assert polled == {
        **polled,
        "status": "completed",
        "progress_percentage": 100.0,
        "progress_stage": "complete",
    }
    result = httpx.get(f"{served}/task/{task_id}", timeout=10).json()["result"]
    assert "ask not what your country can do for you" in normalise(
        " ".join(s["text"] for s in result["segments"])
    )
    # No wav2vec2 in the offline bundle: word times come from Whisper, and say so.
    assert result["word_timestamps"] == "whisper" and result["alignment_model"] is None
    words = [w for s in result["segments"] for w in s["words"]]
    assert words and all(0 <= w["start"] <= w["end"] <= 11.1 for w in words)
    assert result["speakers"] == ["SPEAKER_00"]


async def test_bad_requests_get_clear_4xx(served: str, jfk_path: Path) -> None:
    with jfk_path.open("rb") as f:
        r = httpx.post(
            f"{served}/speech-to-text",
            params={"min_speakers": 3, "max_speakers": 1},
            files={"file": ("jfk.flac", f)},
            timeout=30,
        )
    assert r.status_code == 422 and "max_speakers" in r.json()["user_message"]
    r = httpx.post(f"{served}/speech-to-text", files={"file": ("x.wav", b"")}, timeout=30)
    assert r.status_code == 422 and r.json()["error_code"] == "empty_upload"
    assert httpx.get(f"{served}/task/unknown", timeout=10).status_code == 404
    stream = await collect(served.replace("http", "ws", 1), "unknown")
    assert stream.close_code == 4404
    assert httpx.get(f"{served}/health/ready", timeout=10).status_code == 200


def test_openapi_documents_the_routes(served: str) -> None:
    spec = httpx.get(f"{served}/openapi.json", timeout=10).json()
    for path in (
        "/speech-to-text",
        "/task/{identifier}",
        "/tasks/{identifier}/progress",
        "/task/all",
        "/health",
        "/health/live",
        "/health/ready",
    ):
        assert path in spec["paths"], path
    assert "422" in spec["paths"]["/speech-to-text"]["post"]["responses"]
    assert httpx.get(f"{served}/docs", timeout=10).status_code == 200
