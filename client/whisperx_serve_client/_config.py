"""Connection settings shared by the async and sync clients (and remembered by results)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ClientConfig:
    base_url: str
    """Where the service answers, e.g. ``http://127.0.0.1:8000`` (a path prefix is kept)."""
    api_key: str | None = field(default=None, repr=False)
    """Sent as ``Authorization: Bearer <api_key>`` when set."""
    timeout: float = 60.0
    """Seconds for each HTTP request (an upload gets this long per read/write, not in all)."""
    retries: int = 3
    """Extra attempts after a connection error or a 429/502/503/504 answer."""
    backoff: float = 0.5
    """First pause between attempts in seconds; doubles each time, up to ``max_backoff``."""
    max_backoff: float = 10.0
    max_retry_after: float = 120.0
    """Longest ``Retry-After`` (429, 503) the client waits out; a longer one is raised."""
    poll_interval: float = 1.0
    """Seconds between progress polls when the WebSocket cannot be used."""
    websocket: bool = True
    """Follow progress over the WebSocket; ``False`` polls instead."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, not {self.base_url!r}")
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if self.retries < 0:
            raise ValueError("retries must be >= 0")

    def url(self, path: str) -> str:
        return self.base_url + path

    def ws_url(self, path: str) -> str:
        return "ws" + self.base_url[len("http") :] + path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
