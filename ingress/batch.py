"""Ray-native batch transcription, for code already running on the cluster.

``transcribe_files`` sends each file to the app's Ingress deployment through a
DeploymentHandle (no HTTP), so every file becomes an ordinary task: the same durable
queue, task record, WebSocket/polling progress and result routes as ``POST
/speech-to-text``. The TaskRunner bounds how many run at once; the rest wait queued, and
autoscaled model deployments grow with the load. One failed file never loses the others.

    import ray
    from ingress.batch import transcribe_files

    ray.init(address="auto")
    results = transcribe_files(paths, app_name="whisperx", params=TaskParams(diarize=False))
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import as_service_error
from common.schemas import TaskError, TaskParams, TaskPublic

logger = logging.getLogger(__name__)


@dataclass
class FileResult:
    path: Path
    task_id: str | None
    task: TaskPublic | None = None
    error: TaskError | None = None
    """Why the file has no transcript: refused at submission, or the task failed."""

    @property
    def ok(self) -> bool:
        return self.task is not None and self.task.result is not None


async def transcribe_files_async(
    paths: Sequence[str | Path],
    *,
    app_name: str = "whisperx",
    params: TaskParams | None = None,
    max_pending: int = 64,
    timeout_s: float = 24 * 3600,
    on_done: Callable[[FileResult], None] | None = None,
) -> list[FileResult]:
    """Transcribe ``paths`` through the deployed app; results in input order.

    ``max_pending`` bounds files read into memory and waiting on the handle at once; the
    service's own queue decides how many actually run.
    """
    from ray import serve

    handle: Any = serve.get_app_handle(app_name)
    gate = asyncio.Semaphore(max_pending)

    async def one(path: Path) -> FileResult:
        async with gate:
            result = FileResult(path=path, task_id=None)
            try:
                audio = await asyncio.to_thread(path.read_bytes)
                accepted = await handle.submit.remote(audio, path.name, params)
                result.task_id = accepted.identifier
                task: TaskPublic | None = await handle.wait.remote(accepted.identifier, timeout_s)
                result.task = task
                if task is None:
                    result.error = TaskError(
                        error_code="timeout", user_message=f"Still running after {timeout_s} s."
                    )
                elif task.error is not None:
                    result.error = task.error
            except Exception as exc:  # one bad file never sinks the batch
                result.error = TaskError.from_exception(as_service_error(exc))
            if on_done is not None:
                on_done(result)
            return result

    return list(await asyncio.gather(*(one(Path(p)) for p in paths)))


def transcribe_files(paths: Sequence[str | Path], **kwargs: Any) -> list[FileResult]:
    """Blocking form of ``transcribe_files_async`` (for scripts and notebook cells)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(transcribe_files_async(paths, **kwargs))
    # inside a running loop (Jupyter): run on a worker thread with its own loop
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, transcribe_files_async(paths, **kwargs)).result()
