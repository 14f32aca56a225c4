"""Request limits enforced while the request arrives, before any route (or FastAPI's form
parser, which spools a whole multipart body to a temporary file) sees it.

- Headers: more than ``max_header_bytes`` in all → 431.
- Body size: a declared ``Content-Length`` over the route's limit → 413 before a byte is
  read; a body (chunked or lying) that passes the limit while it streams → 413 at that
  point, so an oversize upload never reaches the disk whole.
- Body time: no new body bytes for ``body_idle_timeout_seconds``, or the whole body not in
  after ``body_timeout_seconds`` → 408, instead of a connection held open for ever.

Once a limit answers, the app sees the client as gone and whatever it sends is dropped.

The Ingress app always runs this. Serve's HTTP proxy, in front of it, reads request bodies
ahead into memory until the app answers; to stop an oversize body at the proxy as well,
run the same middleware there through Serve's proxy callback:
``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=ingress.limits:proxy_middlewares`` in the
environment Serve starts in, with ``WHISPERX_SERVE_PROXY_MAX_UPLOAD_BYTES`` (default:
``IngressConfig.max_upload_bytes``). (Not yet exercised against a live proxy.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.config import IngressConfig
from common.schemas import TaskError

logger = logging.getLogger(__name__)

MULTIPART_SLACK = 64 * 1024
"""Room for multipart boundaries, part headers and small form fields beside the file."""
MAX_JSON_BYTES = 32 * 1024 * 1024
"""Largest JSON input file of ``/service/align`` and ``/service/combine``."""


def body_limit(path: str, config: IngressConfig) -> int:
    """The most body bytes a request to ``path`` may carry."""
    if path.rstrip("/").endswith("/service/combine"):
        return 2 * MAX_JSON_BYTES + MULTIPART_SLACK
    if path.rstrip("/").endswith("/service/align"):
        return config.max_upload_bytes + MAX_JSON_BYTES + MULTIPART_SLACK
    return config.max_upload_bytes + MULTIPART_SLACK


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.error = TaskError(error_code=code, user_message=message, technical_detail=detail)


class RequestLimitsMiddleware:
    def __init__(self, app: ASGIApp, config: IngressConfig) -> None:
        self.app = app
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header_bytes = sum(len(k) + len(v) + 4 for k, v in scope.get("headers", []))
        if header_bytes > self.config.max_header_bytes:
            await self._refuse_early(
                scope,
                send,
                _Refused(
                    431,
                    "headers_too_large",
                    "The request headers are too large.",
                    f"{header_bytes} header bytes > max_header_bytes="
                    f"{self.config.max_header_bytes}",
                ),
            )
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope.get("path", ""), self.config)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._refuse_early(scope, send, _too_large(limit, f"content-length {declared}"))
            return
        await _LimitedRequest(self.app, self.config, limit, scope, receive, send).run()

    async def _refuse_early(self, scope: Scope, send: Send, refused: _Refused) -> None:
        if scope["type"] == "websocket":
            await send(
                {"type": "websocket.close", "code": 1008, "reason": refused.error.error_code}
            )
            return
        logger.warning("request refused: %s", refused.error.technical_detail)
        await _send_error(send, refused)


class _LimitedRequest:
    """One request whose body is counted and timed as the app reads it."""

    def __init__(
        self,
        app: ASGIApp,
        config: IngressConfig,
        limit: int,
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        self.app, self.config, self.limit = app, config, limit
        self.scope, self._receive, self._send = scope, receive, send
        self.received = 0
        self.deadline = time.monotonic() + config.body_timeout_seconds
        self.body_done = False
        self.refused = False
        self.response_started = False

    async def run(self) -> None:
        try:
            await self.app(self.scope, self.receive, self.send)
        except Exception:
            if not self.refused:
                raise
            # answered already; the app only failed to read the body it was denied
            logger.debug("app stopped after the limit answered", exc_info=True)

    async def receive(self) -> Message:
        if self.refused:
            return {"type": "http.disconnect"}
        if self.body_done:
            return await self._receive()  # after the body: wait for a disconnect as usual
        wait = min(self.config.body_idle_timeout_seconds, self.deadline - time.monotonic())
        try:
            message = await asyncio.wait_for(self._receive(), max(wait, 0.0))
        except TimeoutError:
            return await self._refuse(
                _Refused(
                    408,
                    "request_timeout",
                    "The request body did not arrive in time.",
                    f"body stalled after {self.received} bytes",
                )
            )
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                return await self._refuse(_too_large(self.limit, f"body passed {self.received}"))
            if not message.get("more_body", False):
                self.body_done = True
        return message

    async def send(self, message: Message) -> None:
        if self.refused:
            return  # the limit already answered
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)

    async def _refuse(self, refused: _Refused) -> Message:
        self.refused = True
        logger.warning("request refused while reading its body: %s", refused.error.technical_detail)
        if not self.response_started:
            await _send_error(self._send, refused)
        return {"type": "http.disconnect"}


def _too_large(limit: int, what: str) -> _Refused:
    return _Refused(
        413,
        "upload_too_large",
        f"The request is larger than the {limit} bytes this route accepts.",
        f"{what} > limit {limit}",
    )


def _content_length(scope: Scope) -> int | None:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            text = value.decode("latin-1").strip()
            if text.isdigit():
                return int(text[:32])
            return None
    return None


async def _send_error(send: Send, refused: _Refused) -> None:
    body = refused.error.model_dump_json().encode()
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    start: dict[str, Any] = {"type": "http.response.start", "status": refused.status}
    start["headers"] = headers
    await send(start)
    await send({"type": "http.response.body", "body": body})


def proxy_middlewares() -> list[Any]:
    """Serve's HTTP-proxy callback: the same limits, applied in the proxy (see above)."""
    from starlette.middleware import Middleware

    fields: dict[str, Any] = {}
    if value := os.environ.get("WHISPERX_SERVE_PROXY_MAX_UPLOAD_BYTES"):
        fields["max_upload_bytes"] = int(value)
    return [Middleware(RequestLimitsMiddleware, config=IngressConfig(**fields))]
