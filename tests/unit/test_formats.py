"""Result formats rendered through whisperx's writers from our Transcript."""

from __future__ import annotations

import json
import re

import pytest

from common.schemas import Segment, SpeakerTurn, Transcript, Word
from ingress.formats import MEDIA_TYPES, ResultFormat, SubtitleOptions, cue_words, render

SRT_TIME = re.compile(r"^\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}$", re.M)
VTT_TIME = re.compile(r"^\d\d:\d\d\.\d{3} --> \d\d:\d\d\.\d{3}$", re.M)


def two_speakers() -> Transcript:
    return Transcript(
        language="en",
        segments=[
            Segment(
                start=0.5,
                end=2.25,
                text=" And so, my fellow Americans,",
                speaker="SPEAKER_00",
                words=[
                    Word(word="And", start=0.5, end=0.7, speaker="SPEAKER_00"),
                    Word(word="so,", start=0.8, end=1.0, speaker="SPEAKER_00"),
                    Word(word="my", start=1.1, end=1.3, speaker="SPEAKER_00"),
                    Word(word="fellow", start=1.4, end=1.8, speaker="SPEAKER_00"),
                    Word(word="Americans,", start=1.9, end=2.25, speaker="SPEAKER_00"),
                ],
            ),
            Segment(
                start=3.0,
                end=4.5,
                text=" ask not\twhat",
                speaker="SPEAKER_01",
                words=[
                    Word(word="ask", start=3.0, end=3.4, speaker="SPEAKER_01"),
                    Word(word="not", start=3.5, end=3.9, speaker="SPEAKER_01"),
                    Word(word="what", start=4.0, end=4.5, speaker="SPEAKER_01"),
                ],
            ),
        ],
        speakers=["SPEAKER_00", "SPEAKER_01"],
    )


def cues(text: str) -> list[list[str]]:
    return [block.splitlines() for block in text.strip().split("\n\n") if block.strip()]


def test_srt_has_numbered_timed_cues_with_speaker_labels() -> None:
    out = render(two_speakers(), ResultFormat.srt, SubtitleOptions())
    blocks = cues(out)
    assert [b[0] for b in blocks] == ["1", "2"]
    assert blocks[0][1] == "00:00:00,500 --> 00:00:02,250"
    assert blocks[0][2] == "[SPEAKER_00]: And so, my fellow Americans,"
    assert blocks[1][1] == "00:00:03,000 --> 00:00:04,500"
    assert blocks[1][2].startswith("[SPEAKER_01]: ask not")
    assert len(SRT_TIME.findall(out)) == 2


def test_vtt_has_header_and_speaker_labels() -> None:
    out = render(two_speakers(), ResultFormat.vtt, SubtitleOptions())
    assert out.startswith("WEBVTT\n\n")
    blocks = cues(out.removeprefix("WEBVTT"))
    assert blocks[0] == ["00:00.500 --> 00:02.250", "[SPEAKER_00]: And so, my fellow Americans,"]
    assert blocks[1][0] == "00:03.000 --> 00:04.500" and "[SPEAKER_01]: " in blocks[1][1]
    assert len(VTT_TIME.findall(out)) == 2


def test_subtitle_options_reach_the_writer() -> None:
    narrow = render(
        two_speakers(), ResultFormat.srt, SubtitleOptions(max_line_width=10, max_line_count=1)
    )
    assert len(cues(narrow)) > 2  # long segments split into more, shorter cues
    assert all(len(line) <= len("[SPEAKER_00]: ") + 12 for b in cues(narrow) for line in b[2:])
    highlighted = render(two_speakers(), ResultFormat.vtt, SubtitleOptions(highlight_words=True))
    assert "<u>fellow</u>" in highlighted and "<u>ask</u>" in highlighted


def test_txt_is_one_labelled_line_per_segment() -> None:
    out = render(two_speakers(), ResultFormat.txt, SubtitleOptions())
    assert out.splitlines() == [
        "[SPEAKER_00]: And so, my fellow Americans,",
        "[SPEAKER_01]: ask not\twhat",
    ]


def test_tsv_has_header_integer_milliseconds_and_speakers() -> None:
    out = render(two_speakers(), ResultFormat.tsv, SubtitleOptions())
    lines = out.splitlines()
    assert lines[0] == "start\tend\ttext\tspeaker"
    assert lines[1] == "500\t2250\tAnd so, my fellow Americans,\tSPEAKER_00"
    assert lines[2] == "3000\t4500\task not what\tSPEAKER_01"  # a tab in text adds no column
    no_speakers = two_speakers().model_copy(
        update={
            "segments": [s.model_copy(update={"speaker": None}) for s in two_speakers().segments]
        }
    )
    assert render(no_speakers, ResultFormat.tsv, SubtitleOptions()).splitlines()[:2] == [
        "start\tend\ttext",  # whisperx's own three columns when nobody is labelled
        "500\t2250\tAnd so, my fellow Americans,",
    ]


