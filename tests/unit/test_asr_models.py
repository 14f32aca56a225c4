"""Whether a served ASR model is multilingual, told without loading it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.asr_models import is_multilingual, model_reference, served_multilingual
from common.config import AsrConfig
from tests.conftest import MODELS_DIR, REPO


def _folder(tmp_path: Path, name: str, tokens: int, kind: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    if kind == "json":
        (folder / "vocabulary.json").write_text(json.dumps([f"t{i}" for i in range(tokens)]))
    elif kind == "txt":
        (folder / "vocabulary.txt").write_text("".join(f"t{i}\n" for i in range(tokens)))
    else:
        vocab = {f"t{i}": i for i in range(50257)}
        added = [{"id": 50257 + i} for i in range(tokens - 50257)]
        (folder / "tokenizer.json").write_text(
            json.dumps({"model": {"vocab": vocab}, "added_tokens": added})
        )
    return folder


@pytest.mark.parametrize("kind", ["json", "txt", "tokenizer"])
def test_a_folder_answers_from_its_vocabulary(tmp_path: Path, kind: str) -> None:
    assert is_multilingual(str(_folder(tmp_path, "multi", 51865, kind))) is True
    assert is_multilingual(str(_folder(tmp_path, "english", 51864, kind))) is False
    assert is_multilingual("english", tmp_path) is False  # relative to models_dir


def test_hub_names_by_their_name() -> None:
    assert is_multilingual("large-v3") is True
    assert is_multilingual("Systran/faster-whisper-base") is True
    assert is_multilingual("tiny.en") is False
    assert is_multilingual("distil-large-v3") is False
    assert is_multilingual("someone/custom-model") is None


def test_the_bundle_and_the_fetched_base() -> None:
    if (MODELS_DIR / "asr" / "faster-whisper-tiny.en").is_dir():
        assert is_multilingual("asr/faster-whisper-tiny.en", MODELS_DIR) is False
    base = REPO / "models" / "whisper-base"
    if base.is_dir():
        assert is_multilingual(str(base)) is True


def test_served_models_by_request_name(tmp_path: Path) -> None:
    english = _folder(tmp_path, "tiny.en", 51864, "txt")
    multi = _folder(tmp_path, "base", 51865, "json")
    config = AsrConfig(model=str(english), models={"base": str(multi)})
    assert served_multilingual(config) is False  # the default model
    assert served_multilingual(config, "base") is True
    assert served_multilingual(config, "unknown") is None
    assert model_reference(config, "base") == str(multi)
    with pytest.raises(KeyError):
        model_reference(config, "unknown")
