"""The sync ``Client`` against the server's real app over real HTTP and WebSocket."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import parse_qsl

import httpx
import pytest
from whisperx_serve_client import (
    APIError,
    Client,
    ErrorEvent,
    ProgressEvent,
    TaskCancelled,
    TaskFailed,
    TaskNotFound,
    TaskStatus,
    Transcript,
    TransportError,
)

from common.schemas import TaskStatus as ServerTaskStatus
from storage import repository
from tests.client.harness import CANNED, DroppingProxy, Live
from tests.ports import free_port
from tests.waiting import wait_until

ALL_STAGES = ["transcribing", "aligning", "diarizing", "complete"]


def _server_status(live: Live, task_id: str) -> str | None:
    row = repository.get_task(live.services.db, task_id=task_id)
    return row.status if row is not None else None


def test_submit_then_wait_returns_the_servers_transcript(client: Client, jfk_path: Path) -> None:
    handle = client.submit(jfk_path, min_speakers=1, max_speakers=2)
    transcript = handle.wait(timeout=30)
    assert isinstance(transcript, Transcript)
    # The mirror holds every field the server sent, with the same values.
    assert transcript.model_dump(mode="json") == CANNED.model_dump(mode="json")
    assert transcript.text == CANNED.text and transcript.task_id == handle.id
    info = handle.info()
    assert info.status is TaskStatus.completed and info.params["max_speakers"] == 2
    assert info.file_name == "jfk.flac" and info.audio_duration == pytest.approx(11.0, abs=0.1)


def test_transcribe_bytes_in_one_call(client: Client, jfk_bytes: bytes) -> None:
    assert client.transcribe(jfk_bytes, diarize=False).speakers == CANNED.speakers


def test_events_arrive_in_order_once_each_and_end_with_the_terminal_one(
    client: Client, jfk_path: Path
) -> None:
    events = list(client.submit(jfk_path).events())
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(events) + 1))
    assert all(isinstance(e, ProgressEvent) for e in events)
    stages = [e.stage for e in events if isinstance(e, ProgressEvent)]
    assert [s for i, s in enumerate(stages) if s not in stages[:i]] == ALL_STAGES
    percentages = [e.percentage for e in events if isinstance(e, ProgressEvent)]
    assert percentages == sorted(percentages) and percentages[-1] == 100
    assert events[-1].status is TaskStatus.completed and events[-1].terminal
    assert sum(e.terminal for e in events) == 1


def test_events_resume_by_seq_after_the_connection_drops(live: Live, jfk_path: Path) -> None:
    live.runner.hold.clear()  # the task stops after transcribing until released
    port = int(live.base_url.rsplit(":", 1)[1])
    with (
        DroppingProxy(port) as proxy,
        Client(f"http://127.0.0.1:{proxy.port}", backoff=0.02, retries=5) as client,
    ):
        handle = client.submit(jfk_path)
        stream = handle.events()
        before = []
        for event in stream:
            before.append(event)
            # transcribing's last report (overall ~54 %): then the runner holds
            if isinstance(event, ProgressEvent) and event.percentage >= 50:
                break
        assert not before[-1].terminal
        connections = proxy.connections
        proxy.drop_all()
        # Everything after the drop happens while the client is away.
        live.runner.hold.set()
        wait_until(lambda: _server_status(live, handle.id) == "completed", timeout=20)
        after = list(stream)
    seqs = [e.seq for e in before + after]
    assert seqs == list(range(1, len(seqs) + 1)), "gap or duplicate across the reconnect"
    assert after and after[-1].status is TaskStatus.completed
    assert proxy.connections > connections, "the stream did not reconnect"


def test_polling_takes_over_when_the_websocket_is_refused(
    live: Live, client: Client, jfk_path: Path
) -> None:
    live.faults.refuse_websocket = True
    handle = client.submit(jfk_path)
    events = list(handle.events())
    assert live.faults.websocket_headers, "the client never tried the WebSocket"
    assert live.faults.requests("GET", f"/tasks/{handle.id}/progress")
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)) and events[-1].status is TaskStatus.completed
    assert handle.wait(timeout=10).text == CANNED.text


def test_websocket_closed_normally_mid_task_is_reopened(
    live: Live, client: Client, jfk_path: Path
) -> None:
    live.faults.websocket_closes = [1001, 1001]  # "going away", as a replica shutting down
    live.runner.hold.clear()  # the task cannot end while the client reconnects
    handle = client.submit(jfk_path)
    events = []
    for event in handle.events():
        events.append(event)
        if isinstance(event, ProgressEvent) and event.percentage >= 50:
            live.runner.hold.set()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].status is TaskStatus.completed
    assert len(live.faults.websocket_headers) == 3


def test_websocket_failing_repeatedly_falls_back_to_polling(live: Live, jfk_path: Path) -> None:
    live.faults.websocket_closes = [1012] * 10  # "service restart", again and again
    with Client(live.base_url, retries=2, backoff=0.01, poll_interval=0.05) as client:
        handle = client.submit(jfk_path)
        assert handle.wait(timeout=20).text == CANNED.text
    assert len(live.faults.websocket_headers) == 3  # the first try and 2 retries
    assert live.faults.requests("GET", f"/tasks/{handle.id}/progress")


def test_polling_takes_over_when_the_tracker_is_down(
    live: Live, client: Client, jfk_path: Path
) -> None:
    handle = client.submit(jfk_path)
    live.tracker.down = True  # WS closes with 1011; polling reads the database instead
    assert handle.wait(timeout=20).text == CANNED.text
    assert live.faults.requests("GET", f"/tasks/{handle.id}/progress")


def test_unknown_task_is_task_not_found_everywhere(client: Client) -> None:
    handle = client.task("no-such-task")
    with pytest.raises(TaskNotFound):
        list(handle.events())  # WebSocket close code 4404
    for call in (handle.status, handle.info, handle.result, lambda: handle.result("srt")):
        with pytest.raises(TaskNotFound) as caught:
            call()
        assert caught.value.status_code == 404 and caught.value.error_code == "task_not_found"


def test_failed_task_raises_task_failed_with_the_servers_error(
    client: Client, jfk_bytes: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "will-fail.flac"
    path.write_bytes(jfk_bytes)
    handle = client.submit(path)
    with pytest.raises(TaskFailed) as caught:
        handle.wait(timeout=20)
    err = caught.value
    assert (err.error_code, err.user_message) == ("processing_failed", "Transcription failed.")
    assert "fake runner" in err.technical_detail and err.task_id == handle.id
    last = list(handle.events())[-1]
    assert isinstance(last, ErrorEvent) and last.error_code == "processing_failed"
    with pytest.raises(TaskFailed):
        handle.result("srt")  # 409 from the server, explained by the task's error


@pytest.mark.parametrize("fmt", ["srt", "vtt", "txt", "tsv"])
def test_result_formats_are_the_servers_text(
    live: Live, client: Client, jfk_path: Path, tmp_path: Path, fmt: str
) -> None:
    handle = client.submit(jfk_path)
    transcript = handle.wait(timeout=20)
    expected = httpx.get(
        f"{live.base_url}/task/{handle.id}/result", params={"format": fmt}, timeout=30
    ).text
    assert expected.strip()
    assert handle.result(fmt) == expected  # type: ignore[call-overload]
    assert handle.save(tmp_path / f"a.{fmt}").read_text(encoding="utf-8") == expected
    # A transcript that came from a task fetches the server's rendering too.
    assert transcript.save(tmp_path / f"b.{fmt}").read_text(encoding="utf-8") == expected


def test_json_result_and_save(client: Client, jfk_path: Path, tmp_path: Path) -> None:
    handle = client.submit(jfk_path)
    handle.wait(timeout=20)
    assert handle.result() == handle.result("json")
    saved = json.loads(handle.save(tmp_path / "out" / "t.json").read_text(encoding="utf-8"))
    assert saved == CANNED.model_dump(mode="json")


def test_cancel_a_running_task(live: Live, client: Client, jfk_path: Path) -> None:
    live.runner.hold.clear()
    handle = client.submit(jfk_path)
    wait_until(
        lambda: (
            handle.status().progress_stage == "transcribing"
            and handle.status().progress_percentage >= 50
        ),
        timeout=20,
    )
    progress = handle.cancel()
    assert progress.identifier == handle.id
    assert progress.status in (TaskStatus.processing, TaskStatus.cancelled)
    live.runner.hold.set()  # the runner reaches its next safe point and stops
    with pytest.raises(TaskCancelled):
        handle.wait(timeout=20)
    assert handle.status().status is TaskStatus.cancelled
    assert list(handle.events())[-1].status is TaskStatus.cancelled


def test_list_tasks(client: Client, jfk_path: Path, jfk_bytes: bytes) -> None:
    done = client.submit(jfk_path)
    done.wait(timeout=20)
    newer = client.submit(jfk_bytes, diarize=False)
    newer.wait(timeout=20)
    listed = client.list_tasks(limit=10)
    assert [t.identifier for t in listed] == [newer.id, done.id]  # newest first
    assert [t.identifier for t in client.list_tasks(limit=1, offset=1)] == [done.id]
    assert all(t.status is TaskStatus.completed for t in client.list_tasks(status="completed"))
    assert client.list_tasks(status=TaskStatus.failed) == []


def test_delete(live: Live, client: Client, jfk_path: Path) -> None:
    handle = client.submit(jfk_path)
    handle.wait(timeout=20)
    handle.delete()
    assert _server_status(live, handle.id) is None
    with pytest.raises(TaskNotFound):
        handle.info()


def test_every_option_reaches_the_server(live: Live, client: Client, jfk_path: Path) -> None:
    handle = client.submit(
        jfk_path,
        model="tiny.en",
        language="en",
        task="transcribe",
        batch_size=2,
        compute_type="int8",
        beam_size=3,
        best_of=2,
        patience=1.5,
        length_penalty=0.9,
        temperatures=[0.0, 0.4],
        compression_ratio_threshold=2.2,
        log_prob_threshold=-0.8,
        no_speech_threshold=0.5,
        condition_on_previous_text=False,
        initial_prompt="Kennedy",
        hotwords="Berlin",
        suppress_numerals=True,
        vad_onset=0.4,
        vad_offset=0.3,
        chunk_size=20,
        align=True,
        align_model="custom",
        interpolate_method="linear",
        return_char_alignments=True,
        diarize=True,
        num_speakers=2,
        min_speakers=1,
        max_speakers=3,
        callback_url="https://example.org/hook",
    )
    params = handle.info().params
    asr = params["asr"]
    assert (asr["model"], asr["compute_type"], asr["temperatures"]) == (
        "tiny.en",
        "int8",
        [0.0, 0.4],
    )
    assert asr["condition_on_previous_text"] is False and asr["suppress_numerals"] is True
    assert (asr["vad_onset"], asr["chunk_size"], asr["hotwords"]) == (0.4, 20, "Berlin")
    assert params["alignment"] == {
        "align_model": "custom",
        "interpolate_method": "linear",
        "return_char_alignments": True,
    }
    assert (params["num_speakers"], params["min_speakers"], params["max_speakers"]) == (2, 1, 3)
    assert params["callback_url"] == "https://example.org/hook"


def test_unknown_option_is_a_type_error_before_anything_is_sent(
    live: Live, client: Client, jfk_path: Path
) -> None:
    with pytest.raises(TypeError, match=r"'min_speaker' \(did you mean 'min_speakers'\?\)"):
        client.transcribe(jfk_path, min_speaker=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        client.transcribe_many([jfk_path], progress=False, beam=2)  # type: ignore[call-arg]
    assert live.faults.log == []


def test_invalid_option_value_is_the_servers_422(client: Client, jfk_path: Path) -> None:
    with pytest.raises(APIError) as caught:
        client.submit(jfk_path, min_speakers=3, max_speakers=2)
    assert caught.value.status_code == 422 and caught.value.error_code == "invalid_request"
    assert "min_speakers" in caught.value.user_message


def test_url_source_posts_the_url_form_field_with_the_options(
    live: Live, client: Client, jfk_path: Path
) -> None:
    # The server refuses to fetch local addresses (SSRF), so the URL route's answer is
    # canned here: it points at a task uploaded normally.
    queued = client.submit(jfk_path)
    live.faults.reply(
        "POST",
        "/speech-to-text-url",
        200,
        {"identifier": queued.id, "status": "queued", "message": "Task queued"},
    )
    transcript = client.transcribe("https://media.example.org/talk.mp3", language="en", align=False)
    assert transcript.text == CANNED.text
    (seen,) = live.faults.requests("POST", "/speech-to-text-url")
    assert dict(parse_qsl(seen.body.decode())) == {"url": "https://media.example.org/talk.mp3"}
    assert dict(parse_qsl(seen.query)) == {"language": "en", "align": "false"}


def test_api_key_is_sent_as_bearer_token(live: Live, jfk_path: Path) -> None:
    with Client(live.base_url, api_key="s3cret", backoff=0.02) as client:
        client.transcribe(jfk_path)
    assert live.faults.log and all(
        s.headers.get("authorization") == "Bearer s3cret" for s in live.faults.log
    )
    assert live.faults.websocket_headers[0].get("authorization") == "Bearer s3cret"
    assert "s3cret" not in repr(client.config)


# ---------------------------------------------------------------- retries


def _unavailable(code: int) -> dict[str, str]:
    return {"error_code": "unavailable", "user_message": f"Answer {code} (test)."}


def test_reads_are_retried_on_503_twice(live: Live, client: Client, jfk_path: Path) -> None:
    handle = client.submit(jfk_path)
    live.faults.reply("GET", r"/task/[0-9a-f]+", 503, _unavailable(503), times=2)
    assert handle.info().identifier == handle.id
    assert len(live.faults.requests("GET", f"/task/{handle.id}")) == 3


def test_submission_is_retried_on_503_without_duplicates(
    live: Live, client: Client, jfk_path: Path
) -> None:
    live.faults.reply("POST", "/speech-to-text", 503, _unavailable(503), times=2)
    handle = client.submit(jfk_path)
    assert len(live.faults.requests("POST", "/speech-to-text")) == 3
    rows, total = repository.list_tasks(live.services.db)
    assert total == 1 and rows[0].id == handle.id


@pytest.mark.parametrize("code", [502, 504])
def test_submission_is_not_retried_on_gateway_errors(
    live: Live, client: Client, jfk_path: Path, code: int
) -> None:
    # The upload reached something: the task may exist, so a retry could run it twice.
    live.faults.reply("POST", "/speech-to-text", code, _unavailable(code))
    with pytest.raises(APIError) as caught:
        client.submit(jfk_path)
    assert caught.value.status_code == code
    assert len(live.faults.requests("POST", "/speech-to-text")) == 1


def test_retries_are_bounded(live: Live, jfk_path: Path) -> None:
    with Client(live.base_url, retries=2, backoff=0.01) as client:
        live.faults.reply("GET", "/task/x", 503, _unavailable(503), times=5)
        with pytest.raises(APIError) as caught:
            client.task("x").info()
    assert caught.value.status_code == 503 and caught.value.user_message == "Answer 503 (test)."
    assert len(live.faults.requests("GET", "/task/x")) == 3


def test_unreachable_server_is_a_transport_error(jfk_path: Path) -> None:
    with (
        Client(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01) as client,
        pytest.raises(TransportError) as caught,
    ):
        client.submit(jfk_path)
    assert caught.value.error_code == "connection_failed" and "ConnectError" in str(caught.value)


def test_server_task_status_values_match_the_client_enum() -> None:
    assert [s.value for s in ServerTaskStatus] == [s.value for s in TaskStatus]
