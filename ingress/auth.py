"""API keys on every route but the health probes, and who may see which task.

- :class:`AuthGate` decides whether auth is on (``ingress.auth``: ``required``; ``auto``,
  the default, as soon as one key has been created; ``off``) and turns a bearer token
  into a :class:`Caller`.
- :class:`AuthMiddleware` runs before every route (deny by default: a route added later is
  protected too). HTTP takes ``Authorization: Bearer <key>``; the WebSocket takes that
  header or, from a browser, the subprotocols ``["whisperx-serve", "bearer.<key>"]``.
  Never a query string, which proxies log. Refusals: 401 ``unauthorized`` (OpenAI's
  shape under ``/v1``), WebSocket close 4401.
- :meth:`Caller.sees` is the one visibility rule: an admin key (or anyone while auth is
  off) sees every task, any other key only its own; everything else is 404.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from starlette.requests import HTTPConnection
from starlette.responses import Response

from common import metrics
from common.config import IngressConfig
from common.errors import (
    OverloadedError,
    RateLimitedError,
    RetryLaterError,
    ServiceError,
    TaskNotFoundError,
    UnauthorizedError,
)
from storage import api_keys, repository
from storage.db import Database
from storage.models import ApiKeyRow, TaskRow
from storage.quota import Quota, QuotaExceeded, Refusal

logger = logging.getLogger(__name__)

KEY_PREFIX = "wxs_"
KEY_DISPLAY_CHARS = 12
"""Characters of a key kept for listings: ``wxs_`` and 8 of its 43 random ones."""
WS_SUBPROTOCOL = "whisperx-serve"
WS_BEARER_PREFIX = "bearer."
CLOSE_UNAUTHORIZED = 4401
OPEN_PATHS = frozenset({"/health", "/health/live", "/health/ready"})
"""Answered without a key whatever the mode: load balancers and orchestrators probe them."""
PAGE_PATHS = frozenset({"/"})
PAGE_PREFIX = "/static/"
"""The web page's HTML, CSS and JS: no data, and it must load so a person can enter a key
(every call it makes then carries the key)."""
DOC_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
SUBMIT_PATHS = frozenset(
    {
        "/speech-to-text",
        "/speech-to-text-url",
        "/service/transcribe",
        "/service/align",
        "/service/diarize",
        "/service/combine",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
    }
)
"""POSTs that create a task: their limits are checked before the body is read (and again,
for good, when the task is inserted)."""
KEY_CACHE_SECONDS = 5.0
"""How long a replica trusts a key it looked up: a revoked key stops working within this."""
NO_KEYS_CACHE_SECONDS = 1.0
"""``auth: auto``: how long a replica trusts "no key exists yet"."""
_CACHE_MAX = 4096
_CALLER = "whisperx.caller"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# ---------------------------------------------------------------- keys


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    id: str
    key: str
    """The secret, shown once: only its hash is stored."""
    callback_secret: str


def generate_key() -> NewKey:
    """``wxs_`` + 43 url-safe base64 characters (256 random bits)."""
    return NewKey(
        id="key_" + secrets.token_hex(6),
        key=KEY_PREFIX + secrets.token_urlsafe(32),
        callback_secret="whsec_" + secrets.token_urlsafe(32),
    )


def create_key(
    db: Database,
    *,
    name: str,
    is_admin: bool = False,
    max_active_tasks: int | None = None,
    max_submissions_per_minute: int | None = None,
) -> tuple[NewKey, ApiKeyRow]:
    new = generate_key()
    row = api_keys.create_api_key(
        db,
        key_id=new.id,
        name=name,
        key_hash=hash_key(new.key),
        prefix=new.key[:KEY_DISPLAY_CHARS],
        callback_secret=new.callback_secret,
        is_admin=is_admin,
        max_active_tasks=max_active_tasks,
        max_submissions_per_minute=max_submissions_per_minute,
    )
    return new, row


# ---------------------------------------------------------------- callers


@dataclass(frozen=True)
class Caller:
    """Who sent a request."""

    key_id: str | None
    """``None`` while auth is off."""
    name: str
    is_admin: bool
    max_active_tasks: int | None = None
    """The key's own limits, overriding ``ingress.limits``."""
    max_submissions_per_minute: int | None = None

    @property
    def owner_scope(self) -> str | None:
        """The owner whose tasks this caller sees; ``None``: every task."""
        return None if self.is_admin else self.key_id

    def sees(self, owner_key_id: str | None) -> bool:
        """The visibility rule: admins (and anyone while auth is off) see all, keys their own."""
        return self.owner_scope is None or owner_key_id == self.owner_scope

    def quota(self, config: IngressConfig) -> Quota:
        limits = config.limits
        return Quota(
            max_active=self.max_active_tasks or limits.max_active_tasks,
            max_per_minute=self.max_submissions_per_minute or limits.max_submissions_per_minute,
            max_queued=config.max_queued_tasks,
            busy_retry_after_s=limits.busy_retry_after_seconds,
            overload_retry_after_s=config.overload_retry_after_seconds,
        )

    @classmethod
    def of(cls, row: ApiKeyRow) -> Caller:
        return cls(
            key_id=row.id,
            name=row.name,
            is_admin=row.is_admin,
            max_active_tasks=row.max_active_tasks,
            max_submissions_per_minute=row.max_submissions_per_minute,
        )


