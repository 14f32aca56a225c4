"""``X-Request-ID``: kept when the client sends a usable one, made otherwise, echoed on the
response, bound to the request's log lines and stored with any task it creates.

Behind Serve's proxy, which already echoes the header it forwards, the header is only
added here when the client's value was refused (too long, unsafe characters) and
replaced; the id this service uses is then the one in the task and its logs.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.logs import REQUEST_ID_HEADER, log_context, new_request_id, valid_request_id


def serve_request_id() -> str | None:
    """The request id Serve assigned to the current request (``None`` outside Serve)."""
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or None
    except Exception:
        return None


class RequestIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = None
        for key, value in scope.get("headers", []):
            if key == REQUEST_ID_HEADER.encode():
                incoming = value.decode("latin-1")
                break
        request_id = valid_request_id(incoming) or new_request_id()
        echoed = incoming == request_id and serve_request_id() == incoming

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start" and not echoed:
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        scope.setdefault("state", {})["request_id"] = request_id
        with log_context(request_id=request_id):
            await self.app(scope, receive, send_with_id)
