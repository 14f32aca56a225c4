"""The official ``openai`` client, unchanged, against the deployed graph (real Ray, real models).

Also the file download of a real diarized task (``GET /task/{id}/result``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import normalise
from tests.integration.conftest import Keys, Service
from tests.streams import submit
from tests.waiting import wait_until

PHRASE = "ask not what your country can do for you"
SRT_TIME = re.compile(r"^\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}$", re.M)
VTT_TIME = re.compile(r"^\d\d:\d\d\.\d{3} --> \d\d:\d\d\.\d{3}$", re.M)
LABEL = re.compile(r"^\[SPEAKER_\d+\]: ")


@pytest.fixture(scope="module")
def client(service: Service) -> Iterator[openai.OpenAI]:
    # No retries: a retried request would queue the task again and hide a failure.
    with openai.OpenAI(
        base_url=f"{service.base_url}/v1", api_key="unused", timeout=300, max_retries=0
    ) as c:
        yield c


def test_json_transcription(client: openai.OpenAI, jfk_path: Path) -> None:
    with jfk_path.open("rb") as f:
        result = client.audio.transcriptions.create(model="whisper-1", file=f)
    assert PHRASE in normalise(result.text)


def test_verbose_json_words_and_segments(client: openai.OpenAI, jfk_path: Path) -> None:
    with jfk_path.open("rb") as f:
        result = client.audio.transcriptions.create(
            model="whisper-1",
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert result.language == "english"
    assert result.duration == pytest.approx(11.0, abs=0.1)
    assert PHRASE in normalise(result.text)
    assert result.segments and result.words
    assert PHRASE in normalise(" ".join(s.text for s in result.segments))
    assert PHRASE in normalise(" ".join(w.word for w in result.words))
    starts = [w.start for w in result.words]
    # Times come from the random-init test aligner: only their shape is meaningful here.
    assert starts == sorted(starts) and starts[-1] > starts[0]
    assert all(0 <= w.start <= w.end <= result.duration + 0.5 for w in result.words)
    assert [s.id for s in result.segments] == list(range(len(result.segments)))
    assert all(s.start < s.end for s in result.segments)


def test_text_srt_vtt(client: openai.OpenAI, jfk_path: Path) -> None:
    with jfk_path.open("rb") as f:
        text = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="text")
    assert isinstance(text, str) and PHRASE in normalise(text) and "-->" not in text

    with jfk_path.open("rb") as f:
        srt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="srt")
    assert srt.startswith("1\n") and SRT_TIME.search(srt)
    assert PHRASE in normalise(" ".join(_cue_texts(srt)))

    with jfk_path.open("rb") as f:
        vtt = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="vtt")
    assert vtt.startswith("WEBVTT\n\n") and VTT_TIME.search(vtt)
    assert PHRASE in normalise(" ".join(_cue_texts(vtt.removeprefix("WEBVTT"))))


def test_translation_on_english_only_model_is_a_clear_bad_request(
    client: openai.OpenAI, jfk_path: Path
) -> None:
    """tiny.en cannot run Whisper's translate task. The service refuses rather than return a
    transcript labelled as a translation: for non-English audio that would be wrong."""
    with jfk_path.open("rb") as f, pytest.raises(openai.BadRequestError) as bad:
        client.audio.translations.create(model="whisper-1", file=f)
    assert bad.value.status_code == 400
    assert bad.value.code == "invalid_request"
    assert "English-only" in bad.value.message and "translate" in bad.value.message


def test_unknown_model_is_a_bad_request(client: openai.OpenAI, jfk_path: Path) -> None:
    with jfk_path.open("rb") as f, pytest.raises(openai.BadRequestError) as bad:
        client.audio.transcriptions.create(model="no-such-model", file=f)
    assert "no-such-model" in bad.value.message


def test_result_download_of_diarized_task(service: Service, jfk_path: Path) -> None:
    task_id = submit(service.base_url, jfk_path, min_speakers=1, max_speakers=2)
    early = httpx.get(f"{service.base_url}/task/{task_id}/result", timeout=10)
    if early.status_code != 200:  # still running: a clear 409, not an empty file
        assert early.status_code == 409 and early.json()["error_code"] == "task_not_finished"

    def completed() -> bool:
        r = httpx.get(f"{service.base_url}/task/{task_id}", timeout=10)
        status = r.json()["status"]
        assert status not in ("failed", "cancelled"), r.text
        return status == "completed"

    wait_until(completed, timeout=300, what="task completed")
    r = httpx.get(f"{service.base_url}/task/{task_id}/result", params={"format": "srt"}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-subrip; charset=utf-8"
    assert r.headers["content-disposition"] == 'attachment; filename="jfk.srt"'
    assert SRT_TIME.search(r.text) and "[SPEAKER_00]: " in r.text
    assert PHRASE in normalise(" ".join(_cue_texts(r.text)))


def _cue_texts(subtitles: str) -> list[str]:
    """Each cue's text lines (after the number and timing line), speaker labels removed."""
    texts = []
    for block in subtitles.strip().split("\n\n"):
        lines = block.splitlines()
        timing = next(i for i, line in enumerate(lines) if "-->" in line)
        texts.extend(LABEL.sub("", line) for line in lines[timing + 1 :])
    return texts


def test_the_sdks_api_key_is_the_services_bearer_key(
    service: Service, keys: Keys, jfk_path: Path
) -> None:
    """Last in this module: with keys created, auth is on. The official client's own
    ``api_key`` is all it takes; a wrong one is its ``AuthenticationError``."""
    url = f"{service.base_url}/v1"
    with (
        openai.OpenAI(base_url=url, api_key=keys.secrets["alice"], max_retries=0) as good,
        jfk_path.open("rb") as f,
    ):
        result = good.audio.transcriptions.create(model="whisper-1", file=f)
    assert PHRASE in normalise(result.text)
    with (
        openai.OpenAI(base_url=url, api_key="unused", max_retries=0) as bad,
        jfk_path.open("rb") as f,
        pytest.raises(openai.AuthenticationError) as refused,
    ):
        bad.audio.transcriptions.create(model="whisper-1", file=f)
    assert refused.value.status_code == 401 and refused.value.code == "unauthorized"
    # The task it ran is alice's: bob cannot see it, alice can.
    tasks = httpx.get(f"{service.base_url}/task/all", headers=keys.headers("alice"), timeout=10)
    assert tasks.json()["total"] >= 1
    assert (
        httpx.get(f"{service.base_url}/task/all", headers=keys.headers("bob"), timeout=10).json()[
            "total"
        ]
        == 0
    )
