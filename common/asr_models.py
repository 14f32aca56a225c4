"""What a configured ASR model is, without loading it: its folder, and whether it is
multilingual.

For code that must decide before a model is loaded (the ingress refusing a language or
``task=translate`` a served model cannot do), and for the ASR engine's own path lookup.
No heavy imports: a local CTranslate2 folder is read from its vocabulary file.
"""

from __future__ import annotations

import json
from pathlib import Path

from common.config import AsrConfig

MULTILINGUAL_VOCABULARY = 51865
"""Whisper's rule (``openai/whisper`` ``ModelDimensions``): a vocabulary of at least this
many tokens has the language tokens, i.e. the model is multilingual (tiny.en: 51,864;
base, large-v2: 51,865; large-v3: 51,866)."""

_ENGLISH_ONLY_HUB = ("distil-",)  # distil-whisper checkpoints are English-only
_MULTILINGUAL_HUB = {
    "tiny", "base", "small", "medium", "large", "large-v1", "large-v2", "large-v3",
    "large-v3-turbo", "turbo",
}  # fmt: skip


def resolve_model_path(name: str, models_dir: Path | None) -> str:
    """A local folder (relative names tried under ``models_dir`` first) or the name as given."""
    if models_dir is not None and not Path(name).is_absolute() and (models_dir / name).exists():
        return str((models_dir / name).resolve())
    return str(Path(name).resolve()) if Path(name).exists() else name


def model_reference(config: AsrConfig, model: str | None = None) -> str:
    """What a request's ``model`` (unset = the default) loads: ``asr.models``' value for a
    name there, else the name itself. Raises KeyError for a model this config does not serve."""
    name = model or config.model
    if name == config.model:
        return config.models.get(name, name)
    if name in config.models:
        return config.models[name]
    raise KeyError(name)


def is_multilingual(reference: str, models_dir: Path | None = None) -> bool | None:
    """Whether the Whisper model ``reference`` (a folder or a hub name) is multilingual.

    A local CTranslate2 folder answers from its vocabulary size; a hub name from its name
    (``*.en`` and ``distil-*`` are English-only, the OpenAI sizes multilingual). None when
    it cannot tell (an unknown hub name, a folder without a vocabulary file).
    """
    folder = Path(resolve_model_path(reference, models_dir))
    if folder.is_dir():
        size = _vocabulary_size(folder)
        return None if size is None else size >= MULTILINGUAL_VOCABULARY
    name = reference.rsplit("/", 1)[-1].lower().removeprefix("faster-whisper-")
    if name.endswith(".en") or name.startswith(_ENGLISH_ONLY_HUB):
        return False
    return True if name in _MULTILINGUAL_HUB else None


def served_multilingual(
    config: AsrConfig, model: str | None = None, models_dir: Path | None = None
) -> bool | None:
    """``is_multilingual`` for a model name as a request gives it (unset = the default).

    None for a model the config does not serve, or one it cannot tell about. A config with
    a fixed ``language`` still serves what the model can do; the engine decides per request.
    """
    try:
        return is_multilingual(model_reference(config, model), models_dir)
    except KeyError:
        return None


def _vocabulary_size(folder: Path) -> int | None:
    if (folder / "vocabulary.json").is_file():
        return len(json.loads((folder / "vocabulary.json").read_text(encoding="utf-8")))
    if (folder / "vocabulary.txt").is_file():
        with (folder / "vocabulary.txt").open(encoding="utf-8") as f:
            return sum(1 for _ in f)
    if (folder / "tokenizer.json").is_file():  # the base vocabulary plus added tokens
        data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        return len(data["model"]["vocab"]) + len(data.get("added_tokens", []))
    return None