OPEN = Caller(key_id=None, name="anonymous (auth off)", is_admin=True)


class AuthGate:
    """Whether auth is on, and which key a token is; shared by the requests of one replica."""

    def __init__(self, db: Database, config: IngressConfig) -> None:
        self._db = db
        self.mode = config.auth
        self._keys: dict[str, tuple[Caller, float]] = {}
        self._any_key: tuple[bool, float] | None = None

    async def enabled(self) -> bool:
        if self.mode != "auto":
            return self.mode == "required"
        now = time.monotonic()
        if self._any_key is None or now >= self._any_key[1]:
            counts = await asyncio.to_thread(api_keys.count_api_keys, self._db)
            exists = counts.total > 0
            ttl = KEY_CACHE_SECONDS if exists else NO_KEYS_CACHE_SECONDS
            self._any_key = (exists, now + ttl)
        return self._any_key[0]

    async def caller(self, token: str | None) -> Caller:
        """The caller a request's token makes it; raises :class:`UnauthorizedError`."""
        if not await self.enabled():
            return OPEN
        if not token:
            raise UnauthorizedError(
                "This service needs an API key: send it as `Authorization: Bearer <key>`.",
                "no bearer token",
            )
        digest = hash_key(token)
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is not None and now < cached[1]:
            return cached[0]
        row = await asyncio.to_thread(api_keys.find_active_key, self._db, key_hash=digest)
        if row is None:  # unknown hashes are not cached: they cannot fill the memory
            self._keys.pop(digest, None)
            raise UnauthorizedError(
                "This API key is not valid (unknown or revoked).", "unknown or revoked API key"
            )
        if len(self._keys) >= _CACHE_MAX:
            self._keys.clear()
        caller = Caller.of(row)
        self._keys[digest] = (caller, now + KEY_CACHE_SECONDS)
        return caller


def log_auth_state(db: Database, config: IngressConfig) -> None:
    """Say at startup, loudly when it is off, whether a key is needed."""
    counts = api_keys.count_api_keys(db)
    if config.auth == "off" or (config.auth == "auto" and counts.total == 0):
        why = "ingress.auth is off" if config.auth == "off" else "no API key exists yet"
        logger.warning(
            "AUTH IS OFF (%s): anyone who can reach this port can list, read, cancel and "
            "delete every task. Create a key (`whisperx-serve keys create --name NAME`) or "
            "set ingress.auth: required before exposing the service on a network.",
            why,
        )
    elif counts.active == 0:
        logger.warning(
            "auth is on but no API key is active: every request except the health probes "
            "is refused. Create one with `whisperx-serve keys create --name NAME`."
        )
    else:
        logger.info("auth is on (%s): %d active API key(s)", config.auth, counts.active)


# ---------------------------------------------------------------- the middleware