def test_json_is_our_transcript_schema() -> None:
    transcript = two_speakers()
    out = render(transcript, ResultFormat.json, SubtitleOptions())
    assert Transcript.model_validate(json.loads(out)) == transcript


def test_segments_without_words_still_get_cues_and_missing_speaker_no_label() -> None:
    transcript = Transcript(
        language=None,
        segments=[
            Segment(
                start=0.0, end=1.0, text=" first", words=[Word(word="first", start=0.0, end=1.0)]
            ),
            Segment(start=1.5, end=2.0, text=" second --> line\nbreak"),
        ],
    )
    out = render(transcript, ResultFormat.srt, SubtitleOptions())
    blocks = cues(out)
    assert [b[2] for b in blocks] == ["first", "second -> line break"]
    assert "[" not in out


def test_untimed_words_fall_back_to_segment_times() -> None:
    transcript = Transcript(
        language="en",
        segments=[Segment(start=1.0, end=2.0, text=" 1960", words=[Word(word="1960")])],
    )
    out = render(transcript, ResultFormat.vtt, SubtitleOptions(highlight_words=True))
    assert cues(out.removeprefix("WEBVTT")) == [["00:01.000 --> 00:02.000", "1960"]]


@pytest.mark.parametrize(
    "fmt", [ResultFormat.srt, ResultFormat.vtt, ResultFormat.txt, ResultFormat.tsv]
)
def test_diarize_only_transcript_renders_speaker_turns(fmt: ResultFormat) -> None:
    transcript = Transcript(
        speaker_turns=[
            SpeakerTurn(start=0.0, end=1.5, speaker="SPEAKER_00"),
            SpeakerTurn(start=1.5, end=3.0, speaker="SPEAKER_01"),
        ],
        speakers=["SPEAKER_00", "SPEAKER_01"],
    )
    out = render(transcript, fmt, SubtitleOptions())
    assert out.index("SPEAKER_00") < out.index("SPEAKER_01")
    if fmt is ResultFormat.srt:
        assert cues(out)[1][1:] == ["00:00:01,500 --> 00:00:03,000", "SPEAKER_01"]
    if fmt is ResultFormat.tsv:
        assert out.splitlines()[1:] == ["0\t1500\tSPEAKER_00", "1500\t3000\tSPEAKER_01"]


@pytest.mark.parametrize("fmt", list(ResultFormat))
def test_empty_transcript_renders(fmt: ResultFormat) -> None:
    out = render(Transcript(), fmt, SubtitleOptions())
    expected = {
        ResultFormat.srt: "",
        ResultFormat.vtt: "WEBVTT\n\n",
        ResultFormat.txt: "",
        ResultFormat.tsv: "start\tend\ttext\n",
    }
    if fmt is ResultFormat.json:
        assert Transcript.model_validate_json(out) == Transcript()
    else:
        assert out == expected[fmt]


def test_every_format_has_a_utf8_media_type() -> None:
    assert set(MEDIA_TYPES) == set(ResultFormat)
    assert all(t.endswith("; charset=utf-8") for t in MEDIA_TYPES.values())
    assert ResultFormat.srt.media_type.startswith("application/x-subrip")


# ---------------------------------------------------------------- subtitles = JSON text


def whisper_tokens() -> Transcript:
    """Words as Whisper's word timing splits them: "8" ".30,", "12" "%", "i" ".e."."""
    pieces = [
        ("The", 0.0, 0.14), ("meeting", 0.14, 0.34), ("starts", 0.34, 0.68), ("at", 0.68, 0.92),
        ("8", 0.92, 1.22), (".30,", 1.22, 1.88), ("and", 2.24, 2.38), ("about", 2.38, 2.58),
        ("12", 2.58, 3.1), ("%", 3.1, 3.38), ("of", 3.38, 3.64), ("us,", 3.64, 3.82),
        ("i", 4.38, 4.48), (".e.", 4.48, 4.66), ("twelve", 4.66, 4.88), ("people,", 4.88, 5.32),
        ("will", 5.56, 5.68), ("come.", 5.68, 5.94),
    ]  # fmt: skip
    first = [Word(word=w, start=s, end=e, speaker="SPEAKER_00") for w, s, e in pieces[:12]]
    second = [Word(word=w, start=s, end=e, speaker="SPEAKER_01") for w, s, e in pieces[12:]]
    return Transcript(
        language="en",
        segments=[
            Segment(
                start=0.0,
                end=3.82,
                text=" The meeting starts at 8.30, and about 12% of us,",
                speaker="SPEAKER_00",
                words=first,
            ),
            Segment(
                start=4.38,
                end=5.94,
                text=" i.e. twelve people, will come.",
                speaker="SPEAKER_01",
                words=second,
            ),
        ],
        speakers=["SPEAKER_00", "SPEAKER_01"],
    )


LABEL = re.compile(r"^\[(SPEAKER_\d\d)\]: ")


