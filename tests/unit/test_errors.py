from __future__ import annotations

import json
import pickle

import pytest

from common import errors
from common.errors import ServiceError, as_service_error, one_line
from common.schemas import ErrorEvent, TaskError, TaskStatus
from deployments.progress_state import TaskProgressState
from ingress.errors import response_for

ALL = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, ServiceError)]


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_error_pickles_with_type_and_fields(cls: type[ServiceError]) -> None:
    exc = cls("User message.", "Detail: x")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is cls
    assert (back.user_message, back.technical_detail, back.code, back.status_code) == (
        "User message.",
        "Detail: x",
        cls.code,
        cls.status_code,
    )


def test_codes_are_unique() -> None:
    codes = [c.code for c in ALL]
    assert len(codes) == len(set(codes))


def test_technical_detail_is_one_line_and_redacted() -> None:
    detail = one_line("Traceback:\n  line 1\n token=hf_abcdefghijklmnop postgresql://u:secret@h/db")
    assert "\n" not in detail
    assert "secret" not in detail and "hf_abcdefghijklmnop" not in detail


def test_unknown_exception_maps_to_500() -> None:
    err = as_service_error(ValueError("bad"))
    assert err.status_code == 500 and err.code == "processing_failed"
    assert err.technical_detail == "ValueError: bad"


def test_retry_after_survives_pickling() -> None:
    exc = errors.RateLimitedError("Slow down.", "rate: 5 >= 5", 42)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is errors.RateLimitedError and back.retry_after_seconds == 42
    assert (back.status_code, back.code) == (429, "rate_limited")
    assert errors.OverloadedError("Busy.").retry_after_seconds == 1


def test_one_error_shape_from_exception_to_every_wire() -> None:
    """An HTTP error body, the error event and a failed task's stored error are the same
    ``TaskError`` fields, spelled ``error_code``/``user_message``/``technical_detail``."""
    exc = errors.InvalidAudioError("The file is not audio.", "av: invalid data")
    error = TaskError.from_exception(exc)
    wire = {
        "error_code": "invalid_audio",
        "user_message": "The file is not audio.",
        "technical_detail": "av: invalid data",
    }
    assert error.model_dump() == wire
    assert json.loads(bytes(response_for(exc).body)) == wire
    state = TaskProgressState(task_id="t")
    event = state.finish(TaskStatus.failed, error)
    assert isinstance(event, ErrorEvent) and isinstance(event, TaskError)
    frame = json.loads(event.model_dump_json())
    assert {k: frame[k] for k in wire} == wire and frame["type"] == "error"
    assert state.snapshot().model_dump()["error"] == wire
