"""storage.repository on a temp-file SQLite database created through migrate()."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import true

from common.schemas import (
    AsrOptions,
    Segment,
    TaskError,
    TaskParams,
    TaskProgressStage,
    TaskStatus,
    TaskType,
    Timings,
    Transcript,
    Word,
)
from storage import Database, TaskRow, lifecycle, migrate
from storage import repository as repo

pytestmark = pytest.mark.unit

PARAMS = TaskParams(asr=AsrOptions(language="en", beam_size=3), diarize=False, num_speakers=2)
TRANSCRIPT = Transcript(
    language="en",
    segments=[Segment(start=0.0, end=1.5, text=" hi there", words=[Word(word="hi", start=0.1)])],
    word_timestamps="wav2vec2",
    alignment_model="WAV2VEC2_ASR_BASE_960H",
)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'nested' / 'tasks.db'}"
    migrate(url)
    return url


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()


def _new(db: Database, task_id: str, **kw: object) -> None:
    repo.create_task(
        db,
        task_id=task_id,
        task_type=TaskType.speech_to_text,
        params=PARAMS,
        file_name=f"{task_id}.wav",
        audio_key=f"{task_id}.wav",
        **kw,  # type: ignore[arg-type]
    )


def test_create_get_and_to_public_round_trip(db: Database) -> None:
    row = repo.create_task(
        db,
        task_id="a" * 32,
        task_type=TaskType.speech_to_text,
        params=PARAMS,
        file_name="talk.mp3",
        audio_key="talk.mp3",
        audio_duration=12.5,
    )
    assert row.status == "queued" and row.progress_stage == "queued" and row.attempts == 0
    got = repo.get_task(db, task_id="a" * 32)
    assert got is not None and got.progress_percentage == 0.0 and got.progress_seq == 0
    public = got.to_public()
    assert public.identifier == "a" * 32 and public.params == PARAMS
    assert public.status is TaskStatus.queued and public.task_type is TaskType.speech_to_text
    assert public.result is None and public.error is None and public.timings == Timings()
    assert public.audio_duration == 12.5 and public.file_name == "talk.mp3"
    assert repo.get_task(db, task_id="missing") is None

    timings = Timings(queued=0.5, transcribing=3.0, total=4.0)
    assert lifecycle.finish(
        db, status=TaskStatus.completed, task_id="a" * 32, result=TRANSCRIPT, timings=timings, seq=9
    )
    done = repo.get_task(db, task_id="a" * 32)
    assert done is not None
    public = done.to_public()
    assert public.result == TRANSCRIPT and public.timings == timings
    assert public.progress_percentage == 100.0
    assert public.progress_stage is TaskProgressStage.complete


def test_datetimes_are_tz_aware_utc(db: Database) -> None:
    _new(db, "t1")
    row = repo.get_task(db, task_id="t1")
    assert row is not None
    assert row.created_at.tzinfo is not None and row.created_at.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - row.created_at) < timedelta(seconds=30)
    plus2 = timezone(timedelta(hours=2))
    now = datetime(2030, 5, 1, 12, 0, 0, 123456, tzinfo=plus2)
    (claimed,) = lifecycle.claim(db, worker_id="w", limit=1, lease_seconds=60, now=now)
    for value in (claimed.started_at, claimed.lease_expires_at):
        assert value is not None and value.tzinfo is not None
    assert claimed.started_at == now and claimed.started_at.utcoffset() == timedelta(0)
    assert claimed.lease_expires_at == now + timedelta(seconds=60)
    with pytest.raises(Exception, match="naive"):
        lifecycle.claim(db, worker_id="w", limit=1, lease_seconds=1, now=datetime(2030, 1, 1))


def test_list_tasks_newest_first_with_filter_and_paging(db: Database) -> None:
    for i in range(5):
        _new(db, f"t{i}")
    assert _ids(repo.list_tasks(db)) == (["t4", "t3", "t2", "t1", "t0"], 5)
    assert _ids(repo.list_tasks(db, limit=2, offset=1)) == (["t3", "t2"], 5)
    assert _ids(repo.list_tasks(db, limit=2, newest_first=False)) == (["t0", "t1"], 5)
    lifecycle.claim(db, worker_id="w", limit=2, lease_seconds=30)
    processing = repo.TaskFilter(status=TaskStatus.processing)
    queued = repo.TaskFilter(status=TaskStatus.queued)
    assert _ids(repo.list_tasks(db, filters=processing)) == (["t1", "t0"], 2)
    assert _ids(repo.list_tasks(db, filters=queued, limit=1)) == (["t4"], 3)


def _ids(page: tuple[list[TaskRow], int]) -> tuple[list[str], int]:
    return [r.id for r in page[0]], page[1]


def test_list_filters_by_type_and_creation_time(db: Database) -> None:
    base = datetime(2030, 1, 1, tzinfo=UTC)
    for i, kind in enumerate([TaskType.speech_to_text, TaskType.diarize, TaskType.diarize]):
        repo.create_task(
            db,
            task_id=f"k{i}",
            task_type=kind,
            params=TaskParams(),
            file_name=None,
            audio_key=None,
        )
        repo.update_where(db, f"k{i}", true(), created_at=base + timedelta(hours=i))
    diarize = repo.TaskFilter(task_type=TaskType.diarize)
    assert _ids(repo.list_tasks(db, filters=diarize)) == (["k2", "k1"], 2)
    window = repo.TaskFilter(
        created_after=base + timedelta(minutes=30), created_before=base + timedelta(hours=2)
    )
    assert _ids(repo.list_tasks(db, filters=window)) == (["k1"], 1)


def test_queue_position_and_delete(db: Database) -> None:
    for i in range(4):
        _new(db, f"q{i}")
    assert [repo.queue_position(db, task_id=f"q{i}") for i in range(4)] == [1, 2, 3, 4]
    lifecycle.claim(db, worker_id="w", limit=1, lease_seconds=30)
    assert [repo.queue_position(db, task_id=f"q{i}") for i in range(4)] == [None, 1, 2, 3]
    deleted = repo.delete_task(db, task_id="q2")
    assert deleted is not None and deleted.id == "q2"
    assert repo.get_task(db, task_id="q2") is None and repo.delete_task(db, task_id="q2") is None
    assert repo.queue_position(db, task_id="q3") == 2


def test_update_progress_many_applies_the_same_rules_row_by_row(db: Database) -> None:
    for task_id in ("a", "b", "c"):
        _new(db, task_id)
    tr, al = TaskProgressStage.transcribing, TaskProgressStage.aligning
    assert repo.update_progress(db, task_id="b", stage=tr, percentage=30, seq=5)
    repo.update_progress_many(
        db,
        [
            repo.ProgressMirror("a", al, 40.0, 3, "aligning"),
            repo.ProgressMirror("b", tr, 20.0, 4),  # older than the row: ignored
            repo.ProgressMirror("c", tr, 10.0, 2, "x"),
            repo.ProgressMirror("nope", tr, 10.0, 2),
        ],
    )
    rows = {t: repo.get_task(db, task_id=t) for t in ("a", "b", "c")}
    got = {
        t: (r.progress_stage, r.progress_percentage, r.progress_seq, r.progress_message)
        for t, r in rows.items()
        if r is not None
    }
    assert got == {
        "a": ("aligning", 40, 3, "aligning"),
        "b": ("transcribing", 30, 5, None),
        "c": ("transcribing", 10, 2, "x"),
    }
    repo.update_progress_many(db, [])  # nothing to write: no transaction needed


def test_update_progress_is_monotonic(db: Database) -> None:
    _new(db, "t")
    tr, al = TaskProgressStage.transcribing, TaskProgressStage.aligning
    assert repo.update_progress(db, task_id="t", stage=tr, percentage=10, seq=2, message="m")
    assert not repo.update_progress(db, task_id="t", stage=tr, percentage=20, seq=1)  # old seq
    assert not repo.update_progress(db, task_id="t", stage=tr, percentage=5, seq=3)  # lower %
    assert repo.update_progress(db, task_id="t", stage=al, percentage=40, seq=4)
    assert repo.update_progress(db, task_id="t", stage=al, percentage=40, seq=4)  # idempotent
    assert not repo.update_progress(db, task_id="nope", stage=al, percentage=50, seq=5)
    row = repo.get_task(db, task_id="t")
    assert row is not None
    assert (row.progress_stage, row.progress_percentage, row.progress_seq) == ("aligning", 40, 4)

    error = TaskError(
        error_code="invalid_audio", user_message="Bad file", technical_detail="ffmpeg 1"
    )
    assert lifecycle.finish(db, status=TaskStatus.failed, task_id="t", error=error, seq=5)
    assert not repo.update_progress(db, task_id="t", stage=al, percentage=90, seq=6)
    row = repo.get_task(db, task_id="t")
    assert row is not None and row.status == "failed" and row.progress_percentage == 40


def test_concurrent_progress_writers_keep_the_highest(db_url: str) -> None:
    dbs = [Database(db_url) for _ in range(4)]
    _new(dbs[0], "t")
    stage = TaskProgressStage.transcribing

    def write(k: int) -> None:
        for seq in range(k, 60, 4):
            repo.update_progress(dbs[k], task_id="t", stage=stage, percentage=seq, seq=seq)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    row = repo.get_task(dbs[0], task_id="t")
    assert row is not None and (row.progress_seq, row.progress_percentage) == (59, 59)
    for d in dbs:
        d.dispose()


def test_complete_and_fail_only_from_non_terminal(db: Database) -> None:
    _new(db, "ok")
    _new(db, "bad")
    stage = TaskProgressStage.diarizing
    lifecycle.claim(db, worker_id="w", limit=2, lease_seconds=30)
    repo.update_progress(db, task_id="bad", stage=stage, percentage=70, seq=7)
    error = TaskError(
        error_code="model_unavailable", user_message="Try later", technical_detail="oom"
    )
    assert lifecycle.finish(
        db, status=TaskStatus.failed, task_id="bad", error=error, timings=Timings(total=1.0), seq=8
    )
    assert not lifecycle.finish(db, status=TaskStatus.failed, task_id="bad", error=error)
    assert not lifecycle.finish(
        db, status=TaskStatus.completed, task_id="bad", result=TRANSCRIPT, timings=Timings(), seq=9
    )
    bad = repo.get_task(db, task_id="bad")
    assert bad is not None and bad.status == "failed" and bad.completed_at is not None
    assert (bad.progress_stage, bad.progress_percentage, bad.progress_seq) == ("diarizing", 70, 8)
    assert bad.claimed_by is None and bad.lease_expires_at is None
    assert bad.to_public().error == error and bad.to_public().timings.total == 1.0

    assert lifecycle.finish(
        db, status=TaskStatus.completed, task_id="ok", result=TRANSCRIPT, timings=Timings(), seq=3
    )
    assert not lifecycle.finish(db, status=TaskStatus.failed, task_id="ok", error=error)
    ok = repo.get_task(db, task_id="ok")
    assert ok is not None and ok.status == "completed" and ok.claimed_by is None
    assert ok.progress_seq == 3 and ok.error is None


def test_claim_oldest_first_and_sets_lease(db: Database) -> None:
    for i in range(3):
        _new(db, f"t{i}")
    now = datetime.now(UTC)
    rows = lifecycle.claim(db, worker_id="w1", limit=2, lease_seconds=30, now=now)
    assert [r.id for r in rows] == ["t0", "t1"]
    for r in rows:
        assert r.status == "processing" and r.claimed_by == "w1" and r.attempts == 1
        assert r.started_at == now and r.lease_expires_at == now + timedelta(seconds=30)
    assert [r.id for r in lifecycle.claim(db, worker_id="w2", limit=5, lease_seconds=30)] == ["t2"]
    assert lifecycle.claim(db, worker_id="w2", limit=5, lease_seconds=30) == []
    assert lifecycle.claim(db, worker_id="w2", limit=0, lease_seconds=30) == []


def test_expired_lease_is_reclaimed_with_attempts_incremented(db: Database) -> None:
    _new(db, "t")
    t0 = datetime(2031, 1, 1, tzinfo=UTC)
    (first,) = lifecycle.claim(db, worker_id="dead", limit=1, lease_seconds=10, now=t0)
    later = t0 + timedelta(seconds=5)
    assert lifecycle.claim(db, worker_id="w2", limit=1, lease_seconds=10, now=later) == []
    expired = t0 + timedelta(seconds=11)
    (again,) = lifecycle.claim(db, worker_id="w2", limit=1, lease_seconds=10, now=expired)
    assert again.attempts == 2 and again.claimed_by == "w2" and again.started_at == t0
    assert again.lease_expires_at == expired + timedelta(seconds=10)
    # The dead worker lost it: it can neither renew nor release it any more.
    assert lifecycle.renew(db, worker_id="dead", task_ids=["t"], lease_seconds=10) == set()
    assert not lifecycle.release(db, task_id="t", worker_id="dead")
    assert first.attempts == 1


def test_renew_only_own_leases_and_release(db: Database) -> None:
    for i in range(3):
        _new(db, f"t{i}")
    t0 = datetime.now(UTC)
    lifecycle.claim(db, worker_id="a", limit=2, lease_seconds=5, now=t0)
    lifecycle.claim(db, worker_id="b", limit=1, lease_seconds=5, now=t0)
    renewed = lifecycle.renew(
        db, worker_id="a", task_ids=["t0", "t1", "t2", "t0", "zz"], lease_seconds=600
    )
    assert renewed == {"t0", "t1"}
    rows = {r.id: r for r in repo.list_tasks(db)[0]}
    assert rows["t0"].lease_expires_at is not None and rows["t2"].lease_expires_at is not None
    assert rows["t0"].lease_expires_at > t0 + timedelta(seconds=500)
    assert rows["t2"].lease_expires_at == t0 + timedelta(seconds=5)
    assert lifecycle.renew(db, worker_id="a", task_ids=[], lease_seconds=1) == set()

    assert not lifecycle.release(db, task_id="t2", worker_id="a")
    assert lifecycle.release(db, task_id="t0", worker_id="a")
    row = repo.get_task(db, task_id="t0")
    assert row is not None and row.status == "queued" and row.claimed_by is None
    assert row.lease_expires_at is None and row.attempts == 0  # a hand-back is no failed run
    (again,) = lifecycle.claim(db, worker_id="c", limit=1, lease_seconds=5)
    assert again.id == "t0" and again.attempts == 1


def test_claim_race_each_task_claimed_exactly_once(db_url: str) -> None:
    setup = Database(db_url)
    for i in range(20):
        _new(setup, f"task-{i:02d}")
    barrier = threading.Barrier(4)
    claims: list[tuple[str, str]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        db = Database(db_url)  # own engine: as separate Ray worker processes would
        try:
            barrier.wait()
            while rows := lifecycle.claim(db, worker_id=name, limit=3, lease_seconds=60):
                with lock:
                    claims.extend((r.id, name) for r in rows)
        except BaseException as exc:
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=worker, args=(f"w{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    counts = Counter(task_id for task_id, _ in claims)
    assert len(counts) == 20 and set(counts.values()) == {1}
    for task_id, name in claims:
        row = repo.get_task(setup, task_id=task_id)
        assert row is not None and row.claimed_by == name and row.attempts == 1
    setup.dispose()


def test_set_audio_duration_and_count_by_status(db: Database) -> None:
    for i in range(4):
        _new(db, f"t{i}")
    repo.set_audio_duration(db, task_id="t0", duration=61.25)
    repo.set_audio_duration(db, task_id="missing", duration=1.0)
    row = repo.get_task(db, task_id="t0")
    assert row is not None and row.audio_duration == 61.25
    lifecycle.claim(db, worker_id="w", limit=3, lease_seconds=30)
    lifecycle.finish(
        db, status=TaskStatus.completed, task_id="t0", result=TRANSCRIPT, timings=Timings(), seq=1
    )
    lifecycle.finish(
        db,
        status=TaskStatus.failed,
        task_id="t1",
        error=TaskError(error_code="x", user_message="y"),
    )
    assert repo.count_by_status(db) == {
        TaskStatus.queued: 1,
        TaskStatus.processing: 1,
        TaskStatus.completed: 1,
        TaskStatus.failed: 1,
        TaskStatus.cancelled: 0,
    }


def test_database_session_ping_and_url(db: Database, tmp_path: Path) -> None:
    db.ping()
    with pytest.raises(RuntimeError), db.session():
        _new(db, "inner")  # committed in its own session
        raise RuntimeError("boom")
    assert repo.get_task(db, task_id="inner") is not None
    pg = Database("postgresql+psycopg://user:s3cret@127.0.0.1:1/x")
    assert "s3cret" not in pg.url and "s3cret" not in repr(pg) and "***" in pg.url
    pg.dispose()
    broken = Database(f"sqlite:///{tmp_path}")  # a directory, not a database file
    with pytest.raises(Exception):  # noqa: B017 - any driver error
        broken.ping()
    broken.dispose()


def test_in_memory_database(tmp_path: Path) -> None:
    db = Database("sqlite://")
    migrate(db)
    _new(db, "m")
    assert _ids(repo.list_tasks(db)) == (["m"], 1)
    db.dispose()


def test_graceful_release_gives_the_attempt_back(db: Database) -> None:
    _new(db, "g")
    (claimed,) = lifecycle.claim(db, worker_id="a", limit=1, lease_seconds=60)
    assert claimed.attempts == 1
    assert lifecycle.release(db, task_id="g", worker_id="a")
    row = repo.get_task(db, task_id="g")
    assert row is not None and (row.status, row.attempts, row.claimed_by) == ("queued", 0, None)
    (again,) = lifecycle.claim(db, worker_id="b", limit=1, lease_seconds=60)
    assert again.attempts == 1


def test_queue_stats_counts_queued_tasks_and_the_oldest(db: Database) -> None:
    assert repo.queue_stats(db) == (0, None)
    _new(db, "q1")
    _new(db, "q2")
    _new(db, "q3")
    lifecycle.claim(db, worker_id="w", limit=1, lease_seconds=30)  # one leaves the queue
    depth, oldest = repo.queue_stats(db)
    assert depth == 2 and oldest is not None and oldest.tzinfo is not None
    assert timedelta(0) <= datetime.now(UTC) - oldest < timedelta(minutes=1)
