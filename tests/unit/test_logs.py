"""Logs an operator can use (issue 11, part 4), without Ray: the log level setting, task
and request ids on every record, JSON lines that carry them, and ``X-Request-ID``
kept or made, echoed and stored with the task."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from common.logs import (
    PACKAGES,
    SERVE_EXTRA_FIELDS,
    SERVE_LOGGER,
    configure_service_logging,
    log_context,
    valid_request_id,
)
from common.settings import Settings
from ingress.app import create_app
from ingress.services import IngressServices
from storage import repository
from tests.fakes import make_ingress_services


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def serve_logger() -> Iterator[ListHandler]:
    """A stand-in for Serve's replica logger; the package loggers are restored after."""
    handler = ListHandler()
    serve = logging.getLogger(SERVE_LOGGER)
    saved = {
        name: (logging.getLogger(name).level, logging.getLogger(name).propagate)
        for name in PACKAGES
    }
    serve.addHandler(handler)
    try:
        yield handler
    finally:
        serve.removeHandler(handler)
        for name, (level, propagate) in saved.items():
            lg = logging.getLogger(name)
            lg.setLevel(level)
            lg.propagate = propagate
            for h in [h for h in lg.handlers if getattr(h, "_whisperx", False)]:
                lg.removeHandler(h)


def test_log_level_setting_is_honoured(serve_logger: ListHandler) -> None:
    log = logging.getLogger("deployments.runner")
    configure_service_logging("DEBUG", force=True)
    log.debug("debug line")
    configure_service_logging("warning", force=True)
    log.info("info line")
    log.warning("warning line")
    assert [r.getMessage() for r in serve_logger.records] == ["debug line", "warning line"]


def test_log_level_comes_from_the_environment(
    serve_logger: ListHandler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``WHISPERX_SERVE_LOG_LEVEL``, as the README documents, is what the deployments pass."""
    monkeypatch.setenv("WHISPERX_SERVE_LOG_LEVEL", "ERROR")
    configure_service_logging(Settings().log_level, force=True)
    log = logging.getLogger("deployments.asr")
    log.warning("warning line")
    log.error("error line")
    assert [r.getMessage() for r in serve_logger.records] == ["error line"]


def test_unknown_level_falls_back_to_info(serve_logger: ListHandler) -> None:
    configure_service_logging("LOUD", force=True)
    assert logging.getLogger("ingress").level == logging.INFO


def test_outside_ray_nothing_is_configured() -> None:
    before = logging.getLogger("ingress").level
    configure_service_logging("DEBUG")
    assert logging.getLogger("ingress").level == before


def test_records_carry_task_and_request_ids(serve_logger: ListHandler) -> None:
    configure_service_logging("INFO", force=True)
    log = logging.getLogger("deployments.pipeline")
    with log_context(task_id="t-1", request_id="req-1"):
        log.info("inside")
        log.info("own task id wins", extra={"task_id": "t-2"})
    log.info("outside")
    inside, own, outside = serve_logger.records
    # task_id goes as a Serve extra field: Serve drops a plain task_id (Ray's own task id)
    assert getattr(inside, SERVE_EXTRA_FIELDS) == {"task_id": "t-1"}
    assert inside.request_id == "req-1"  # type: ignore[attr-defined]
    assert getattr(own, SERVE_EXTRA_FIELDS) == {"task_id": "t-2"}
    assert not hasattr(outside, SERVE_EXTRA_FIELDS) and not hasattr(outside, "request_id")


def test_json_lines_carry_the_ids(serve_logger: ListHandler) -> None:
    from ray._common.formatters import JSONFormatter  # what Serve's JSON encoding uses

    configure_service_logging("INFO", force=True)
    with log_context(task_id="t-3", request_id="req-3"):
        logging.getLogger("deployments.runner").info("task %s done", "t-3")
    line = json.loads(JSONFormatter().format(serve_logger.records[-1]))
    assert line["task_id"] == "t-3" and line["request_id"] == "req-3"
    assert line["message"] == "task t-3 done" and line["levelname"] == "INFO"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("abc-123", True),
        ("0f" * 16, True),
        ("trace:1.2_x", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("has space", False),
        ("new\nline", False),
        ("ünïcode", False),
        ("", False),
    ],
)
def test_request_id_validation(value: str, ok: bool) -> None:
    assert (valid_request_id(value) == value) is ok


@pytest.fixture
def services(tmp_path: Path) -> IngressServices:
    return make_ingress_services(tmp_path)


@pytest.fixture
async def client(services: IngressServices) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(services))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def test_incoming_request_id_is_echoed_and_stored(
    client: httpx.AsyncClient, services: IngressServices, jfk_path: Path
) -> None:
    r = await client.post(
        "/speech-to-text",
        files={"file": ("a.flac", jfk_path.read_bytes())},
        headers={"X-Request-ID": "client-req-42"},
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "client-req-42"
    row = repository.get_task(services.db, task_id=r.json()["identifier"])
    assert row is not None and (row.inputs or {})["request_id"] == "client-req-42"


@pytest.mark.parametrize("sent", [None, "x" * 500, "bad id\t"])
async def test_missing_or_unsafe_request_id_is_replaced(
    client: httpx.AsyncClient, sent: str | None
) -> None:
    headers = {"X-Request-ID": sent} if sent is not None else {}
    r = await client.get("/health/live", headers=headers)
    made = r.headers["x-request-id"]
    assert made != sent and valid_request_id(made) == made and len(made) == 32


async def test_refusals_carry_a_request_id_too(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/speech-to-text",
        content=b"x",
        headers={"content-length": str(10**13), "X-Request-ID": "big-1"},
    )
    assert r.status_code == 413 and r.headers["x-request-id"] == "big-1"
