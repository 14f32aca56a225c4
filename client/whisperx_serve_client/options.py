"""Task options: the server's query parameters, checked by name before anything is sent.

Names follow the service (and whisperx). Values are checked by the server, which answers
422 with a message naming the bad field; names are checked here so a typo fails at once
with a :class:`TypeError` instead of being silently ignored.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Mapping
from typing import Literal, TypedDict

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pydantic depends on typing_extensions, so it is always there
    from typing_extensions import Unpack

__all__ = ["OPTION_NAMES", "TranscribeOptions", "Unpack", "query_params"]


class TranscribeOptions(TypedDict, total=False):
    """Every option of a speech-to-text task; unset ones use the server's defaults."""

    # ASR
    model: str
    language: str
    task: Literal["transcribe", "translate"]
    batch_size: int
    compute_type: str
    beam_size: int
    best_of: int
    patience: float
    length_penalty: float
    temperatures: list[float]
    compression_ratio_threshold: float
    log_prob_threshold: float
    no_speech_threshold: float
    condition_on_previous_text: bool
    initial_prompt: str
    hotwords: str
    suppress_numerals: bool
    vad_onset: float
    vad_offset: float
    chunk_size: int
    # alignment
    align: bool
    align_model: str
    interpolate_method: Literal["nearest", "linear", "ignore"]
    return_char_alignments: bool
    # diarization
    diarize: bool
    num_speakers: int
    min_speakers: int
    max_speakers: int
    # delivery
    callback_url: str


OPTION_NAMES: frozenset[str] = frozenset(TranscribeOptions.__annotations__)


def query_params(options: Mapping[str, object]) -> list[tuple[str, str]]:
    """Options as query parameters; ``None`` means unset, lists repeat the parameter.

    Raises TypeError for a name the service does not know (suggesting the closest one).
    """
    unknown = sorted(set(options) - OPTION_NAMES)
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, OPTION_NAMES, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TypeError(f"unknown transcription option(s): {', '.join(hints)}")
    params: list[tuple[str, str]] = []
    for name, value in options.items():
        if value is None:
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        params.extend((name, _text(v)) for v in values)
    return params


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
