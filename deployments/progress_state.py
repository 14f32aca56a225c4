"""Per-task progress state: stage plan, overall percentage, monotonic seq, bounded event log.

No Ray and no I/O here, so the rules are unit-tested directly; ``ProgressTracker`` (the
named actor in ``progress.py``) wraps one of these per task.

Overall percentage: each planned stage owns a slice of 0–99 proportional to its weight, a
stage-local percentage from whisperx's ``progress_callback`` is mapped into that slice, and
100 is reserved for completion. The overall figure never goes backwards, also across a
re-run after an interruption. The weights start as guesses and are learned from the stage
durations of completed tasks (``learn_weights``), so bar pace and ETA fit the hardware the
service actually runs on (diarization dominates on CPU, transcription on GPU).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from common.schemas import (
    ErrorEvent,
    ProgressEvent,
    TaskError,
    TaskParams,
    TaskProgressStage,
    TaskSnapshot,
    TaskStatus,
    TaskType,
)

STAGE_WEIGHTS: dict[TaskProgressStage, float] = {
    TaskProgressStage.transcribing: 0.55,
    TaskProgressStage.aligning: 0.15,
    TaskProgressStage.diarizing: 0.30,
}
IN_PROGRESS_CEILING = 99.0
MIN_STEP = 0.1  # smaller moves of the overall figure emit no event
MIN_STAGE_FRACTION_FOR_ETA = 0.05  # a stage's own pace is trusted once it is 5% done

Event = ProgressEvent | ErrorEvent
MAX_FILLED_SEQS = 100
"""The longest gap ``events_after`` fills; a watcher further behind has lost more than a
restart's worth of events and reads the snapshot again."""


Weights = dict[TaskProgressStage, float]


def stage_ranges(
    stages: Sequence[TaskProgressStage], weights: Weights = STAGE_WEIGHTS
) -> dict[TaskProgressStage, tuple[float, float]]:
    """Slice of the overall 0–99 range that each planned stage covers."""
    total = sum(weights[s] for s in stages) or 1.0
    ranges: dict[TaskProgressStage, tuple[float, float]] = {}
    start = 0.0
    for stage in stages:
        end = start + IN_PROGRESS_CEILING * weights[stage] / total
        ranges[stage] = (start, end)
        start = end
    return ranges


def learn_weights(
    weights: Weights, durations: dict[TaskProgressStage, float], alpha: float = 0.5
) -> Weights:
    """Move the weights of the stages a task ran towards their share of its time.

    Only the relative weights of the stages in ``durations`` change; their sum is kept, so
    stages the task skipped keep their standing against the others.
    """
    total = sum(durations.values())
    if total <= 0:
        return dict(weights)
    mass = sum(weights[s] for s in durations)
    learned = dict(weights)
    for stage, seconds in durations.items():
        learned[stage] = max((1 - alpha) * weights[stage] + alpha * mass * seconds / total, 1e-3)
    return learned


