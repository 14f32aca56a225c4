from __future__ import annotations

import pytest

from common.schemas import ErrorEvent, TaskError, TaskProgressStage, TaskStatus
from deployments.progress_state import TaskProgressState, stage_ranges

T, A, D = TaskProgressStage.transcribing, TaskProgressStage.aligning, TaskProgressStage.diarizing


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def started(stages: list[TaskProgressStage]) -> TaskProgressState:
    state = TaskProgressState(task_id="t1", clock=Clock())
    assert state.start(stages) is not None
    return state


def test_stage_ranges_cover_0_to_99_in_order() -> None:
    ranges = stage_ranges([T, A, D])
    assert ranges[T][0] == 0.0
    assert ranges[T][1] == pytest.approx(ranges[A][0])
    assert ranges[A][1] == pytest.approx(ranges[D][0])
    assert ranges[D][1] == pytest.approx(99.0)


def test_skipped_stage_has_no_range() -> None:
    ranges = stage_ranges([T, D])
    assert A not in ranges
    assert ranges[D][1] == pytest.approx(99.0)


def test_callback_percentages_map_into_stage_range() -> None:
    state = started([T, A, D])
    lo, hi = stage_ranges([T, A, D])[T]
    event = state.report(T, 50.0)
    assert event is not None
    assert event.percentage == pytest.approx(round(lo + (hi - lo) / 2, 1))
    assert event.stage is T


def test_percentage_never_goes_backwards() -> None:
    state = started([T, D])
    assert state.report(T, 80.0) is not None
    assert state.report(T, 40.0) is None
    assert state.enter_stage(D) is not None
    before = state.percentage
    assert state.report(T, 100.0) is None  # late report of a finished stage
    assert state.percentage == before


def test_stages_only_move_forward_and_only_planned() -> None:
    state = started([T, D])
    assert state.enter_stage(A) is None  # not planned
    assert state.enter_stage(D) is not None
    assert state.enter_stage(T) is None


def test_seq_is_gapless_and_log_replays() -> None:
    state = started([T, A, D])
    for pct in (10, 20, 30):
        state.report(T, pct)
    state.enter_stage(A)
    state.enter_stage(D)
    state.finish(TaskStatus.completed)
    seqs = [e.seq for e in state.events_after(0)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert [e.seq for e in state.events_after(3)] == seqs[3:]
    last = state.events_after(0)[-1]
    assert last.status is TaskStatus.completed and last.percentage == 100.0


def test_failure_emits_error_event_with_codes() -> None:
    state = started([T])
    event = state.finish(
        TaskStatus.failed,
        TaskError(error_code="invalid_audio", user_message="Bad audio.", technical_detail="x"),
    )
    assert isinstance(event, ErrorEvent)
    assert (event.error_code, event.user_message, event.technical_detail) == (
        "invalid_audio",
        "Bad audio.",
        "x",
    )
    assert state.finish(TaskStatus.completed) is None  # terminal is final
    assert state.report(T, 99) is None


def test_restart_keeps_percentage_and_seq() -> None:
    state = started([T, D])
    state.report(T, 50)
    pct, seq = state.percentage, state.seq
    event = state.start([T, D], attempt=2)
    assert event is not None and event.seq == seq + 1
    assert event.percentage == pct
    assert "attempt 2" in event.message and event.message.startswith("Transcribing")


def test_eta_uses_the_current_stage_pace_and_weights_of_later_stages() -> None:
    clock = Clock()
    state = TaskProgressState(task_id="t", clock=clock, weights={T: 1.0, A: 1.0, D: 3.0})
    state.start([T, D])
    clock.now = 10.0
    event = state.report(T, 50)  # transcription: half done in 10 s -> 20 s in all
    assert event is not None and event.eta_seconds == pytest.approx(10 + 3 * 20, abs=0.5)
    clock.now = 20.0
    state.enter_stage(D)
    clock.now = 50.0
    event = state.report(D, 25)  # diarization: a quarter in 30 s -> 90 s more, nothing after
    assert event is not None and event.eta_seconds == pytest.approx(90, abs=1)


def test_eta_falls_back_to_overall_pace_early_in_a_stage() -> None:
    clock = Clock()
    state = TaskProgressState(task_id="t", clock=clock)
    state.start([T])
    clock.now = 10.0
    event = state.report(T, 2)  # under 5% of the stage: too early for its own pace
    assert event is not None and event.eta_seconds == pytest.approx(10 * (100 - 2) / 2, rel=0.05)


def test_small_moves_emit_nothing() -> None:
    state = started([T])
    assert state.report(T, 10.0) is not None
    assert state.report(T, 10.05) is None


def test_learned_weights_follow_measured_stage_times() -> None:
    from deployments.progress_state import STAGE_WEIGHTS, learn_weights

    durations = {T: 10.0, D: 90.0}  # diarization dominates (CPU)
    weights = dict(STAGE_WEIGHTS)
    for _ in range(20):
        weights = learn_weights(weights, durations)
    mass = STAGE_WEIGHTS[T] + STAGE_WEIGHTS[D]
    assert weights[D] / (weights[T] + weights[D]) == pytest.approx(0.9, abs=0.01)
    assert weights[T] + weights[D] == pytest.approx(mass)
    assert weights[A] == STAGE_WEIGHTS[A]  # a skipped stage keeps its weight
    ranges = stage_ranges([T, D], weights)
    assert ranges[T][1] == pytest.approx(9.9, abs=0.2)  # the bar's pace now matches


def test_stage_durations_of_a_completed_run() -> None:
    clock = Clock()
    state = TaskProgressState(task_id="t", clock=clock)
    state.start([T, D])
    clock.now = 4.0
    state.enter_stage(D)
    clock.now = 10.0
    assert state.stage_durations() == {}  # not finished yet
    state.finish(TaskStatus.completed)
    assert state.stage_durations() == {T: 4.0, D: 6.0}


def test_start_message_names_the_stage() -> None:
    state = TaskProgressState(task_id="t", clock=Clock())
    event = state.start([T])
    assert event is not None and event.message == "Transcribing"


def test_a_rebuilt_log_fills_the_gap_before_its_first_event() -> None:
    """After a tracker restart the log is rebuilt from the row (seq 5, mirrored); a watcher
    that saw up to 3 (events 4 and 5 died with the old log) gets 4, 5, 6: no seq skipped."""
    state = TaskProgressState(
        task_id="t",
        status=TaskStatus.processing,
        stage=TaskProgressStage.diarizing,
        percentage=60.0,
        seq=5,
        message="Diarizing",
        stages=[TaskProgressStage.transcribing, TaskProgressStage.diarizing],
    )
    state.replay_current()
    state.report(TaskProgressStage.diarizing, 50.0)
    events = state.events_after(3)
    assert [e.seq for e in events] == [4, 5, 6]
    assert all(e.percentage >= 60.0 for e in events)
    assert [e.seq for e in state.events_after(4)] == [5, 6]
    assert [e.seq for e in state.events_after(5)] == [6]


def test_a_terminal_event_is_never_copied_into_a_gap() -> None:
    state = TaskProgressState(task_id="t", status=TaskStatus.processing, seq=7)
    state.finish(TaskStatus.completed)
    assert [e.seq for e in state.events_after(3)] == [8]
