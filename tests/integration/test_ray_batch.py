"""The Ray-native batch path: files through DeploymentHandles, as ordinary tasks."""

from __future__ import annotations

from pathlib import Path

import httpx

from common.schemas import TaskParams
from ingress.batch import FileResult, transcribe_files
from tests.conftest import normalise
from tests.integration.conftest import APP, Service
from tests.integration.test_service import PHRASE
from tests.streams import assert_well_ordered, collect


async def test_batch_through_handles_gives_ordinary_tasks(
    service: Service, jfk_path: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "notes.flac"
    bad.write_text("not audio at all " * 50)
    paths = [jfk_path, bad, jfk_path]
    seen: list[FileResult] = []
    results = transcribe_files(
        paths, app_name=APP, params=TaskParams(diarize=False), on_done=seen.append
    )
    assert [r.path for r in results] == paths and len(seen) == 3
    good = [results[0], results[2]]
    assert all(r.ok and r.task is not None for r in good)
    for r in good:
        assert r.task is not None and r.task.result is not None
        assert PHRASE in normalise(r.task.result.text)
    assert not results[1].ok and results[1].task_id is None
    assert results[1].error is not None and results[1].error.error_code == "invalid_audio"

    # the same records and progress as HTTP submissions
    task_id = good[0].task_id
    assert task_id is not None
    body = httpx.get(f"{service.base_url}/task/{task_id}", timeout=10).json()
    assert body["status"] == "completed" and body["file_name"] == "jfk.flac"
    assert body["params"]["diarize"] is False
    stream = await collect(service.ws_url, task_id, after_seq=0)
    assert_well_ordered(stream)
    assert stream.events[-1]["stage"] == "complete"
