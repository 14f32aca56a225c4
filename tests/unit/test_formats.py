"""Result formats rendered through whisperx's writers from our Transcript."""

from __future__ import annotations

import json
import re

import pytest

from common.schemas import Segment, SpeakerTurn, Transcript, Word
from ingress.formats import MEDIA_TYPES, ResultFormat, SubtitleOptions, render

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


def test_tsv_has_header_and_integer_milliseconds() -> None:
    out = render(two_speakers(), ResultFormat.tsv, SubtitleOptions())
    lines = out.splitlines()
    assert lines[0] == "start\tend\ttext"
    assert lines[1] == "500\t2250\tAnd so, my fellow Americans,"
    assert lines[2] == "3000\t4500\task not what"  # a tab in the text cannot add a column


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
