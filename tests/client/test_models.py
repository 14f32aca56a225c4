"""The client's own models and errors, without a server."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from whisperx_serve_client import (
    APIError,
    ClientError,
    ErrorEvent,
    ProgressEvent,
    TaskFailed,
    TaskNotFound,
    TaskSnapshot,
    Transcript,
)
from whisperx_serve_client.models import parse_frame
from whisperx_serve_client.options import OPTION_NAMES, query_params

from tests.client.harness import CANNED


def test_models_ignore_fields_they_do_not_know() -> None:
    data = CANNED.model_dump(mode="json")
    data["new_top_level_field"] = {"x": 1}
    data["segments"][0]["emotion"] = "calm"
    data["segments"][0]["words"][0]["phonemes"] = ["a"]
    transcript = Transcript.model_validate(data)
    assert transcript.text == CANNED.text
    assert "new_top_level_field" not in transcript.model_dump()


def test_frames_parse_by_type_and_unknown_types_are_skipped() -> None:
    snap = parse_frame(
        json.dumps(
            {
                "type": "snapshot",
                "task_id": "t",
                "seq": 2,
                "status": "processing",
                "stage": "transcribing",
                "percentage": 12.5,
                "new": True,
            }
        )
    )
    assert isinstance(snap, TaskSnapshot) and snap.seq == 2
    progress = parse_frame(
        json.dumps(
            {
                "type": "progress",
                "task_id": "t",
                "seq": 3,
                "status": "processing",
                "stage": "some_future_stage",
                "percentage": 20,
                "eta_seconds": 4.0,
            }
        )
    )
    assert isinstance(progress, ProgressEvent) and not progress.terminal
    error = parse_frame(
        json.dumps(
            {
                "type": "error",
                "task_id": "t",
                "seq": 4,
                "status": "failed",
                "error_code": "invalid_audio",
                "user_message": "Bad.",
                "technical_detail": "x",
            }
        )
    )
    assert isinstance(error, ErrorEvent) and error.terminal
    assert parse_frame(json.dumps({"type": "heartbeat"})) is None


def test_options_become_query_parameters() -> None:
    params = query_params(
        {"temperatures": [0.0, 0.2], "diarize": False, "language": None, "beam_size": 5}
    )
    assert params == [
        ("temperatures", "0.0"),
        ("temperatures", "0.2"),
        ("diarize", "false"),
        ("beam_size", "5"),
    ]
    with pytest.raises(TypeError, match="unknown"):
        query_params({"speakers": 2})


def test_option_names_match_the_servers_query_parameters() -> None:
    import inspect

    from ingress.params import align_options, asr_options, speech_params

    server = set(inspect.signature(asr_options).parameters)
    server |= set(inspect.signature(align_options).parameters)
    server |= {"num_speakers", "min_speakers", "max_speakers"}
    server |= set(inspect.signature(speech_params).parameters) - {"asr", "alignment", "speakers"}
    assert server == OPTION_NAMES


def test_transcript_without_a_task_saves_json_only(tmp_path: Path) -> None:
    transcript = Transcript.model_validate(CANNED.model_dump(mode="json"))
    path = transcript.save(tmp_path / "t.json")
    assert Transcript.model_validate_json(path.read_text(encoding="utf-8")) == transcript
    with pytest.raises(ValueError, match="rendered by the server"):
        transcript.save(tmp_path / "t.srt")
    assert transcript.to_dataframe("word").shape == (sum(len(s.words) for s in CANNED.segments), 6)
    with pytest.raises(ValueError, match="level"):
        transcript.rows("paragraph")  # type: ignore[arg-type]
    assert "segments=2" in repr(transcript)


def test_errors_pickle_and_read_well() -> None:
    for error in (
        APIError(503, "Busy.", "queue full", error_code="unavailable"),
        TaskFailed(
            "t1", "Transcription failed.", "RuntimeError: x", error_code="processing_failed"
        ),
        TaskNotFound("t2"),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and copy.__dict__ == error.__dict__
        assert isinstance(copy, ClientError) and str(copy) == str(error)
    assert str(APIError(503, "Busy.", "queue full", error_code="unavailable")) == (
        "HTTP 503 [unavailable] Busy. (queue full)"
    )
