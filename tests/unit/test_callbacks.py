"""deployments.callbacks against a real local receiving server: retries, backoff, giving up."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from ipaddress import ip_network
from pathlib import Path

import pytest

from common.config import RunnerConfig
from common.schemas import TaskParams, TaskPublic, TaskType
from deployments.callbacks import CallbackPolicy, deliver_callback, sign
from storage import repository
from storage.db import Database, migrate
from tests.local_http import LocalHTTPServer, reply, verify_signature

ALLOW = (ip_network("127.0.0.2/32"),)
FAST = CallbackPolicy(
    max_attempts=4, backoff_seconds=0.2, backoff_max_seconds=2, attempt_timeout_seconds=2
)


@pytest.fixture
def task(tmp_path: Path) -> TaskPublic:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    migrate(url)
    row = repository.create_task(
        Database(url),
        task_id="cb1",
        task_type=TaskType.speech_to_text,
        params=TaskParams(callback_url="http://127.0.0.2/hook"),
        file_name="a.flac",
        audio_key=None,
    )
    return row.to_public()


@pytest.fixture
def receiver() -> Iterator[LocalHTTPServer]:
    with LocalHTTPServer("127.0.0.2") as server:
        yield server


def answers(server: LocalHTTPServer, *statuses: int) -> None:
    """The hook answers with ``statuses`` in turn, then keeps answering the last one."""

    def route(h: BaseHTTPRequestHandler) -> None:
        reply(h, statuses[min(len(server.requests), len(statuses)) - 1], b"ok")

    server.routes["/hook"] = route


async def test_retries_5xx_then_delivers_with_backoff(
    receiver: LocalHTTPServer, task: TaskPublic
) -> None:
    answers(receiver, 503, 503, 200)
    outcome = await deliver_callback(receiver.url("/hook"), task, policy=FAST, allow_networks=ALLOW)
    assert outcome.delivered and outcome.attempts == 3 and outcome.status_code == 200
    times = [r.at for r in receiver.requests]
    assert len(times) == 3
    assert times[1] - times[0] >= FAST.backoff_seconds
    assert times[2] - times[1] >= 2 * FAST.backoff_seconds  # exponential
    first = receiver.requests[0]
    assert first.method == "POST" and first.headers["Content-Type"] == "application/json"
    assert first.headers["X-WhisperX-Task-Id"] == "cb1"
    assert first.headers["X-WhisperX-Task-Status"] == "queued"
    assert json.loads(first.body) == task.model_dump(mode="json")


async def test_429_and_408_are_retried(receiver: LocalHTTPServer, task: TaskPublic) -> None:
    answers(receiver, 429, 408, 204)
    outcome = await deliver_callback(receiver.url("/hook"), task, policy=FAST, allow_networks=ALLOW)
    assert outcome.delivered and outcome.attempts == 3


@pytest.mark.parametrize("status", [400, 404, 410, 301])
async def test_final_answers_are_not_retried(
    receiver: LocalHTTPServer, task: TaskPublic, status: int
) -> None:
    answers(receiver, status)
    outcome = await deliver_callback(receiver.url("/hook"), task, policy=FAST, allow_networks=ALLOW)
    assert not outcome.delivered and outcome.attempts == 1 and outcome.status_code == status
    assert len(receiver.requests) == 1 and f"HTTP {status}" in outcome.detail


async def test_persistent_5xx_stops_at_max_attempts(
    receiver: LocalHTTPServer, task: TaskPublic
) -> None:
    answers(receiver, 500)
    outcome = await deliver_callback(receiver.url("/hook"), task, policy=FAST, allow_networks=ALLOW)
    assert not outcome.delivered and outcome.attempts == FAST.max_attempts
    assert len(receiver.requests) == FAST.max_attempts


async def test_unreachable_gives_up_without_raising(task: TaskPublic) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.2", 0))
        port = s.getsockname()[1]
    started = time.monotonic()
    outcome = await deliver_callback(
        f"http://127.0.0.2:{port}/hook", task, policy=FAST, allow_networks=ALLOW
    )
    assert not outcome.delivered and outcome.attempts == FAST.max_attempts
    assert outcome.status_code is None and "ConnectError" in outcome.detail
    # waits of 0.2, 0.4, 0.8 s (+ up to 50 % jitter) between the four attempts
    assert 1.4 <= time.monotonic() - started < 5


async def test_total_time_bounds_the_retries(task: TaskPublic) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        port = s.getsockname()[1]
    policy = CallbackPolicy(max_attempts=20, backoff_seconds=0.2, total_seconds=1.0)
    started = time.monotonic()
    outcome = await deliver_callback(
        f"http://127.0.0.2:{port}/hook", task, policy=policy, allow_networks=ALLOW
    )
    assert not outcome.delivered and 2 <= outcome.attempts < 20
    assert time.monotonic() - started < 1.5 and "gave up" in outcome.detail


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",  # loopback, not allowlisted
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/hook",
        "ftp://127.0.0.2/hook",
    ],
)
async def test_refused_urls_are_never_contacted_nor_retried(task: TaskPublic, url: str) -> None:
    outcome = await deliver_callback(url, task, policy=FAST, allow_networks=ALLOW)
    assert not outcome.delivered and outcome.attempts == 1 and outcome.status_code is None
    assert outcome.detail.startswith("refused")


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    policy = CallbackPolicy(backoff_seconds=1.0, backoff_max_seconds=10.0, jitter=0.5)
    for retry, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 10.0)]:
        delays = [policy.delay(retry) for _ in range(200)]
        assert all(base <= d <= min(10.0, base * 1.5) for d in delays), (retry, delays[:5])
    assert len({policy.delay(1) for _ in range(20)}) > 1  # jittered


def test_policy_from_runner_config() -> None:
    config = RunnerConfig(
        callback_max_attempts=3,
        callback_backoff_seconds=0.5,
        callback_backoff_max_seconds=4,
        callback_attempt_timeout_seconds=2,
        callback_total_seconds=30,
    )
    policy = CallbackPolicy.from_config(config)
    assert (policy.max_attempts, policy.backoff_seconds, policy.backoff_max_seconds) == (3, 0.5, 4)
    assert (policy.attempt_timeout_seconds, policy.total_seconds) == (2, 30)


async def test_signed_callbacks_verify_at_the_receiver(
    receiver: LocalHTTPServer, task: TaskPublic
) -> None:
    """Each attempt is signed over the exact body bytes with its own timestamp; the
    receiver's check (``verify_signature``) accepts it and rejects any change."""
    answers(receiver, 503, 200)
    outcome = await deliver_callback(
        receiver.url("/hook"), task, policy=FAST, allow_networks=ALLOW, signing_secret="whsec_k"
    )
    assert outcome.delivered and outcome.attempts == 2
    for seen in receiver.requests:
        signature, stamp = (
            seen.headers["X-WhisperX-Signature"],
            seen.headers["X-WhisperX-Timestamp"],
        )
        assert signature.startswith("sha256=") and abs(int(stamp) - time.time()) < 30
        assert verify_signature("whsec_k", seen.body, signature, stamp)
        assert signature == sign("whsec_k", int(stamp), seen.body)
        assert not verify_signature("whsec_other", seen.body, signature, stamp)
        assert not verify_signature("whsec_k", seen.body + b" ", signature, stamp)
        assert not verify_signature("whsec_k", seen.body, signature, str(int(stamp) + 1))
        assert not verify_signature("whsec_k", seen.body, signature, stamp, now=int(stamp) + 301)


async def test_unsigned_without_a_secret(receiver: LocalHTTPServer, task: TaskPublic) -> None:
    answers(receiver, 200)
    await deliver_callback(receiver.url("/hook"), task, policy=FAST, allow_networks=ALLOW)
    assert "X-WhisperX-Signature" not in receiver.requests[0].headers
