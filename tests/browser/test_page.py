"""The web page at ``/`` in headless Chromium, against the real service and models.

Everything goes through the page as a person would use it: the file picker, the options,
the progress cards, the transcript, the player and the download buttons. What the page
received (stages, seqs, WebSocket URLs) is read from ``window.wxs``, the page's own state.
Waits poll the page (Playwright's auto-waiting ``expect`` and ``wait_for_function``).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from playwright.sync_api import expect

from tests.audio import sample_wav, tiled_wav
from tests.browser.conftest import PHONE, SECOND_MODEL, open_page
from tests.conftest import normalise
from tests.serving import Service, run_cli
from tests.waiting import wait_until

PHRASE = "ask not what your country can do for you"
STAGES = ["uploading", "queued", "transcribing", "aligning", "diarizing", "complete"]
TASK_TIMEOUT_MS = 240_000

VIEW_STATE = """i => { const v = wxs.views[i]; return {
  taskId: v.taskId, status: v.status, stages: v.stages, history: v.history, seqs: v.seqs,
  lastSeq: v.lastSeq, etas: v.etas, wsUrls: v.wsUrls, reconnects: v.reconnects,
  transport: v.transport, terminal: v.terminal } }"""


def upload(page: Any, path: Path) -> int:
    """Pick ``path`` in the page's file picker; returns the index of its progress view."""
    before = page.evaluate("() => wxs.views.length")
    page.set_input_files("#files", str(path))
    page.wait_for_function("n => wxs.views.length > n", arg=before)
    return int(before)


def view(page: Any, i: int) -> dict[str, Any]:
    return dict(page.evaluate(VIEW_STATE, i))


def finished(page: Any, i: int, timeout: float = TASK_TIMEOUT_MS) -> dict[str, Any]:
    page.wait_for_function("i => wxs.views[i].terminal", arg=i, timeout=timeout)
    return view(page, i)


def card(page: Any, i: int) -> Any:
    return page.locator(f'#cards .card[data-view="{i}"]')


def poll(page: Any, probe: Callable[[], Any], *, timeout_ms: int = 30_000, what: str) -> Any:
    """Poll a Python-side condition while letting the page's events through."""
    waited = 0
    while waited <= timeout_ms:
        if value := probe():
            return value
        page.wait_for_timeout(100)  # yields to Playwright's event dispatch, unlike time.sleep
        waited += 100
    raise AssertionError(f"timed out waiting for {what}")


def in_order(stages: list[str]) -> bool:
    ranks = [STAGES.index(s) for s in stages]
    return ranks == sorted(set(ranks))


def gapless(seqs: list[int]) -> bool:
    return bool(seqs) and seqs == list(range(1, len(seqs) + 1))


def download(page: Any, fmt: str) -> tuple[str, str]:
    with page.expect_download() as info:
        page.click(f'.downloads button[data-format="{fmt}"]')
    got = info.value
    return got.suggested_filename, Path(got.path()).read_text(encoding="utf-8")


