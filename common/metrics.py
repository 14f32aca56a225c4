"""The service's metrics, through Ray's metrics API (``ray.util.metrics``).

Ray exports them on each node's Prometheus endpoint beside Serve's own ``ray_serve_*``
metrics, with a ``ray_`` prefix (``whisperx_tasks_submitted`` is scraped as
``ray_whisperx_tasks_submitted_total``). The metric objects are created lazily, once per
process, and only inside a Ray worker or driver: without Ray (unit tests, the client)
every function here does nothing. Recording never raises into the caller.

``METRICS`` is the one list of names; the Grafana dashboard may only query these (and
Serve's), which a unit test checks.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Literal

logger = logging.getLogger(__name__)

Kind = Literal["counter", "gauge", "histogram"]

DURATION_BUCKETS = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600]
RTF_BUCKETS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5, 10]


@dataclass(frozen=True)
class Metric:
    name: str
    kind: Kind
    description: str
    tags: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("whisperx_tasks_submitted", "counter", "Tasks accepted.", ("task_type",)),
        Metric("whisperx_tasks_completed", "counter", "Tasks completed.", ("task_type",)),
        Metric("whisperx_tasks_failed", "counter", "Tasks failed.", ("task_type", "error_code")),
        Metric("whisperx_tasks_cancelled", "counter", "Tasks cancelled.", ("task_type",)),
        Metric("whisperx_queue_depth", "gauge", "Tasks waiting in the durable queue."),
        Metric(
            "whisperx_queue_oldest_age_seconds",
            "gauge",
            "Age of the oldest queued task (0 when the queue is empty).",
        ),
        Metric("whisperx_tasks_in_flight", "gauge", "Tasks a runner replica is processing."),
        Metric(
            "whisperx_stage_duration_seconds",
            "histogram",
            "Seconds in one task step (queued, decode, transcribing, aligning, diarizing, total).",
            ("stage",),
            tuple(DURATION_BUCKETS),
        ),
        Metric(
            "whisperx_stage_real_time_factor",
            "histogram",
            "Stage wall time divided by the audio's duration.",
            ("stage",),
            tuple(RTF_BUCKETS),
        ),
        Metric(
            "whisperx_audio_seconds_processed",
            "counter",
            "Seconds of audio in completed tasks.",
            ("task_type",),
        ),
        Metric("whisperx_websockets_open", "gauge", "Open progress WebSockets (per replica)."),
        Metric(
            "whisperx_progress_events_published",
            "counter",
            "Progress events the tracker published.",
            ("type",),
        ),
        Metric(
            "whisperx_callback_deliveries",
            "counter",
            "Task callbacks delivered (2xx).",
        ),
        Metric(
            "whisperx_callback_failures",
            "counter",
            "Task callbacks given up on.",
        ),
        Metric("whisperx_auth_failures", "counter", "Requests refused for a bad key.", ("reason",)),
        Metric(
            "whisperx_rate_limited",
            "counter",
            "Requests answered 429 (per-key limits) or 503 (queue full).",
            ("kind",),
        ),
    )
}

_objects: dict[str, Any] = {}
_lock = threading.Lock()


def _get(name: str) -> Any | None:
    """The Ray metric object for ``name``, or ``None`` outside Ray."""
    obj = _objects.get(name)
    if obj is not None:
        return obj
    try:
        import ray

        if not ray.is_initialized():
            return None
        from ray.util import metrics as ray_metrics

        spec = METRICS[name]
        with _lock:
            if name in _objects:
                return _objects[name]
            if spec.kind == "counter":
                obj = ray_metrics.Counter(name, spec.description, tag_keys=spec.tags)
            elif spec.kind == "gauge":
                obj = ray_metrics.Gauge(name, spec.description, tag_keys=spec.tags)
            else:
                obj = ray_metrics.Histogram(
                    name, spec.description, boundaries=list(spec.buckets), tag_keys=spec.tags
                )
            _objects[name] = obj
        return obj
    except Exception:
        logger.debug("metric %s unavailable", name, exc_info=True)
        return None


def _tags(name: str, tags: dict[str, str]) -> dict[str, str]:
    return {k: str(tags.get(k, ""))[:64] for k in METRICS[name].tags}


def _record(name: str, method: str, value: float, tags: dict[str, str]) -> None:
    """``obj.<method>(value)`` on the metric ``name``; nothing outside Ray, never raises."""
    obj = _get(name)
    if obj is not None:
        try:
            getattr(obj, method)(value, tags=_tags(name, tags))
        except Exception:
            logger.debug("metric %s not recorded", name, exc_info=True)


def inc(name: str, value: float = 1.0, **tags: str) -> None:
    if value > 0:
        _record(name, "inc", value, tags)


def set_gauge(name: str, value: float, **tags: str) -> None:
    _record(name, "set", value, tags)


def observe(name: str, value: float, **tags: str) -> None:
    _record(name, "observe", value, tags)


# ---------------------------------------------------------------- what the service records


def record_submitted(task_type: str) -> None:
    inc("whisperx_tasks_submitted", task_type=task_type)


def record_finished(
    task_type: str,
    status: str,
    *,
    error_code: str | None = None,
    audio_seconds: float | None = None,
    stage_seconds: dict[str, float | None] | None = None,
) -> None:
    """One task's end: its counter, and for a completed task its audio and stage times."""
    if status == "completed":
        inc("whisperx_tasks_completed", task_type=task_type)
        if audio_seconds:
            inc("whisperx_audio_seconds_processed", audio_seconds, task_type=task_type)
    elif status == "failed":
        inc("whisperx_tasks_failed", task_type=task_type, error_code=error_code or "internal")
    elif status == "cancelled":
        inc("whisperx_tasks_cancelled", task_type=task_type)
    if status != "completed":
        return
    for stage, seconds in (stage_seconds or {}).items():
        if seconds is None:
            continue
        observe("whisperx_stage_duration_seconds", seconds, stage=stage)
        if audio_seconds and stage != "queued":
            observe("whisperx_stage_real_time_factor", seconds / audio_seconds, stage=stage)


def record_queue(depth: int, oldest_age_seconds: float) -> None:
    set_gauge("whisperx_queue_depth", depth)
    set_gauge("whisperx_queue_oldest_age_seconds", max(0.0, oldest_age_seconds))


def record_in_flight(count: int) -> None:
    set_gauge("whisperx_tasks_in_flight", count)


_open_websockets = 0


def websocket_opened() -> None:
    global _open_websockets
    with _lock:
        _open_websockets += 1
        value = _open_websockets
    set_gauge("whisperx_websockets_open", value)


def websocket_closed() -> None:
    global _open_websockets
    with _lock:
        _open_websockets = max(0, _open_websockets - 1)
        value = _open_websockets
    set_gauge("whisperx_websockets_open", value)


def record_event_published(event_type: str) -> None:
    inc("whisperx_progress_events_published", type=event_type)


def record_callback(delivered: bool) -> None:
    inc("whisperx_callback_deliveries" if delivered else "whisperx_callback_failures")


def record_auth_failure(reason: str) -> None:
    """For the API-key layer: a request refused for a missing or invalid key."""
    inc("whisperx_auth_failures", reason=reason)


def record_rate_limited(kind: str) -> None:
    """For the limits layer: a 429 (``kind`` e.g. ``concurrent``, ``per_minute``) or a
    503 for a full queue (``queue_full``)."""
    inc("whisperx_rate_limited", kind=kind)
