"""Task callbacks: POST the final task to the ``callback_url`` its submitter gave.

Delivery goes through the same SSRF guard as URL downloads (checked again at delivery, as
DNS may have changed since submission). Connection errors, timeouts, 408, 429 and 5xx are
retried with exponential backoff and jitter within a bounded number of attempts and a
bounded overall time; any other answer is final. Nothing here raises: a callback that
cannot be delivered is logged and never changes the task.

Signed callbacks (a task of an API key, or any task when the service has a
``callback_signing_secret``) carry ``X-WhisperX-Timestamp: <unix seconds>`` and
``X-WhisperX-Signature: sha256=<hex>``, the HMAC-SHA256 of ``b"<timestamp>." + body`` (the
exact body bytes) under the secret: see :func:`verify_signature`, which receivers may copy.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from common import metrics
from common.config import RunnerConfig
from common.errors import DownloadFailedError, UrlNotAllowedError
from common.netguard.policy import IPNetwork
from common.netguard.transport import FetchLimits, post
from common.schemas import TaskPublic

logger = logging.getLogger(__name__)

_RETRIED_STATUSES = frozenset({408, 429})
_MAX_REPLY_BYTES = 64 * 1024
SIGNATURE_HEADER = "X-WhisperX-Signature"
TIMESTAMP_HEADER = "X-WhisperX-Timestamp"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-WhisperX-Signature`` value of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


@dataclass(frozen=True)
class CallbackPolicy:
    max_attempts: int = 5
    backoff_seconds: float = 1.0
    """Wait before the second attempt; it doubles for each further one."""
    backoff_max_seconds: float = 30.0
    jitter: float = 0.5
    """Each wait grows by a random 0–``jitter`` fraction, so retries of many tasks spread."""
    attempt_timeout_seconds: float = 10.0
    total_seconds: float = 120.0
    """No attempt starts (and none runs on) past this long after the first."""

    @classmethod
    def from_config(cls, config: RunnerConfig) -> CallbackPolicy:
        return cls(
            max_attempts=config.callback_max_attempts,
            backoff_seconds=config.callback_backoff_seconds,
            backoff_max_seconds=config.callback_backoff_max_seconds,
            attempt_timeout_seconds=config.callback_attempt_timeout_seconds,
            total_seconds=config.callback_total_seconds,
        )

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 = the second attempt)."""
        base = min(self.backoff_max_seconds, self.backoff_seconds * 2.0 ** (retry - 1))
        return min(self.backoff_max_seconds, base * (1 + random.uniform(0, self.jitter)))


@dataclass(frozen=True)
class CallbackOutcome:
    delivered: bool
    attempts: int
    status_code: int | None
    """The last HTTP status received, if any answer came."""
    detail: str
    """One line on why delivery stopped (empty when delivered)."""


def _retryable_status(status: int) -> bool:
    return status >= 500 or status in _RETRIED_STATUSES


async def deliver_callback(
    url: str,
    task: TaskPublic,
    *,
    policy: CallbackPolicy,
    allow_networks: Sequence[IPNetwork] = (),
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    signing_secret: str | None = None,
) -> CallbackOutcome:
    """POST ``task`` as JSON to ``url`` until a 2xx, a final answer or the policy's limits;
    signed with ``signing_secret`` when given (each attempt with its own timestamp)."""
    body = task.redacted().model_dump_json().encode()  # the URL itself is ``url``
    base_headers = [
        ("Content-Type", "application/json"),
        ("X-WhisperX-Task-Id", task.identifier),
        ("X-WhisperX-Task-Status", task.status.value),
    ]
    deadline = time.monotonic() + policy.total_seconds
    attempts, detail = 0, ""
    status: int | None = None
    extra = {"task_id": task.identifier}
    while attempts < policy.max_attempts:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            detail = f"gave up after {policy.total_seconds:g}s; last: {detail}"
            break
        attempts += 1
        limits = FetchLimits(
            max_bytes=_MAX_REPLY_BYTES,
            connect_timeout=min(policy.attempt_timeout_seconds, remaining),
            read_timeout=min(policy.attempt_timeout_seconds, remaining),
            total_timeout=min(policy.attempt_timeout_seconds, remaining),
            max_redirects=0,
        )
        retry = False
        headers = list(base_headers)
        if signing_secret:
            stamp = int(time.time())
            headers.append((TIMESTAMP_HEADER, str(stamp)))
            headers.append((SIGNATURE_HEADER, sign(signing_secret, stamp, body)))
        try:
            status = await post(
                url, body, headers=headers, limits=limits, allow_networks=allow_networks
            )
        except UrlNotAllowedError as exc:
            detail = f"refused: {exc.technical_detail}"
        except DownloadFailedError as exc:  # no answer (network, DNS, time): try again
            status, detail, retry = None, exc.technical_detail, True
        except Exception as exc:  # never let a callback bug escape into the task
            detail = f"{type(exc).__name__}: {exc}"
        else:
            if 200 <= status < 300:
                logger.info(
                    "callback for task %s delivered (HTTP %s, attempt %d)",
                    task.identifier,
                    status,
                    attempts,
                    extra=extra,
                )
                metrics.record_callback(delivered=True)
                return CallbackOutcome(True, attempts, status, "")
            detail = f"HTTP {status}"
            retry = _retryable_status(status)
        if not retry:
            break
        if attempts < policy.max_attempts:
            wait = policy.delay(attempts)
            if time.monotonic() + wait >= deadline:
                detail = f"gave up: next retry would pass {policy.total_seconds:g}s; {detail}"
                break
            logger.info(
                "callback for task %s failed (%s); retrying in %.1fs",
                task.identifier,
                detail,
                wait,
                extra=extra,
            )
            await sleep(wait)
    logger.warning(
        "callback for task %s not delivered after %d attempt(s): %s",
        task.identifier,
        attempts,
        detail,
        extra=extra,
    )
    metrics.record_callback(delivered=False)
    return CallbackOutcome(False, attempts, status, detail)
