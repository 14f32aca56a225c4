from __future__ import annotations

from typing import Any

from common.schemas import TaskProgressStage
from deployments.reporting import StageReporter, stage_reporter


class FakeTracker:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.report = self

    def remote(self, *args: Any) -> None:
        self.calls.append(args)


def test_reports_are_rate_limited_monotonic_and_always_end_at_100() -> None:
    now = [0.0]
    tracker = FakeTracker()
    report = StageReporter(
        tracker, "t1", TaskProgressStage.aligning, min_interval_s=1.0, clock=lambda: now[0]
    )
    report(10)
    report(20)  # within the interval: dropped
    now[0] = 2.0
    report(5)  # backwards: dropped
    report(30)
    report(100)  # the end is never dropped
    assert [c[2] for c in tracker.calls] == [10.0, 30.0, 100.0]
    assert all(c[:2] == ("t1", "aligning") for c in tracker.calls)


def test_no_reporter_outside_a_task() -> None:
    assert stage_reporter(None, "t1", TaskProgressStage.transcribing) is None
    assert stage_reporter("app", None, TaskProgressStage.transcribing) is None
