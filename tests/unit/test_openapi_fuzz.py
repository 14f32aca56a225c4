"""Schema-driven fuzzing of every HTTP route: no input the OpenAPI document allows (or
almost allows) may produce a 5xx, and every answer must be one the document declares.

Runs through ASGI against real SQLite storage and the in-memory tracker of tests/fakes.py,
so it needs no Ray. The same run against a live service is documented in the README
(`schemathesis run http://127.0.0.1:8000/openapi.json`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from common.config import IngressConfig
from ingress.app import create_app
from tests.fakes import make_ingress_services

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _schema() -> Any:
    """The app on a throwaway SQLite database; built at collection to list the operations."""
    data_dir = Path(tempfile.mkdtemp(prefix="whisperx-fuzz-"))
    services = make_ingress_services(
        data_dir,
        db_name="fuzz.db",
        config=IngressConfig(max_upload_bytes=1024 * 1024, sync_timeout_seconds=2),
        ready={"deployment:AsrDeployment": "ok"},
        ws_wait_seconds=0.2,
    )
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(services))


SCHEMA = _schema()
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


def test_every_route_is_in_the_schema() -> None:
    labels = {op.label for op in OPERATIONS}
    for expected in (
        "POST /speech-to-text",
        "POST /speech-to-text-url",
        "POST /service/transcribe",
        "POST /service/align",
        "POST /service/diarize",
        "POST /service/combine",
        "GET /task/all",
        "GET /task/{identifier}",
        "DELETE /task/{identifier}/delete",
        "POST /task/{identifier}/cancel",
        "GET /tasks/{identifier}/progress",
        "GET /health/ready",
    ):
        assert expected in labels


@pytest.mark.parametrize("operation", OPERATIONS, ids=lambda op: op.label)
def test_no_server_errors_and_documented_answers(operation: Any) -> None:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def fuzz(case: Any) -> None:
        case.call_and_validate(checks=CHECKS)

    fuzz()
