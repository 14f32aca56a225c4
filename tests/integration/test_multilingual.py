"""The language paths with a real multilingual model (Whisper base) on real non-English
speech (espeak-ng), through the deployed graph.

Whisper base is the optional model of the offline setup (``make models``, run by ``make
test``; scripts/fetch_models.py). The integration app serves it as ``model=base`` next to
tiny.en, loaded on first use. Espeak's German and Spanish are recognised well by base, its
French less so (base detects French, but its transcript of espeak French is poor), so the
text checks use German and Spanish. These tests run once, on the SQLite app: nothing here
depends on the database.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from common.asr_models import served_multilingual
from common.config import AsrConfig
from tests.conftest import normalise
from tests.integration.conftest import BASE_MODEL, Service
from tests.speech import espeak
from tests.streams import submit
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

SPEECH = {
    "de": (
        "de",
        "Guten Morgen. Heute ist das Wetter in Berlin sehr schön, und wir gehen in den Park.",
    ),
    "es": ("es", "Buenos días. Mañana vamos a la playa con nuestros amigos de Madrid."),
    "fr": ("fr-fr", "Bonjour, je m'appelle Marie et j'habite à Paris depuis dix ans."),
    "en": ("en-us", "The meeting starts at 8.30 and about 12% of the staff will attend."),
}  # fmt: skip


@pytest.fixture(scope="module")
def ml_service(database_url: str, request: pytest.FixtureRequest) -> Service:
    if not BASE_MODEL.is_dir():
        pytest.skip(f"{BASE_MODEL} missing: run `make models` (scripts/fetch_models.py)")
    if not database_url.startswith("sqlite"):  # checked before the app is asked for
        pytest.skip("the language paths do not depend on the database: run on SQLite only")
    service: Service = request.getfixturevalue("service")
    return service


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("languages")
    return {
        lang: espeak(text, folder / f"{lang}.wav", voice=voice, rate=130 if lang == "fr" else 150)
        for lang, (voice, text) in SPEECH.items()
    }


GERMAN_WORDS = {"guten", "morgen", "heute", "ist", "das", "und", "wir", "gehen", "den"}


def english_from_german(text: str) -> bool:
    """Base's translation of the German clip varies in wording ("Good morning, today …",
    "In the morning, today …"), but it is English and keeps the morning and Berlin."""
    words = set(normalise(text).split())
    return {"morning", "berlin"} <= words and not words & GERMAN_WORDS


def run_task(service: Service, path: Path, **params: Any) -> dict[str, Any]:
    task_id = submit(service.base_url, path, model="base", diarize="false", **params)
    url = f"{service.base_url}/task/{task_id}"
    wait_until(
        lambda: httpx.get(url, timeout=10).json()["status"] in ("completed", "failed"),
        timeout=180,
        what=f"task {task_id}",
    )
    task = httpx.get(url, timeout=10).json()
    assert task["status"] == "completed", task["error"]
    return dict(task["result"])


def test_the_served_models_say_whether_they_are_multilingual(ml_service: Service) -> None:
    config = AsrConfig.model_validate(ml_service.app_args["asr"])
    models_dir = Path(str(ml_service.app_args["models_dir"]))
    assert served_multilingual(config, None, models_dir) is False  # tiny.en, the default
    assert served_multilingual(config, "base", models_dir) is True


@pytest.mark.parametrize("language", ["de", "es", "fr"])
def test_language_is_detected(ml_service: Service, clips: dict[str, Path], language: str) -> None:
    result = run_task(ml_service, clips[language], align="false")
    print(language, result["language"], result["segments"][0]["text"])
    assert result["language"] == language


def test_german_gets_whisper_word_times_and_says_so(
    ml_service: Service, clips: dict[str, Path]
) -> None:
    """No wav2vec2 aligner serves German here: Whisper's word times, and the result says so."""
    result = run_task(ml_service, clips["de"])
    text = normalise(" ".join(s["text"] for s in result["segments"]))
    assert "guten morgen" in text and "berlin" in text
    assert result["word_timestamps"] == "whisper" and result["alignment_model"] is None
    assert [w["code"] for w in result["warnings"]] == ["no_aligner"]
    assert "'de'" in result["warnings"][0]["message"]
    words = [w for s in result["segments"] for w in s["words"]]
    assert len(words) >= 10 and all(w["end"] - w["start"] > 0 for w in words)


def test_english_on_the_same_model_gets_the_english_aligner(
    ml_service: Service, clips: dict[str, Path]
) -> None:
    result = run_task(ml_service, clips["en"])
    assert result["language"] == "en"
    assert result["word_timestamps"] == "wav2vec2"
    alignment: Any = ml_service.app_args["alignment"]
    assert result["alignment_model"] == alignment["models"]["en"]
    assert not [w for w in result["warnings"] if w["code"] == "no_aligner"]


def test_translate_gives_english(ml_service: Service, clips: dict[str, Path]) -> None:
    result = run_task(ml_service, clips["de"], task="translate", align="false")
    text = normalise(" ".join(s["text"] for s in result["segments"]))
    print("translated:", text)
    assert english_from_german(text)
    assert result["language"] == "de"  # the spoken language, as whisperx reports it


@pytest.fixture(scope="module")
def client(ml_service: Service) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=f"{ml_service.base_url}/v1", api_key="unused", timeout=300, max_retries=0
    ) as c:
        yield c


def test_openai_translation_route(client: openai.OpenAI, clips: dict[str, Path]) -> None:
    with clips["de"].open("rb") as f:
        result = client.audio.translations.create(model="base", file=f)
    assert english_from_german(result.text), result.text
    with clips["es"].open("rb") as f:
        verbose = client.audio.translations.create(
            model="base", file=f, response_format="verbose_json"
        )
    assert verbose.language == "english" and verbose.text.strip()  # the output, as OpenAI
    assert "buenos" not in normalise(verbose.text)


def test_openai_transcription_detects_the_language(
    client: openai.OpenAI, clips: dict[str, Path]
) -> None:
    with clips["es"].open("rb") as f:
        result = client.audio.transcriptions.create(
            model="base", file=f, response_format="verbose_json"
        )
    assert result.language == "spanish"
    assert "buenos días" in normalise(result.text)
