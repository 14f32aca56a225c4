"""``transcribe_many``: per-file outcomes, progress bars, data frames and saved files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from whisperx_serve_client import (
    APIError,
    BatchResult,
    Client,
    Source,
    SourceError,
    TaskFailed,
    Transcript,
)

from tests.client.conftest import BAD_AUDIO
from tests.client.harness import CANNED, CANNED_WORDS


@pytest.fixture
def batch(client: Client, jfk_path: Path, jfk_bytes: bytes, tmp_path: Path) -> BatchResult:
    failing = tmp_path / "will-fail.flac"
    failing.write_bytes(jfk_bytes)
    sources: list[Source] = [jfk_path, BAD_AUDIO, str(jfk_path), failing, tmp_path / "missing.flac"]
    return client.transcribe_many(sources, concurrency=2, progress=False, diarize=True)


def test_one_bad_file_never_loses_the_others(batch: BatchResult, jfk_path: Path) -> None:
    assert len(batch) == 5 and [item.index for item in batch] == [0, 1, 2, 3, 4]
    assert [item.ok for item in batch] == [True, False, True, False, False]
    assert [item.source for item in batch.succeeded] == [str(jfk_path)] * 2
    assert all(isinstance(item.transcript, Transcript) for item in batch.succeeded)
    assert batch.transcripts[0].text == CANNED.text
    rejected, failed, missing = (item.error for item in batch.failed)
    assert isinstance(rejected, APIError) and rejected.status_code == 422
    assert rejected.error_code == "invalid_audio" and batch.failed[0].task_id is None
    assert isinstance(failed, TaskFailed) and failed.error_code == "processing_failed"
    assert batch.failed[1].task_id == failed.task_id
    assert isinstance(missing, SourceError)
    with pytest.raises(APIError):
        batch.failed[0].transcript  # noqa: B018
    assert repr(batch) == "BatchResult(5 sources: 2 succeeded, 3 failed)"


def test_dataframes(batch: BatchResult, jfk_path: Path) -> None:
    segments = batch.to_dataframe()
    assert list(segments.columns) == ["file", "start", "end", "text", "speaker", "task_id"]
    assert len(segments) == 2 * len(CANNED.segments)
    assert set(segments["file"]) == {str(jfk_path)} and segments["task_id"].nunique() == 2
    assert list(segments["speaker"][:2]) == ["SPEAKER_00", "SPEAKER_01"]
    words = batch.to_dataframe(level="word")
    assert list(words.columns) == [
        "file",
        "start",
        "end",
        "word",
        "speaker",
        "score",
        "segment",
        "task_id",
    ]
    assert len(words) == 2 * CANNED_WORDS and words["speaker"].notna().all()
    errors = batch.errors_dataframe()
    assert list(errors["error_code"]) == ["invalid_audio", "processing_failed", "unreadable_source"]
    single = batch[0].transcript.to_dataframe()
    assert isinstance(single, pd.DataFrame)
    assert list(single.columns) == ["start", "end", "text", "speaker"]
    assert single["text"][0] == "And so, my fellow Americans,"


def test_save_all(batch: BatchResult, tmp_path: Path) -> None:
    written = batch.save_all(tmp_path / "json")
    assert [p.name for p in written] == ["jfk.json", "jfk-2.json"]
    assert json.loads(written[0].read_text(encoding="utf-8")) == CANNED.model_dump(mode="json")
    srt = batch.save_all(tmp_path / "srt", format="srt")
    text = srt[0].read_text(encoding="utf-8")
    assert "-->" in text and "ask not what your country can do for you" in text.lower()
    with pytest.raises(ValueError, match="format"):
        batch.save_all(tmp_path, format="docx")  # type: ignore[arg-type]


def test_progress_bars_render(
    client: Client, jfk_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = client.transcribe_many([jfk_path, jfk_path, BAD_AUDIO], concurrency=2)
    assert len(result.succeeded) == 2
    err = capsys.readouterr().err
    assert "Transcribing" in err and "3/3" in err and "failed=1" in err
    assert re.search(r"jfk\.flac \[(?!submitting)\w+\]: +\d+%", err), err  # bar per file, by stage