def subtitle_texts(out: str, fmt: ResultFormat) -> list[tuple[str | None, str]]:
    """(speaker, text) per cue of an srt or vtt file, lines of one cue joined by a space."""
    body = out.removeprefix("WEBVTT") if fmt is ResultFormat.vtt else out
    found = []
    for block in cues(body):
        lines = block[2:] if fmt is ResultFormat.srt else block[1:]
        text = " ".join(lines)
        label = LABEL.match(text)
        found.append((label.group(1) if label else None, LABEL.sub("", text)))
    return found


@pytest.mark.parametrize("fmt", [ResultFormat.srt, ResultFormat.vtt])
def test_subtitles_keep_numbers_percent_and_abbreviations(fmt: ResultFormat) -> None:
    transcript = whisper_tokens()
    out = render(transcript, fmt, SubtitleOptions())
    assert subtitle_texts(out, fmt) == [(s.speaker, s.text.strip()) for s in transcript.segments]
    assert "8 .30" not in out and "12 %" not in out and "i .e." not in out
    # cue times still come from the words (the first word to the last)
    assert ("00:00:00,000 --> 00:00:03,820" if fmt is ResultFormat.srt else "00:04.380") in out


@pytest.mark.parametrize("fmt", [ResultFormat.srt, ResultFormat.vtt])
def test_split_cues_join_back_to_the_segment_text_and_never_mix_speakers(
    fmt: ResultFormat,
) -> None:
    transcript = whisper_tokens()
    out = render(transcript, fmt, SubtitleOptions(max_line_width=12, max_line_count=2))
    found = subtitle_texts(out, fmt)
    assert len(found) > 2
    for segment in transcript.segments:  # each segment's cues, in order, spell its text
        mine = [text for speaker, text in found if speaker == segment.speaker]
        assert " ".join(mine) == segment.text.strip()
    if fmt is ResultFormat.srt:
        assert [b[0] for b in cues(out)] == [str(n) for n in range(1, len(found) + 1)]


def test_a_cue_joining_segments_does_not_cross_a_speaker_change() -> None:
    transcript = whisper_tokens()
    same = [s.model_copy(update={"speaker": "SPEAKER_00"}) for s in transcript.segments]
    wide = SubtitleOptions(max_line_width=200, max_line_count=1)
    one_speaker = render(transcript.model_copy(update={"segments": same}), ResultFormat.srt, wide)
    assert len(cues(one_speaker)) == 1  # whisperx joins segments into one cue …
    two = render(transcript, ResultFormat.srt, wide)
    assert subtitle_texts(two, ResultFormat.srt) == [  # … but not across speakers
        ("SPEAKER_00", "The meeting starts at 8.30, and about 12% of us,"),
        ("SPEAKER_01", "i.e. twelve people, will come."),
    ]


def test_highlighted_words_are_whole_text_pieces() -> None:
    out = render(whisper_tokens(), ResultFormat.vtt, SubtitleOptions(highlight_words=True))
    assert "<u>8.30,</u>" in out and "<u>12%</u>" in out and "<u>i.e.</u>" in out
    assert "00:00.920 --> 00:01.880" in out  # "8.30," spans the times of "8" and ".30,"


@pytest.mark.parametrize("fmt", [ResultFormat.txt, ResultFormat.tsv])
def test_text_formats_say_the_segment_text(fmt: ResultFormat) -> None:
    transcript = whisper_tokens()
    lines = render(transcript, fmt, SubtitleOptions()).splitlines()
    if fmt is ResultFormat.tsv:
        rows = [line.split("\t") for line in lines[1:]]
        assert [(r[3], r[2]) for r in rows] == [
            (s.speaker, s.text.strip()) for s in transcript.segments
        ]
    else:
        assert lines == [f"[{s.speaker}]: {s.text.strip()}" for s in transcript.segments]


def test_words_missing_from_the_text_or_text_missing_from_words() -> None:
    """The text wins: a "%" no word carries stays, a word the text lacks is dropped."""
    words = [Word(word="12", start=1.0, end=1.4), Word(word="extra", start=1.4, end=1.6)]
    pieces = cue_words("about 12% done", words)
    assert [p["word"] for p in pieces] == ["about", "12%", "done"]
    assert "start" not in pieces[0] and (pieces[1]["start"], pieces[1]["end"]) == (1.0, 1.4)
    out = render(
        Transcript(
            language="en",
            segments=[Segment(start=0.5, end=2.0, text="about 12% done", words=words)],
        ),
        ResultFormat.srt,
        SubtitleOptions(),
    )
    assert cues(out)[0][1:] == ["00:00:01,000 --> 00:00:01,400", "about 12% done"]


def test_languages_without_spaces_keep_their_text() -> None:
    words = [Word(word="今日は", start=0.0, end=0.5), Word(word="8.30", start=0.5, end=0.9),
             Word(word="です。", start=0.9, end=1.2)]  # fmt: skip
    transcript = Transcript(
        language="ja", segments=[Segment(start=0.0, end=1.2, text="今日は8.30です。", words=words)]
    )
    out = render(transcript, ResultFormat.vtt, SubtitleOptions(max_line_width=4, max_line_count=1))
    assert "".join(t for _, t in subtitle_texts(out, ResultFormat.vtt)) == "今日は8.30です。"