def test_jfk_upload_live_progress_transcript_player_and_download(
    page: Any, service: Service, jfk_path: Path
) -> None:
    media: list[tuple[int, str | None, str | None]] = []

    def seen(r: Any) -> None:
        if "/audio" in r.url:
            media.append((r.status, r.request.headers.get("range"), r.headers.get("content-range")))

    page.on("response", seen)
    i = upload(page, jfk_path)
    v = finished(page, i)
    assert v["status"] == "completed", v

    # the bar: the browser's upload to 100, then the task's stages in order up to 100
    assert v["stages"][0] == "uploading" and v["stages"][-1] == "complete", v["stages"]
    assert "transcribing" in v["stages"] and in_order(v["stages"]), v["stages"]
    uploading = [p for stage, p in v["history"] if stage == "uploading"]
    task = [p for stage, p in v["history"] if stage != "uploading"]
    assert uploading[-1] == 100 and uploading == sorted(uploading)
    assert task == sorted(task) and task[-1] == 100, task
    assert len(set(task)) >= 4, f"the bar did not move inside stages: {v['history']}"
    assert v["etas"] and all(e.startswith("about ") for e in v["etas"]), v["etas"]
    done = card(page, i)
    expect(done.locator(".badge")).to_have_text("completed")
    expect(done.locator(".pct")).to_have_text("100 %")
    expect(done.locator(".stage")).to_have_text("Complete")
    assert done.locator("progress").evaluate("e => e.value") == 100
    # one WebSocket, every event once, in seq order
    assert gapless(v["seqs"]) and v["wsUrls"] == [
        f"{service.ws_url}/ws/tasks/{v['taskId']}?after_seq=0"
    ], v

    # the transcript opens by itself, with the phrase
    expect(page.locator("#viewer")).to_be_visible()
    expect(page.locator("#transcript .w").first).to_be_visible()
    assert PHRASE in normalise(page.inner_text("#transcript"))

    # the player has the stored upload; a click on a word seeks there and highlights it
    page.wait_for_function("() => document.querySelector('#player').readyState >= 1")
    assert abs(page.evaluate("() => document.querySelector('#player').duration") - 11.0) < 0.2
    word = page.locator("#transcript .w", has_text="country").first
    start = float(word.get_attribute("data-start"))
    assert start > 1.0 and page.evaluate("() => document.querySelector('#player').currentTime") == 0
    word.click()
    page.wait_for_function(
        "t => Math.abs(document.querySelector('#player').currentTime - t) < 0.01", arg=start
    )
    expect(word).to_have_class("w now")
    # the player drives the highlight too: set its time and the word there lights up
    first = page.locator("#transcript .w").first
    at = float(first.get_attribute("data-start")) + 0.02
    page.evaluate("t => { document.querySelector('#player').currentTime = t; }", at)
    expect(first).to_have_class("w now")
    expect(word).to_have_class("w")
    # keyboard: each paragraph's time is a button that plays from there
    last = page.locator("#transcript .seg").last
    last.locator(".time").focus()
    page.keyboard.press("Enter")
    para = float(last.locator(".w").first.get_attribute("data-start"))
    page.wait_for_function(
        "t => Math.abs(document.querySelector('#player').currentTime - t) < 0.01", arg=para
    )
    # the browser streamed the audio with range requests, answered 206
    poll(page, lambda: any(s == 206 and cr for s, _, cr in media), what="a 206 for the audio")
    assert all(s in (200, 206) for s, _, _ in media), media

    # srt download: whisperx's writer, speaker labels, the words
    name, srt = download(page, "srt")
    assert name == "jfk.srt"
    assert srt.startswith("1\n00:00:0") and " --> " in srt and "[SPEAKER_00]: " in srt
    assert PHRASE in normalise(srt)

    # the task list (GET /task/all) shows it, also under the "completed" filter
    row = page.locator(f'#list-body tr[data-task="{v["taskId"]}"]')
    expect(row).to_have_attribute("data-status", "completed")
    page.select_option("#list-status", "failed")
    expect(row).to_have_count(0)
    page.select_option("#list-status", "completed")
    expect(row).to_have_count(1)


