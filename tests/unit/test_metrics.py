"""The metrics module without Ray (every call a no-op), and the Grafana dashboard: its
queries name only metrics that exist (ours, as Ray exports them, and known Serve ones),
and every metric of ours is on it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from common import metrics
from tests.conftest import REPO

DASHBOARD = REPO / "ops" / "grafana" / "whisperx-serve.json"

SERVE_METRICS = frozenset(
    {
        # Ray Serve's own (https://docs.ray.io/en/latest/serve/monitoring.html), exported on
        # the same endpoint; tests/integration/test_observability.py scrapes them live.
        "ray_serve_num_http_requests_total",
        "ray_serve_num_http_error_requests_total",
        "ray_serve_http_request_latency_ms_bucket",
        "ray_serve_deployment_replica_healthy",
        "ray_serve_deployment_processing_latency_ms_bucket",
        "ray_serve_replica_processing_queries",
        "ray_serve_deployment_queued_queries",
        "ray_serve_deployment_request_counter_total",
        "ray_serve_deployment_error_counter_total",
        "ray_serve_deployment_replica_starts_total",
    }
)


def exported_names(metric: metrics.Metric) -> set[str]:
    """The series names Ray's Prometheus endpoint shows for one of our metrics."""
    base = f"ray_{metric.name}"
    if metric.kind == "counter":
        return {f"{base}_total"}
    if metric.kind == "histogram":
        return {f"{base}_bucket", f"{base}_sum", f"{base}_count"}
    return {base}


OURS = {name for m in metrics.METRICS.values() for name in exported_names(m)}


def dashboard_queries() -> list[str]:
    spec = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in spec["panels"] for t in p.get("targets", [])]
    variables = [
        v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        for v in spec["templating"]["list"]
        if v["type"] == "query"
    ]
    return exprs + variables


def named_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\bray_[a-z0-9_]+", expr))


def test_metric_names_are_prometheus_names() -> None:
    for name, metric in metrics.METRICS.items():
        assert re.fullmatch(r"whisperx_[a-z0-9_]+", name) and metric.name == name
        assert all(re.fullmatch(r"[a-z_]+", t) for t in metric.tags)
        assert (metric.kind == "histogram") == bool(metric.buckets)


def test_every_record_call_is_a_no_op_without_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    # whatever an earlier tier of the same pytest process left behind: no Ray here
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(metrics, "_objects", {})
    metrics.record_submitted("speech_to_text")
    metrics.record_finished(
        "speech_to_text",
        "completed",
        audio_seconds=11.0,
        stage_seconds={"transcribing": 1.0, "queued": 0.5, "aligning": None},
    )
    metrics.record_finished("transcribe", "failed", error_code="invalid_audio")
    metrics.record_finished("transcribe", "cancelled")
    metrics.record_queue(3, 12.0)
    metrics.record_in_flight(2)
    metrics.websocket_opened()
    metrics.websocket_closed()
    metrics.record_event_published("progress")
    metrics.record_callback(delivered=True)
    metrics.record_callback(delivered=False)
    metrics.record_auth_failure("invalid_key")
    metrics.record_rate_limited("per_minute")
    assert metrics._objects == {}  # nothing was created


def test_dashboard_queries_only_existing_metrics() -> None:
    queries = dashboard_queries()
    assert queries
    for expr in queries:
        names = named_metrics(expr)
        assert names, f"query names no metric: {expr}"
        unknown = names - OURS - SERVE_METRICS
        assert not unknown, f"{expr} queries unknown metrics {sorted(unknown)}"


def test_dashboard_shows_every_metric_of_ours() -> None:
    used = set().union(*(named_metrics(e) for e in dashboard_queries()))
    for metric in metrics.METRICS.values():
        assert exported_names(metric) & used, f"{metric.name} is on no panel"


@pytest.mark.parametrize("path", [DASHBOARD])
def test_dashboard_is_importable_json(path: Path) -> None:
    spec = json.loads(path.read_text())
    assert spec["uid"] == "whisperx-serve" and spec["panels"]
    ids = [p["id"] for p in spec["panels"]]
    assert len(ids) == len(set(ids))
