"""What the ASR deployment can do, known to the ingress so a task it cannot run is refused
with 422 at the route instead of being queued and failing later.

Built by the builder from ``AsrConfig``: every model name a request may give, and whether
each is English-only (from the model folder's vocabulary where it is local, else from its
name: ``common.asr_models.is_multilingual``, as ``builder.default_language`` decides).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from pydantic import BaseModel

from common.asr_models import is_multilingual
from common.config import AsrConfig
from common.errors import InvalidRequestError
from common.schemas import AsrOptions

OPENAI_DEFAULT = "whisper-1"


class AsrCatalog(BaseModel):
    default: str
    english_only: dict[str, bool]
    """Model name → English-only."""
    fixed_language: str | None = None

    @classmethod
    def from_config(cls, config: AsrConfig, models_dir: Path | None = None) -> AsrCatalog:
        refs = {config.model: config.model, **config.models}
        return cls(
            default=config.model,
            english_only={name: _english_only(ref, models_dir) for name, ref in refs.items()},
            fixed_language=config.language,
        )

    @property
    def choices(self) -> list[str]:
        """The names a request may give as ``model`` besides the default (``asr.models``)."""
        return sorted(name for name in self.english_only if name != self.default)

    def check(self, options: AsrOptions) -> None:
        """Raise InvalidRequestError (422) for a model not served or a language it lacks."""
        name = options.model or self.default
        if name == OPENAI_DEFAULT:
            name = self.default
        if name not in self.english_only:
            served = ", ".join(repr(n) for n in self.english_only)
            raise InvalidRequestError(
                f"The model '{name[:100]}' is not served here. Available: {served}.",
                f"unknown ASR model {name[:100]!r}",
            )
        language = (options.language or self.fixed_language or "").lower() or None
        if self.english_only[name]:
            if language not in (None, "en"):
                raise InvalidRequestError(
                    f"The model '{name}' is English-only and cannot transcribe language "
                    f"'{language}'. Leave the language unset or use 'en'.",
                    f"English-only model, requested language={language}",
                )
            if options.task == "translate":
                raise InvalidRequestError(
                    f"The model '{name}' is English-only and cannot translate. Use task "
                    "'transcribe' or a multilingual model.",
                    "English-only model, requested task=translate",
                )
        elif language is not None and language not in whisper_languages():
            raise InvalidRequestError(
                f"Language '{language}' is not supported by the model '{name}'.",
                f"unknown language code {language}",
            )


def _english_only(ref: str, models_dir: Path | None) -> bool:
    multilingual = is_multilingual(ref, models_dir)
    if multilingual is None:  # cannot tell: only a ``*.en`` name is taken as English-only
        return ref.rstrip("/").lower().endswith(".en")
    return not multilingual


@cache
def whisper_languages() -> frozenset[str]:
    """The language codes multilingual Whisper models know."""
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return frozenset(_LANGUAGE_CODES)