def test_errors_show_the_user_message_and_the_detail_behind_a_disclosure(
    page: Any, service: Service, jfk_path: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "notes.txt"
    bad.write_text("these are meeting notes, not audio\n" * 40)
    expected = httpx.post(
        f"{service.base_url}/speech-to-text", files={"file": (bad.name, bad.read_bytes())}
    ).json()
    assert expected["error_code"] == "invalid_audio"

    i = upload(page, bad)
    rejected = card(page, i)
    expect(rejected.locator(".badge")).to_have_text("rejected")
    expect(rejected.locator(".user-message")).to_have_text(expected["user_message"])
    technical = rejected.locator(".technical")
    expect(technical).to_be_hidden()  # behind the disclosure until opened
    rejected.locator("summary").click()
    expect(technical).to_be_visible()
    expect(technical).to_have_text(f"invalid_audio: {expected['technical_detail']}")

    # French asked of the English-only model: refused at the route (before any task exists)
    french = httpx.post(
        f"{service.base_url}/speech-to-text",
        params={"language": "fr"},
        files={"file": (jfk_path.name, jfk_path.read_bytes())},
    )
    assert french.status_code == 422, french.text
    page.select_option("#opt-language", "fr")
    j = upload(page, jfk_path)
    refused = card(page, j)
    expect(refused.locator(".badge")).to_have_text("rejected")
    expect(refused.locator(".user-message")).to_have_text(french.json()["user_message"])
    expect(refused.locator(".technical")).to_be_hidden()
    expect(refused.locator(".technical")).to_have_text(
        f"{french.json()['error_code']}: {french.json()['technical_detail']}"
    )


def test_a_dropped_websocket_resumes_without_a_gap_and_cancel_stops_the_task(
    page: Any, service: Service, tmp_path: Path
) -> None:
    # 2 minutes of two speakers: long enough to drop the socket, see it resume and cancel
    # mid-task (the 30 s sample alone can finish between the resume and the click)
    i = upload(page, tiled_wav(sample_wav(), tmp_path / "two-speakers.wav", 4))
    page.wait_for_function(
        "i => { const v = wxs.views[i]; return v.seqs.length >= 2 && v.ws?.readyState === 1 }",
        arg=i,
        timeout=TASK_TIMEOUT_MS,
    )
    dropped = page.evaluate(  # close the socket as a network drop would, mid-task
        "i => { const v = wxs.views[i]; if (v.terminal) return null; v.ws.close(); "
        "return v.lastSeq }",
        i,
    )
    assert dropped is not None, "the task ended before the socket could be dropped"
    page.wait_for_function(
        "([i, seq]) => wxs.views[i].lastSeq > seq", arg=[i, dropped], timeout=TASK_TIMEOUT_MS
    )
    v = view(page, i)
    assert v["wsUrls"][1].endswith(f"?after_seq={dropped}") and v["reconnects"] >= 1, v
    assert v["status"] == "processing", "the task ended before it could be cancelled"

    card(page, i).locator("button.cancel").click()
    v = finished(page, i)
    assert v["status"] == "cancelled", v
    assert gapless(v["seqs"]), f"seqs after the resume: {v['seqs']}"
    assert len(v["wsUrls"]) == 2 and v["transport"] == "websocket", v
    expect(card(page, i).locator(".badge")).to_have_text("cancelled")
    assert httpx.get(f"{service.base_url}/task/{v['taskId']}").json()["status"] == "cancelled"


def test_polling_takes_over_when_websockets_are_blocked_and_delete_removes_the_task(
    page: Any, service: Service, jfk_path: Path
) -> None:
    blocked: list[str] = []

    def refuse(ws: Any) -> None:
        blocked.append(ws.url)
        ws.close(code=1008, reason="blocked by a proxy")

    page.route_web_socket("**/ws/tasks/**", refuse)
    page.uncheck("#opt-diarize")
    page.select_option("#opt-model", SECOND_MODEL)  # offered: the service serves two names
    i = upload(page, jfk_path)
    v = finished(page, i)
    assert v["status"] == "completed" and v["transport"] == "polling", v
    params = httpx.get(f"{service.base_url}/task/{v['taskId']}").json()["params"]
    assert params["asr"]["model"] == SECOND_MODEL and params["diarize"] is False
    assert v["seqs"] == [] and len(blocked) == len(v["wsUrls"]) == 2, (v, blocked)
    assert v["stages"][-1] == "complete" and in_order(v["stages"]), v["stages"]
    expect(card(page, i).locator(".pct")).to_have_text("100 %")
    expect(page.locator("#transcript .w").first).to_be_visible()
    assert PHRASE in normalise(page.inner_text("#transcript"))
    assert page.locator("#transcript .who").count() == 0  # diarize off: no speaker labels

    delete = card(page, i).locator("button.delete")
    delete.click()
    expect(delete).to_have_text("Really delete?")
    delete.click()
    expect(card(page, i)).to_have_count(0)
    expect(page.locator("#viewer")).to_be_hidden()
    assert httpx.get(f"{service.base_url}/task/{v['taskId']}/audio").status_code == 404


def test_two_speakers_coloured_named_and_kept_with_the_task(
    page: Any, browser: Any, service: Service, tmp_path: Path
) -> None:
    i = upload(page, sample_wav())
    v = finished(page, i)
    assert v["status"] == "completed", v
    task_id = v["taskId"]
    names = page.locator("#speaker-list input")
    expect(names).to_have_count(2)
    colours = page.evaluate(
        """() => [...new Set([...document.querySelectorAll('#transcript .who')]
             .map(e => e.dataset.speaker + '=' + getComputedStyle(e).color))]"""
    )
    result = httpx.get(f"{service.base_url}/task/{task_id}").json()["result"]
    turns = [(w.get("speaker"), w["word"]) for s in result["segments"] for w in s["words"]]
    assert len(colours) == 2 and len({c.split("=")[1] for c in colours}) == 2, (colours, turns)

    for field, name in ((names.nth(0), "Alice"), (names.nth(1), "Bob")):
        field.fill(name)
        field.press("Enter")
        expect(page.locator("#speaker-status")).to_have_text("Saved with the task.")
    expect(page.locator('#transcript .who[data-speaker="SPEAKER_00"]').first).to_have_text("Alice")
    expect(page.locator('#transcript .who[data-speaker="SPEAKER_01"]').first).to_have_text("Bob")
    kept = httpx.get(f"{service.base_url}/task/{task_id}").json()["speaker_names"]
    assert kept == {"SPEAKER_00": "Alice", "SPEAKER_01": "Bob"}
    _, vtt = download(page, "vtt")  # whisperx's writer: one cue per segment, its main speaker
    named = {"SPEAKER_00": "Alice", "SPEAKER_01": "Bob"}
    assert vtt.startswith("WEBVTT") and "SPEAKER_0" not in vtt
    assert all(f"[{named[s['speaker']]}]: " in vtt for s in result["segments"]), vtt

    # a new page (another tab) opened on the task shows the names: kept with the task
    later = page.locator("#transcript .w").nth(12)
    later.click()
    shots = Path(os.environ.get("WHISPERX_SERVE_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(tmp_path / "desktop.png"))
    with open_page(browser, service.base_url, viewport=PHONE, path=f"/#task={task_id}") as phone:
        expect(phone.locator("#speaker-list input").nth(0)).to_have_value("Alice")
        expect(phone.locator('#transcript .who[data-speaker="SPEAKER_01"]').first).to_have_text(
            "Bob"
        )
        phone.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
        width = phone.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the page scrolls sideways on a phone: {width} px"
    if shots != tmp_path:
        for shot in ("desktop.png", "phone.png"):
            shutil.copy(tmp_path / shot, shots / shot)


def test_several_files_at_once_each_get_a_card_and_the_last_waits_its_turn(
    page: Any, jfk_path: Path
) -> None:
    page.uncheck("#opt-diarize")
    before = page.evaluate("() => wxs.views.length")
    page.set_input_files("#files", [str(jfk_path)] * 3)  # the runner takes two at a time
    page.wait_for_function("n => wxs.views.length === n + 3", arg=before)
    views = [finished(page, before + k) for k in range(3)]
    assert [v["status"] for v in views] == ["completed"] * 3, views
    assert len({v["taskId"] for v in views}) == 3
    positions = page.evaluate("() => wxs.views.map(v => v.queuePositions)")
    assert any(1 in p for p in positions), f"no card showed its queue position: {positions}"


KEY = "wxs_" + "k3y-" * 10 + "abc"  # the agreed format: wxs_ + 43 url-safe characters


def test_an_api_key_goes_in_headers_and_subprotocols_never_in_a_url(
    browser: Any, service: Service, jfk_path: Path
) -> None:
    assert len(KEY) == 47
    with open_page(browser, service.base_url, api_key=KEY) as page:
        requests: list[tuple[str, str | None]] = []
        page.on("request", lambda r: requests.append((r.url, r.all_headers().get("authorization"))))
        handshakes: list[dict[str, Any]] = []
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.on("Network.webSocketWillSendHandshakeRequest", lambda e: handshakes.append(e))
        page.reload()
        page.wait_for_function("() => window.wxs !== undefined")
        expect(page.locator("#key-state")).to_have_text("(set for this tab)")

        page.uncheck("#opt-diarize")
        i = upload(page, jfk_path)
        v = finished(page, i)
        assert v["status"] == "completed" and gapless(v["seqs"]), v
        # with a key the player gets the audio through fetch (headers), from a blob: URL
        page.wait_for_function("() => document.querySelector('#player').readyState >= 1")
        assert page.evaluate("() => document.querySelector('#player').src").startswith("blob:")
        _, txt = download(page, "txt")
        assert PHRASE in normalise(txt)

        api = [
            (url, auth)
            for url, auth in requests
            if url.startswith(service.base_url)
            and not url.startswith(f"{service.base_url}/static/")
            and url != f"{service.base_url}/"
        ]
        assert {"/speech-to-text", "/task/all", "/audio", "/result"} <= {
            p
            for p in ("/speech-to-text", "/task/all", "/audio", "/result")
            for u, _ in api
            if p in u
        }, api
        assert all(auth == f"Bearer {KEY}" for _, auth in api), api
        assert handshakes, "no WebSocket handshake seen"
        for shake in handshakes:
            headers = {k.lower(): val for k, val in shake["request"]["headers"].items()}
            assert headers["sec-websocket-protocol"] == f"whisperx-serve, bearer.{KEY}"
        urls = [u for u, _ in requests] + v["wsUrls"] + [page.url]
        assert not [u for u in urls if KEY in u], "the key appeared in a URL"
        stored = page.evaluate(
            "() => [sessionStorage.getItem('whisperx-serve.api-key'), "
            "localStorage.length, document.cookie]"
        )
        assert stored == [KEY, 0, ""]

        # a 401 asks for the key: here the service is made to refuse the one in use
        def refuse(route: Any) -> None:
            route.fulfill(
                status=401,
                json={"error_code": "unauthorized", "user_message": "Invalid API key."},
            )

        page.route("**/task/all**", refuse)
        page.click("#list-refresh")
        alert = page.locator("#auth-alert")
        expect(alert).to_be_visible()
        expect(alert).to_contain_text("The API key was refused (Invalid API key.)")
        expect(page.locator("#api-key")).to_be_focused()
        page.click("#key-forget")
        page.click("#list-refresh")
        expect(alert).to_contain_text("This service needs an API key")
        page.unroute("**/task/all**")
        page.fill("#api-key", KEY)
        page.press("#api-key", "Enter")
        expect(alert).to_be_hidden()
        expect(page.locator("#api-key")).to_have_value("")  # not left on screen
        assert page.evaluate("() => sessionStorage.getItem('whisperx-serve.api-key')") == KEY


def test_the_task_list_filters_by_status_and_pages(page: Any, service: Service) -> None:
    from datetime import UTC, datetime, timedelta

    from common.schemas import TaskParams
    from storage.db import Database
    from storage.models import TaskRow

    # finished tasks from long ago, written straight into the service's database
    db = Database(service.database_url)
    old = datetime(2026, 1, 1, tzinfo=UTC)
    with db.session() as session:
        for k in range(12):
            at = old + timedelta(minutes=k)
            session.add(
                TaskRow(
                    id=f"old{k:02}" + "0" * 27,
                    status="cancelled",
                    task_type="speech-to-text",
                    file_name=f"old-{k:02}.wav",
                    params=TaskParams().model_dump(mode="json"),
                    progress_percentage=0.0,
                    progress_stage="queued",
                    progress_seq=1,
                    timings={},
                    attempts=0,
                    created_at=at,
                    updated_at=at,
                    completed_at=at,
                )
            )
    db.dispose()
    total = httpx.get(f"{service.base_url}/task/all", params={"status": "cancelled"}).json()[
        "total"
    ]
    assert total >= 12

    rows = page.locator("#list-body tr[data-task]")
    page.select_option("#list-status", "cancelled")
    expect(page.locator("#list-range")).to_have_text(f"1–10 of {total}")
    expect(rows).to_have_count(10)
    assert set(rows.evaluate_all("rs => rs.map(r => r.dataset.status)")) == {"cancelled"}
    expect(page.locator("#list-prev")).to_be_disabled()
    page.click("#list-next")
    expect(page.locator("#list-range")).to_have_text(f"11–{total} of {total}")
    expect(rows).to_have_count(total - 10)
    expect(rows.last).to_contain_text("old-00.wav")  # newest first: the oldest comes last
    expect(page.locator("#list-next")).to_be_disabled()
    page.click("#list-prev")
    expect(page.locator("#list-range")).to_have_text(f"1–10 of {total}")

    # a listed task opens: a finished, not completed one shows as a card with its status
    page.click("#list-next")
    # the second page must be showing: clicking before it replaced the first opens another task
    expect(rows.last).to_contain_text("old-00.wav")
    rows.last.locator("button").click()
    opened = page.locator(f'#cards .card[data-task="old00{"0" * 27}"]')
    expect(opened.locator(".badge")).to_have_text("cancelled")

    # busy: a bare 429 (a proxy's, say) shows when to try again, and the list does by itself
    page.route(
        "**/task/all**",
        lambda route: route.fulfill(status=429, headers={"Retry-After": "1"}, body=""),
        times=1,
    )
    page.click("#list-refresh")
    expect(page.locator("#list-range")).to_have_text("The service is busy; try again in 1 s.")
    expect(page.locator("#list-range")).to_have_text(f"11–{total} of {total}")


# ------------------------------------------------------------------ keys on (runs last)


@pytest.fixture
def real_keys(service: Service) -> Iterator[dict[str, str]]:
    """alice's and bob's keys made with the real command; ``ingress.auth: auto`` turns auth
    on once one exists. The rows are deleted afterwards (the command only revokes), so auth
    is off again for whatever runs after this."""

    def task_all_status() -> int:
        return httpx.get(f"{service.base_url}/task/all", params={"limit": 1}).status_code

    made: dict[str, str] = {}
    try:
        for name in ("alice", "bob"):
            out = run_cli(service, "keys", "create", "--name", name)
            key = re.search(r"api key:\s+(wxs_\S{43})\n", out)
            assert key, out
            made[name] = key.group(1)
        wait_until(lambda: task_all_status() == 401, timeout=30, what="auth on")
        yield made
    finally:
        engine = sa.create_engine(service.database_url)
        with engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM api_keys"))
        engine.dispose()
        wait_until(lambda: task_all_status() == 200, timeout=30, what="auth off again")


def test_with_keys_on_the_page_asks_for_a_key_and_each_key_sees_only_its_own_tasks(
    browser: Any, service: Service, jfk_path: Path, real_keys: dict[str, str]
) -> None:
    alice, bob = real_keys["alice"], real_keys["bob"]
    urls: list[str] = []  # every URL either tab asked for, WebSockets included
    sent: list[tuple[str, str | None]] = []

    def watch(page: Any) -> None:
        def request(r: Any) -> None:
            urls.append(r.url)
            sent.append((r.url, r.all_headers().get("authorization")))

        page.on("request", request)
        page.on("websocket", lambda ws: urls.append(ws.url))

    with open_page(browser, service.base_url) as page:
        watch(page)
        # no key: the page loads (HTML and assets are open), the service's 401 asks for one
        alert = page.locator("#auth-alert")
        expect(alert).to_contain_text("This service needs an API key")
        expect(page.locator("#api-key")).to_be_focused()
        page.fill("#api-key", alice)
        page.press("#api-key", "Enter")
        expect(alert).to_be_hidden()
        expect(page.locator("#key-state")).to_have_text("(set for this tab)")
        stored = page.evaluate(
            "() => [sessionStorage.getItem('whisperx-serve.api-key'), localStorage.length, "
            "document.cookie]"
        )
        assert stored == [alice, 0, ""]
        expect(page.locator("#list-range")).to_have_text("0–0 of 0")  # owner-less ones hidden

        page.uncheck("#opt-diarize")
        i = upload(page, jfk_path)
        v = finished(page, i)
        # followed over the WebSocket: with auth on it opens only with the bearer subprotocol
        assert v["status"] == "completed" and v["transport"] == "websocket", v
        assert gapless(v["seqs"]) and len(v["wsUrls"]) == 1, v
        task_id = v["taskId"]
        expect(page.locator("#transcript .w").first).to_be_visible()
        assert PHRASE in normalise(page.inner_text("#transcript"))
        # the audio came through fetch with the header and plays from a blob: URL
        page.wait_for_function("() => document.querySelector('#player').readyState >= 1")
        assert page.evaluate("() => document.querySelector('#player').src").startswith("blob:")
        page.evaluate("() => document.querySelector('#player').play()")
        page.wait_for_function("() => document.querySelector('#player').currentTime > 0.2")
        page.evaluate("() => document.querySelector('#player').pause()")
        _, txt = download(page, "txt")
        assert PHRASE in normalise(txt)
        expect(page.locator(f'#list-body tr[data-task="{task_id}"]')).to_have_count(1)
        audio = [auth for url, auth in sent if url.endswith(f"/task/{task_id}/audio")]
        assert audio == [f"Bearer {alice}"], sent
        assert {auth for _, auth in sent if auth} == {f"Bearer {alice}"}, sent

    # bob, in a fresh context, enters his key: alice's task is neither listed nor opened
    with open_page(browser, service.base_url, path=f"/#task={task_id}") as other:
        watch(other)
        expect(other.locator("#auth-alert")).to_contain_text("This service needs an API key")
        other.fill("#api-key", bob)
        other.press("#api-key", "Enter")
        expect(other.locator("#list-range")).to_have_text("0–0 of 0")
        assert other.evaluate("() => sessionStorage.getItem('whisperx-serve.api-key')") == bob
        other.reload()  # the link opens the task again, now with bob's key
        refused = httpx.get(
            f"{service.base_url}/task/{task_id}", headers={"Authorization": f"Bearer {bob}"}
        )
        assert refused.status_code == 404 and refused.json()["error_code"] == "task_not_found"
        gone = other.locator(f'#cards .card[data-task="{task_id}"]')
        expect(gone.locator(".badge")).to_have_text("not found")
        expect(gone.locator(".user-message")).to_have_text(refused.json()["user_message"])
        expect(other.locator("#viewer")).to_be_hidden()
        expect(other.locator("#list-range")).to_have_text("0–0 of 0")
        expect(other.locator(f'#list-body tr[data-task="{task_id}"]')).to_have_count(0)

    assert urls and any("/ws/tasks/" in u for u in urls), urls
    leaked = [u for u in urls if alice[4:] in u or bob[4:] in u]  # also without wxs_
    assert not leaked, f"a key appeared in a URL: {leaked}"
