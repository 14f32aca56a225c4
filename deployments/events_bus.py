"""Progress events on Redis: the layout, connection and entry format that both sides share.

The ProgressTracker actor stays the source of truth; Redis is a copy that lets any ingress
replica (and any process outside Ray) read a task's events without asking the actor. The
tracker writes it through :mod:`deployments.events_publisher`; ingress replicas and plain
Python processes read it through :mod:`ingress.events_reader`.

Layout, under ``{prefix}:{app}`` (so two apps on one Redis never mix):

- ``{prefix}:{app}:task:{task_id}:events``: a Redis Stream whose entry ID is ``{seq}-0``
  and whose one field ``event`` holds the event JSON (``ProgressEvent`` or ``ErrorEvent``).
  ``XREAD``/``XRANGE`` from ``{after_seq}-0`` resume gap-free. Trimmed to about
  ``stream_maxlen`` entries; the key expires ``ttl_seconds`` after its last event.
- ``{prefix}:{app}:events``: every event JSON of every task, ``PUBLISH``ed live
  (at least once; dedupe by ``task_id`` and ``seq``).

No Ray import here or on the reader side.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import TypeAdapter
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from common.schemas import TaskEvent
from common.settings import Settings
from deployments.progress_state import Event

FALLBACK = "falling back to the Ray actor"
BATCH = 500
"""Most entries written in one pipeline or read in one command."""
OUTAGE = (RedisError, OSError)
"""What an unreachable Redis raises (OSError covers refused/reset sockets, TimeoutError)."""
_EVENT = TypeAdapter[Event](TaskEvent)


@dataclass(frozen=True)
class EventsBusConfig:
    """Where one app's events live on Redis (picklable: it travels to the tracker actor)."""

    url: str
    app_name: str
    prefix: str = "whisperx"
    stream_maxlen: int = 1000
    ttl_seconds: int = 86_400

    @classmethod
    def from_settings(cls, settings: Settings, app_name: str) -> EventsBusConfig | None:
        if not settings.redis_url:
            return None
        return cls(
            url=settings.redis_url,
            app_name=app_name,
            prefix=settings.redis_prefix,
            stream_maxlen=settings.redis_stream_maxlen,
            ttl_seconds=settings.redis_ttl_seconds,
        )

    @property
    def base(self) -> str:
        return f"{self.prefix}:{self.app_name}"

    @property
    def channel(self) -> str:
        return f"{self.base}:events"

    def stream_key(self, task_id: str) -> str:
        return f"{self.base}:task:{task_id}:events"


def connect(url: str, *, socket_timeout: float) -> Redis:
    """A client that fails fast: callers have their own fallback or backoff, so redis-py's
    default retries (seconds of sleeping per command while Redis is down) only add latency.
    One immediate retry reconnects a pooled connection that a Redis restart left stale."""
    client: Redis = Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=2.0,
        retry=Retry(NoBackoff(), 1),
    )
    return client


def describe(exc: BaseException) -> str:
    """One line for logs and /health/ready (no traceback; Redis errors name host:port only)."""
    text = " ".join(str(exc).split()).rstrip(".")
    return (f"{type(exc).__name__}: {text}" if text else type(exc).__name__)[:200]


def entry_seq(entry_id: bytes | str) -> int:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(raw.split("-", 1)[0])


def parse_entry(fields: dict[bytes, bytes]) -> Event:
    return _EVENT.validate_json(fields[b"event"])
