"""A finished task's transcript as a downloadable file: json, srt, vtt, txt or tsv.

Subtitles and text files come from whisperx's own writers (``whisperx.utils``), so cue
splitting, word highlighting and ``[SPEAKER_00]: `` labels match the whisperx CLI exactly.
This module only turns our ``Transcript`` into the dict those writers read, and collects
their output in memory. JSON is our own ``Transcript`` schema, as ``GET /task/{id}`` has it.
"""

from __future__ import annotations

import io
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from whisperx.utils import ResultWriter, get_writer

from common.schemas import Segment, Transcript


class ResultFormat(StrEnum):
    json = "json"
    srt = "srt"
    vtt = "vtt"
    txt = "txt"
    tsv = "tsv"

    @property
    def media_type(self) -> str:
        return MEDIA_TYPES[self]

    @property
    def extension(self) -> str:
        return self.value


MEDIA_TYPES: dict[ResultFormat, str] = {
    ResultFormat.json: "application/json; charset=utf-8",
    ResultFormat.srt: "application/x-subrip; charset=utf-8",
    ResultFormat.vtt: "text/vtt; charset=utf-8",
    ResultFormat.txt: "text/plain; charset=utf-8",
    ResultFormat.tsv: "text/tab-separated-values; charset=utf-8",
}


class SubtitleOptions(BaseModel):
    """whisperx's subtitle options (its CLI flags of the same names); srt and vtt only."""

    model_config = ConfigDict(extra="forbid")

    highlight_words: bool = False
    """Underline each word as it is spoken (needs word timings)."""
    max_line_width: Annotated[int | None, Field(ge=1, le=1000)] = None
    """Characters per line before a line break; unset keeps whole segments."""
    max_line_count: Annotated[int | None, Field(ge=1, le=100)] = None
    """Lines per cue; takes effect together with ``max_line_width``."""


def render(transcript: Transcript, fmt: ResultFormat, options: SubtitleOptions) -> str:
    """The transcript in ``fmt``, as whisperx's writer for that format writes it."""
    writer: ResultWriter = get_writer(fmt.value, "")  # output_dir unused: we write in memory
    if fmt is ResultFormat.json:
        result: dict[str, Any] = transcript.model_dump(mode="json")
    else:
        result = writer_input(transcript)
    buffer = io.StringIO()
    writer.write_result(result, file=buffer, options=options.model_dump())
    return buffer.getvalue()


def with_speaker_names(transcript: Transcript, names: dict[str, str]) -> Transcript:
    """The transcript with each diarized label replaced by the name a person gave it.

    Labels without a name stay as they are; the stored result is never changed.
    """
    if not names:
        return transcript

    def name(label: str | None) -> str | None:
        return names.get(label, label) if label is not None else None

    return transcript.model_copy(
        update={
            "segments": [
                s.model_copy(
                    update={
                        "speaker": name(s.speaker),
                        "words": [
                            w.model_copy(update={"speaker": name(w.speaker)}) for w in s.words
                        ],
                    }
                )
                for s in transcript.segments
            ],
            "speakers": [names.get(label, label) for label in transcript.speakers],
            "speaker_turns": (
                [
                    t.model_copy(update={"speaker": names.get(t.speaker, t.speaker)})
                    for t in transcript.speaker_turns
                ]
                if transcript.speaker_turns is not None
                else None
            ),
        }
    )


def writer_input(transcript: Transcript) -> dict[str, Any]:
    """The ``result`` dict whisperx's writers expect, built from our transcript.

    The writers test keys for presence (``"speaker" in segment``, ``"start" in word``), so
    unknown values are left out rather than set to None. Word-level cues are used only when
    every segment has words; otherwise a segment without words would vanish from the
    subtitles, so all cues then follow segments. A diarize-only transcript (speaker turns,
    no segments) becomes one cue per turn whose text is the speaker label.
    """
    if transcript.segments:
        with_words = all(s.words for s in transcript.segments)
        segments = [_segment(s, with_words) for s in transcript.segments]
    else:
        segments = [
            {"start": _time(t.start), "end": _time(t.end), "text": _clean(t.speaker)}
            for t in transcript.speaker_turns or []
        ]
    return {"language": transcript.language or "", "segments": segments}


def _segment(segment: Segment, with_words: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "start": _time(segment.start),
        "end": _time(segment.end),
        "text": _clean(segment.text),
    }
    if segment.speaker is not None:
        out["speaker"] = segment.speaker
    if with_words:
        words = []
        for word in segment.words:
            item: dict[str, Any] = {"word": _clean(word.word)}
            if word.start is not None and word.end is not None:
                item["start"], item["end"] = _time(word.start), _time(word.end)
            words.append(item)
        out["words"] = words
    return out


def _time(seconds: float) -> float:
    """whisperx asserts non-negative timestamps; clamp rounding noise below zero."""
    return max(0.0, seconds)


def _clean(text: str) -> str:
    """Text that cannot break a cue: no line breaks (a blank line ends an SRT cue), no arrow."""
    return text.replace("\r", " ").replace("\n", " ").replace("-->", "->")