@dataclass
class TaskProgressState:
    task_id: str
    status: TaskStatus = TaskStatus.queued
    stage: TaskProgressStage = TaskProgressStage.queued
    percentage: float = 0.0
    seq: int = 0
    message: str = ""
    eta_seconds: float | None = None
    error: TaskError | None = None
    stages: list[TaskProgressStage] = field(default_factory=list)
    weights: Weights = field(default_factory=lambda: dict(STAGE_WEIGHTS))
    max_events: int = 2000
    clock: Callable[[], float] = time.monotonic
    events: deque[Event] = field(init=False)
    started_at: float | None = None
    finished_at: float | None = None
    entered_at: dict[TaskProgressStage, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.events = deque(maxlen=self.max_events)

    # -------------------------------------------------------------- transitions

    def start(
        self, stages: Sequence[TaskProgressStage], attempt: int = 1, weights: Weights | None = None
    ) -> Event | None:
        if self.status.terminal:
            return None
        self.stages = list(stages)
        if weights is not None:
            self.weights = dict(weights)
        self.status = TaskStatus.processing
        self.started_at = self.clock()
        self.entered_at = {}
        first = self.stages[0] if self.stages else TaskProgressStage.complete
        message = first.value.capitalize()
        if attempt > 1:
            message = f"{message} (restarted after an interruption, attempt {attempt})"
        return self._enter(first, message)

    def enter_stage(self, stage: TaskProgressStage, message: str = "") -> Event | None:
        if self.status is not TaskStatus.processing or stage not in self.stages:
            return None
        if self.stages.index(stage) < self._stage_index():
            return None  # a stage never goes back
        if stage == self.stage:
            return None
        return self._enter(stage, message)

    def report(
        self, stage: TaskProgressStage, local_percentage: float, message: str = ""
    ) -> Event | None:
        """A stage-local percentage (0–100) from inside a model deployment."""
        if self.status is not TaskStatus.processing or stage != self.stage:
            return None
        if stage not in self.stages:  # no plan (a row rebuilt without one): nothing to map
            return None
        lo, hi = stage_ranges(self.stages, self.weights)[stage]
        local = max(0.0, min(100.0, local_percentage))
        if not self._advance(round(lo + (hi - lo) * local / 100.0, 1), MIN_STEP):
            return None
        self._update_eta()
        return self._emit_progress(message or self.message)

    def note(self, message: str) -> Event | None:
        """An event with a new message and the same stage and percentage (never backwards)."""
        if self.status is not TaskStatus.processing or not message:
            return None
        return self._emit_progress(message)

    def finish(self, status: TaskStatus, error: TaskError | None = None) -> Event | None:
        if self.status.terminal:
            return None
        self.status = status
        self.finished_at = self.clock()
        self.eta_seconds = None
        if status is TaskStatus.completed:
            self.stage = TaskProgressStage.complete
            self._advance(100.0)
            return self._emit_progress("Completed")
        if status is TaskStatus.failed:
            self.error = error or TaskError(error_code="internal", user_message="The task failed.")
            self.message = self.error.user_message
            self.seq += 1
            event = ErrorEvent.of(self.error, task_id=self.task_id, seq=self.seq)
            self.events.append(event)
            return event
        self.message = "Cancelled"
        return self._emit_progress(self.message)

    # -------------------------------------------------------------- reading

    def stage_durations(self) -> dict[TaskProgressStage, float]:
        """Seconds spent in each stage of a finished run (empty if it did not complete)."""
        if self.status is not TaskStatus.completed or self.finished_at is None:
            return {}
        order = [s for s in self.stages if s in self.entered_at]
        if not order or order[0] != self.stages[0]:
            return {}  # rebuilt mid-run (a tracker restart): this incarnation saw only a part
        ends = [self.entered_at[s] for s in order[1:]] + [self.finished_at]
        return {s: max(end - self.entered_at[s], 0.0) for s, end in zip(order, ends, strict=True)}

    def events_after(self, seq: int) -> list[Event]:
        """Logged events after ``seq``. A short gap before the first of them (this log was
        rebuilt after a tracker restart, and the events between the watcher's cursor and
        the rebuilt state died with the old log) is filled with that first event's state
        under the missing seqs, so a watcher never sees a seq skipped."""
        events = [e for e in self.events if e.seq > seq]
        if not events or events[0].seq == seq + 1 or events[0].seq - seq > MAX_FILLED_SEQS:
            return events
        first = events[0]
        if not isinstance(first, ProgressEvent) or first.status.terminal:
            return events
        filled = [first.model_copy(update={"seq": n}) for n in range(seq + 1, first.seq)]
        return [*filled, *events]

    def replay_current(self) -> None:
        """Log the current (rebuilt) state as the event under the current seq: a watcher one
        behind it gets that event instead of waiting for the next change."""
        if self.status is TaskStatus.processing and self.seq > 0 and not self.events:
            self.seq -= 1
            self._emit_progress(self.message)

    def snapshot(self) -> TaskSnapshot:
        return TaskSnapshot(
            task_id=self.task_id,
            seq=self.seq,
            status=self.status,
            stage=self.stage,
            percentage=self.percentage,
            message=self.message,
            eta_seconds=self.eta_seconds,
            error=self.error,
        )

    # -------------------------------------------------------------- internals

    def _stage_index(self) -> int:
        return self.stages.index(self.stage) if self.stage in self.stages else -1

    def _advance(self, percentage: float, min_step: float = 0.0) -> bool:
        """The progress rule, in one place: the overall percentage never goes backwards
        (also across a re-run after an interruption, or a state rebuilt from its row).

        Moves to ``percentage`` when that is at least ``min_step`` ahead; True if it moved.
        The database mirror keeps the same order under concurrent writers with its own
        guard in SQL (``repository.update_progress``); the API and clients only read.
        """
        if percentage < self.percentage + min_step:
            return False
        self.percentage = percentage
        return True

    def _enter(self, stage: TaskProgressStage, message: str) -> Event:
        self.stage = stage
        self.entered_at[stage] = self.clock()
        if stage in self.stages:
            lo, _ = stage_ranges(self.stages, self.weights)[stage]
            self._advance(round(lo, 1))
        self._update_eta()
        return self._emit_progress(message or stage.value.capitalize())

    def _update_eta(self) -> None:
        """Seconds to completion: the current stage's own pace for its remainder, and the
        learned weights for the stages after it; the overall pace until a stage has one."""
        self.eta_seconds = None
        now = self.clock()
        ranges = stage_ranges(self.stages, self.weights) if self.stages else {}
        if self.stage in ranges and self.stage in self.entered_at:
            lo, hi = ranges[self.stage]
            done = (self.percentage - lo) / (hi - lo) if hi > lo else 0.0
            if done >= MIN_STAGE_FRACTION_FOR_ETA:
                stage_total = (now - self.entered_at[self.stage]) / done
                later = self.stages[self.stages.index(self.stage) + 1 :]
                ratio = sum(self.weights[s] for s in later) / self.weights[self.stage]
                self.eta_seconds = round(stage_total * (1 - done + ratio), 1)
                return
        if self.started_at is not None and self.percentage >= 1.0:
            elapsed = now - self.started_at
            self.eta_seconds = round(elapsed * (100.0 - self.percentage) / self.percentage, 1)

    def _emit_progress(self, message: str) -> ProgressEvent:
        self.message = message
        self.seq += 1
        event = ProgressEvent(
            task_id=self.task_id,
            seq=self.seq,
            status=self.status,
            stage=self.stage,
            percentage=self.percentage,
            message=message,
            eta_seconds=self.eta_seconds,
        )
        self.events.append(event)
        return event


def state_from_row(row: Any, weights: Weights | None = None) -> TaskProgressState:
    """Rebuild live state from a task row (after a tracker restart, or a task not yet seen).

    A running task gets its stage plan back from its parameters, so the in-stage reports of
    the run that goes on keep moving the bar (from where the row has it, never back)."""
    error = TaskError.model_validate(row.error) if row.error else None
    state = TaskProgressState(
        task_id=row.id,
        status=TaskStatus(row.status),
        stage=TaskProgressStage(row.progress_stage),
        percentage=float(row.progress_percentage or 0.0),
        seq=int(row.progress_seq or 0),
        message=row.progress_message or "",
        error=error,
    )
    if weights is not None:
        state.weights = dict(weights)
    if state.status is TaskStatus.processing:
        try:
            params = TaskParams.model_validate(row.params or {})
            state.stages = params.stages(TaskType(row.task_type))
        except (ValidationError, ValueError):  # a row this version cannot read: no plan
            state.stages = []
    if state.status.terminal:
        # Replay the terminal event to late subscribers, under the seq it was stored with.
        status, state.status = state.status, TaskStatus.processing
        state.seq = max(state.seq - 1, 0)
        state.finish(status, error)
    return state
