"""A finished task's transcript as a downloadable file: json, srt, vtt, txt or tsv.

Subtitles and text files come from whisperx's own writers (``whisperx.utils``): cue
splitting, word highlighting and ``[SPEAKER_00]: `` labels are the whisperx CLI's. Every
format says what the JSON segments say: cue text is built from each segment's text (not
from re-joined word tokens, which whisperx's writer spaces apart), a cue never spans two
speakers, and TSV gains a ``speaker`` column when the transcript has speakers. JSON is our
own ``Transcript`` schema, as ``GET /task/{id}`` has it.
"""

from __future__ import annotations

import io
import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from whisperx.utils import (
    LANGUAGES_WITHOUT_SPACES,
    ResultWriter,
    SubtitlesWriter,
    WriteSRT,
    get_writer,
)

from common.schemas import Segment, Transcript, Word


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
    """The transcript in ``fmt``: JSON as our schema, the rest through whisperx's writers."""
    writer: ResultWriter = get_writer(fmt.value, "")  # output_dir unused: we write in memory
    if fmt is ResultFormat.json:
        result: dict[str, Any] = transcript.model_dump(mode="json")
    else:
        result = writer_input(transcript)
    buffer = io.StringIO()
    if isinstance(writer, SubtitlesWriter):
        _write_subtitles(writer, result, buffer, options.model_dump())
    elif fmt is ResultFormat.tsv and any("speaker" in s for s in result["segments"]):
        _write_tsv_with_speakers(result, buffer)
    else:
        writer.write_result(result, file=buffer, options=options.model_dump())
    return buffer.getvalue()


def _write_subtitles(
    writer: SubtitlesWriter, result: dict[str, Any], file: io.StringIO, options: dict[str, Any]
) -> None:
    """whisperx's cues, one speaker's run of segments at a time, numbered across runs.

    whisperx's ``iterate_result`` builds the cues (line width, line count, highlighting);
    run by run, a cue that joins segments (``max_line_width`` + ``max_line_count``) never
    spans two speakers, so its ``[SPEAKER_xx]: `` label is right for all of its text. The
    print loops are whisperx's ``WriteSRT`` / ``WriteVTT`` ones.
    """
    srt = isinstance(writer, WriteSRT)
    if not srt:
        print("WEBVTT\n", file=file)
    number = 0
    for run in _speaker_runs(result["segments"]):
        for start, end, text in writer.iterate_result({**result, "segments": run}, options):
            number += 1
            text = "\n".join(line.rstrip() for line in text.split("\n"))  # " \nnext" breaks
            cue = f"{start} --> {end}\n{text}\n"
            print(f"{number}\n{cue}" if srt else cue, file=file)


def _speaker_runs(segments: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    runs: list[list[dict[str, Any]]] = []
    for segment in segments:
        if runs and runs[-1][-1].get("speaker") == segment.get("speaker"):
            runs[-1].append(segment)
        else:
            runs.append([segment])
    return runs


def _write_tsv_with_speakers(result: dict[str, Any], file: io.StringIO) -> None:
    """whisperx's TSV (integer milliseconds, tabs in text made spaces) plus a speaker column."""
    print("start", "end", "text", "speaker", sep="\t", file=file)
    for segment in result["segments"]:
        text = segment["text"].strip().replace("\t", " ")
        speaker = segment.get("speaker", "")
        start, end = round(1000 * segment["start"]), round(1000 * segment["end"])
        print(start, end, text, speaker, sep="\t", file=file)


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

    The cue text is the segment's text, never the words re-joined: whisperx's subtitle
    writer joins its "words" with a space, and Whisper's word tokens split "8.30" into "8"
    ".30", "12%" into "12" "%" and "i.e." into "i" ".e.". So each cue "word" is one
    whitespace-separated piece of the segment text (one character run for languages written
    without spaces), timed by the words that fall in it.
    """
    language = transcript.language or ""
    if transcript.segments:
        with_words = all(s.words for s in transcript.segments)
        no_spaces = language in LANGUAGES_WITHOUT_SPACES
        segments = [_segment(s, with_words, no_spaces) for s in transcript.segments]
    else:
        segments = [
            {"start": _time(t.start), "end": _time(t.end), "text": _clean(t.speaker)}
            for t in transcript.speaker_turns or []
        ]
    return {"language": language, "segments": segments}


def _segment(segment: Segment, with_words: bool, no_spaces: bool) -> dict[str, Any]:
    text = _clean(segment.text)
    out: dict[str, Any] = {"start": _time(segment.start), "end": _time(segment.end), "text": text}
    if segment.speaker is not None:
        out["speaker"] = segment.speaker
    if with_words:
        out["words"] = cue_words(text.strip(), segment.words, no_spaces=no_spaces)
    return out


def cue_words(text: str, words: list[Word], *, no_spaces: bool = False) -> list[dict[str, Any]]:
    """Pieces of ``text`` for whisperx's subtitle writer, each timed by the words inside it.

    Words are found in the text in order; a word the text does not contain times nothing,
    and a piece no word falls in has no time (the writer then times its cue from the other
    pieces, or from the segment). Joined as the writer joins them (with a space, or with
    nothing for ``no_spaces`` languages), the pieces give back ``text``.
    """
    located: list[tuple[int, Word]] = []
    position = 0
    for word in words:
        token = _clean(word.word).strip()
        at = text.find(token, position) if token else -1
        if at >= 0:
            located.append((at, word))
            position = at + len(token)
    if no_spaces:
        cuts = sorted({0, *(at for at, _ in located)} - {len(text)})
        spans = list(zip(cuts, [*cuts[1:], len(text)], strict=True)) if text else []
    else:
        spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
    pieces: list[dict[str, Any]] = []
    index = 0
    for first, last in spans:
        piece: dict[str, Any] = {"word": text[first:last]}
        starts: list[float] = []
        ends: list[float] = []
        while index < len(located) and located[index][0] < last:
            at, word = located[index]
            if at >= first and word.start is not None and word.end is not None:
                starts.append(word.start)
                ends.append(word.end)
            index += 1
        if starts:
            piece["start"], piece["end"] = _time(min(starts)), _time(max(ends))
        pieces.append(piece)
    return pieces


def _time(seconds: float) -> float:
    """whisperx asserts non-negative timestamps; clamp rounding noise below zero."""
    return max(0.0, seconds)


def _clean(text: str) -> str:
    """Text that cannot break a cue: no line breaks (a blank line ends an SRT cue), no arrow."""
    return text.replace("\r", " ").replace("\n", " ").replace("-->", "->")