def _token(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() != "bearer":
                return None
            return token.strip() or None
    if scope["type"] == "websocket":
        for protocol in scope.get("subprotocols", ()):
            if protocol.startswith(WS_BEARER_PREFIX):
                return protocol[len(WS_BEARER_PREFIX) :] or None
    return None


def ws_subprotocol(scope: Scope) -> str | None:
    """The subprotocol to accept: ``whisperx-serve`` when the client offered it (a browser
    drops a connection whose accepted subprotocol is not one it offered)."""
    return WS_SUBPROTOCOL if WS_SUBPROTOCOL in scope.get("subprotocols", ()) else None


class AuthMiddleware:
    """Authenticates every HTTP request and WebSocket before it reaches a route."""

    def __init__(
        self, app: ASGIApp, *, gate: AuthGate, db: Database, config: IngressConfig
    ) -> None:
        self.app = app
        self.gate = gate
        self.db = db
        self.config = config
        self.open_paths = OPEN_PATHS | DOC_PATHS if config.public_docs else OPEN_PATHS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        if path in self.open_paths or (
            scope["type"] == "http" and (path in PAGE_PATHS or path.startswith(PAGE_PREFIX))
        ):
            await self.app(scope, receive, send)
            return
        try:
            caller = await self.gate.caller(_token(scope))
        except UnauthorizedError as exc:
            logger.warning("refused %s %s: %s", scope["type"], path, exc.technical_detail)
            metrics.record_auth_failure("missing" if _token(scope) is None else "invalid")
            if scope["type"] == "websocket":
                await _close_unauthorized(scope, receive, send)
            else:
                response = _error(exc, path)
                response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
            return
        if scope["type"] == "http" and scope["method"] == "POST" and path in SUBMIT_PATHS:
            try:
                await admit(self.db, self.config, caller)
            except RetryLaterError as exc:
                await _error(exc, path)(scope, receive, send)
                return
        scope[_CALLER] = caller
        await self.app(scope, receive, send)


def _error(exc: ServiceError, path: str) -> Response:
    """The error in the shape of the route it was meant for (OpenAI's under ``/v1``)."""
    if path.startswith("/v1/"):
        from ingress.routes.openai_compat import error_response

        return error_response(exc)
    from ingress.errors import response_for

    return response_for(exc)


async def _close_unauthorized(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept, then close with 4401: a browser sees the code (a refused upgrade it hides)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept", "subprotocol": ws_subprotocol(scope)})
    await send({"type": "websocket.close", "code": CLOSE_UNAUTHORIZED, "reason": "unauthorized"})


def install_auth(app: FastAPI, db: Database, config: IngressConfig) -> AuthGate:
    gate = AuthGate(db, config)
    app.add_middleware(AuthMiddleware, gate=gate, db=db, config=config)
    document_auth(app)
    return gate


# ---------------------------------------------------------------- for the routes


def caller_of(connection: HTTPConnection) -> Caller:
    """The caller the middleware authenticated (fails closed if it did not run)."""
    caller = connection.scope.get(_CALLER)
    if not isinstance(caller, Caller):
        raise UnauthorizedError("This route needs an API key.", "request not authenticated")
    return caller


async def _current_caller(request: Request) -> Caller:  # async: no thread hop per request
    return caller_of(request)


CallerDep = Annotated[Caller, Depends(_current_caller)]


def task_not_found(identifier: str) -> TaskNotFoundError:
    return TaskNotFoundError("No task has this identifier.", f"task {identifier[:64]!r} not found")


async def visible_task(db: Database, caller: Caller, identifier: str) -> TaskRow:
    """The task if this caller may see it; 404 alike for unknown and for others' tasks."""
    row = await asyncio.to_thread(repository.get_task, db, task_id=identifier)
    if row is None or not caller.sees(row.owner_key_id):
        raise task_not_found(identifier)
    return row


def refused(refusal: Refusal) -> RetryLaterError:
    metrics.record_rate_limited(refusal.kind)
    if refusal.kind == "queue":
        return OverloadedError(
            "The service has too many queued tasks right now; try again later.",
            f"queued tasks {refusal.count} >= max_queued_tasks {refusal.limit}",
            refusal.retry_after_s,
        )
    what = (
        f"at most {refusal.limit} tasks queued or running"
        if refusal.kind == "active"
        else f"at most {refusal.limit} submissions per minute"
    )
    return RateLimitedError(
        f"This API key may have {what}; try again in {refusal.retry_after_s} s.",
        f"{refusal.kind}: {refusal.count} >= {refusal.limit}",
        refusal.retry_after_s,
    )


async def admit(db: Database, config: IngressConfig, caller: Caller | None) -> None:
    """Refuse early (429/503) a submission that would not fit, before its body is read."""
    if caller is None:
        return
    try:
        await asyncio.to_thread(
            repository.check_quota, db, owner_key_id=caller.key_id, quota=caller.quota(config)
        )
    except QuotaExceeded as exc:
        raise refused(exc.refusal) from None


# ---------------------------------------------------------------- OpenAPI


def document_auth(app: FastAPI) -> None:
    """The bearer scheme on every operation but the health probes, and its 401."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        spec = build()
        components = spec.setdefault("components", {})
        components.setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "An API key from `whisperx-serve keys create` (`wxs_…`), when auth is on. "
                "WebSocket: the same header, or subprotocols "
                '`["whisperx-serve", "bearer.<key>"]` from a browser.'
            ),
        }
        for path, operations in spec.get("paths", {}).items():
            if path in OPEN_PATHS:
                continue
            shape = "OpenAIError" if path.startswith("/v1/") else "TaskError"
            ref = {"$ref": f"#/components/schemas/{shape}"}
            for operation in operations.values():
                operation["security"] = [{"bearer": []}, {}]  # {}: auth may be off
                operation.setdefault("responses", {}).setdefault(
                    "401",
                    {
                        "description": "Missing, unknown or revoked API key (auth on).",
                        "content": {"application/json": {"schema": ref}},
                    },
                )
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
