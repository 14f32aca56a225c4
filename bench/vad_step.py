"""How far whisperx's VAD window may slide per step before words are lost: WER and ASR time
of the service's own ASR engine (``deployments.asr.AsrEngine``, tiny.en int8 on CPU, the
offline bundle) at several steps of pyannote's 5 s VAD window, on real speech with
reference text, in one run.

whisperx's pyannote VAD slides its window by a tenth of its length (0.5 s), so every sample
goes through the segmentation model ten times; on a 2-core CPU that is about 40% of the
ASR time. A longer step is cheaper; what it may cost is speech-region edges found later or
not at all, which shows as deleted or cut words.

The set (built here, deterministic, nothing from pyannote-audio's ``tests/data``):

* **digits:** real recordings of six speakers saying one digit each (Free Spoken Digit
  Dataset, ``Jakobovski/free-spoken-digit-dataset``, CC BY-SA 4.0; 8 kHz, resampled to
  16 kHz), strung into ~45 s clips with pauses of 0.05-1.2 s between them. Every
  boundary between speech and pause is one the VAD must find; a short word lost at an
  edge is a deletion.
* **read:** LibriSpeech test-clean 1089-134686-0001, 1221-135766-0001/2 (their
  ``trans.txt``, as kept in ``yuekaizhang/Triton-ASR-Client`` ``datasets/mini_en``) and
  ``jfk.flac`` of the bundle, each alone and all of them in a row with 0.3-0.8 s pauses.

WER is (substitutions + deletions + insertions) / reference words, with the three counts
shown (S/D/I): a VAD that finds an edge late deletes or cuts words; Whisper looping on a
run of digits inserts them (its repetition check cuts the loops it can tell from speech).
Digits are scored as digit words (``7`` and ``seven`` are the same word; ``35`` is
``three five``), read speech with lower case and no punctuation. Every step transcribes
every clip in each round, the steps in a different order per round; times are medians.

    M=/work/.mirror  # bare git dirs, as the fetch tool brings them
    .venv/bin/python bench/vad_step.py --git --steps 0.5,1.0,1.67,2.5 \\
        --fsdd $M/Jakobovski+free-spoken-digit-dataset/repo \\
        --mini-en $M/yuekaizhang+Triton-ASR-Client/repo
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import _common as c
import numpy as np
from diarization_data import TRITON_COMMIT, Source, mini_en

FSDD_COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_WORD_DIGIT = {w: str(i) for i, w in enumerate(DIGITS)} | {"oh": "0", "o": "0"}


@dataclass
class Clip:
    name: str
    kind: str  # "digits" or "read"
    audio: np.ndarray
    reference: str


def _wav(data: bytes) -> np.ndarray:
    import io
    import wave

    from scipy.signal import resample_poly

    with wave.open(io.BytesIO(data)) as w:
        rate, frames = w.getframerate(), w.readframes(w.getnframes())
    audio = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    return resample_poly(audio, c.SR, rate).astype(np.float32) if rate != c.SR else audio


def digit_clips(
    src: Source, per_speaker: int, seconds: float, rng: np.random.Generator
) -> list[Clip]:
    by_speaker: dict[str, list[tuple[int, str]]] = {}
    for path in src.list("recordings"):
        digit, speaker, _ = Path(path).stem.split("_")
        by_speaker.setdefault(speaker, []).append((int(digit), path))
    clips = []
    for speaker in sorted(by_speaker):
        pool = by_speaker[speaker]
        for k in range(per_speaker):
            pieces, words, length = [], [], 0.0
            while length < seconds:
                digit, path = pool[int(rng.integers(len(pool)))]
                audio = _wav(src.read(path))
                pause = np.zeros(int(rng.uniform(0.05, 1.2) * c.SR), dtype=np.float32)
                pieces += [audio, pause]
                words.append(DIGITS[digit])
                length += (len(audio) + len(pause)) / c.SR
            clips.append(
                Clip(f"digits-{speaker}-{k + 1}", "digits", np.concatenate(pieces), " ".join(words))
            )
    return clips


def read_clips(src: Source, rng: np.random.Generator) -> list[Clip]:
    from deployments.audio import decode_audio

    utterances = [(utt_audio, text) for _, utt_audio, text in mini_en(src)]
    utterances.append((decode_audio(c.JFK), (c.MODELS / "audio" / "jfk.txt").read_text()))
    clips = [Clip(f"read-{i + 1}", "read", a, t) for i, (a, t) in enumerate(utterances)]
    pieces: list[np.ndarray] = []
    for audio, _ in utterances:
        pieces += [audio, np.zeros(int(rng.uniform(0.3, 0.8) * c.SR), dtype=np.float32)]
    clips.append(
        Clip("read-all", "read", np.concatenate(pieces), " ".join(t for _, t in utterances))
    )
    return clips


def words(text: str, kind: str) -> str:
    text = re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " "))
    if kind != "digits":
        return " ".join(text.split())
    out = []
    for token in text.split():
        if token.isdigit():
            out += [DIGITS[int(d)] for d in token]
        elif token in _WORD_DIGIT:
            out.append(DIGITS[int(_WORD_DIGIT[token])])
        else:
            out.append(token)
    return " ".join(out)


def engine():  # type: ignore[no-untyped-def]
    from common.config import AsrConfig
    from deployments.asr import AsrEngine

    config = AsrConfig(
        model="asr/faster-whisper-tiny.en",
        device="cpu",
        compute_type="int8",
        batch_size=4,
        local_files_only=True,
        cpu_threads=2,
    )
    return AsrEngine(config, models_dir=c.MODELS)


def vad_inference(asr) -> object:  # type: ignore[no-untyped-def]
    """pyannote's sliding-window ``Inference`` of the engine's default pipeline's VAD."""
    return asr._pipeline.vad_model.vad_pipeline._segmentation


def main() -> None:
    from jiwer import process_words

    from common.schemas import AsrRequest

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fsdd", type=Path, required=True)
    parser.add_argument("--mini-en", type=Path, required=True)
    parser.add_argument("--git", action="store_true", help="the two paths are bare git dirs")
    parser.add_argument("--steps", default="0.5,1.0,1.67,2.5", help="VAD steps, seconds")
    parser.add_argument("--per-speaker", type=int, default=2, help="digit clips per speaker")
    parser.add_argument("--seconds", type=float, default=45.0, help="digit clip length")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    steps = [float(s) for s in args.steps.split(",")]

    rng = np.random.default_rng(10)
    clips = digit_clips(
        Source(args.fsdd, FSDD_COMMIT, git=args.git), args.per_speaker, args.seconds, rng
    )
    clips += read_clips(Source(args.mini_en, TRITON_COMMIT, git=args.git), rng)
    audio_s = {
        kind: sum(len(x.audio) for x in clips if x.kind == kind) / c.SR
        for kind in ("digits", "read")
    }
    print(
        f"set: {len(clips)} clips; digits {audio_s['digits']:.0f} s, read {audio_s['read']:.0f} s"
    )

    asr = engine()
    inference = vad_inference(asr)
    print(f"VAD window {inference.duration} s, default step {inference.step} s")
    hyps: dict[float, dict[str, str]] = {s: {} for s in steps}
    seconds: dict[float, dict[str, list[float]]] = {s: {"digits": [], "read": []} for s in steps}
    asr.transcribe(clips[0].audio, AsrRequest())  # warm
    for r in range(args.rounds):
        order: Sequence[float] = steps if r % 2 == 0 else list(reversed(steps))
        for step in order:
            inference.step = step
            spent = {"digits": 0.0, "read": 0.0}
            for clip in clips:
                started = time.perf_counter()
                transcript = asr.transcribe(clip.audio, AsrRequest())
                spent[clip.kind] += time.perf_counter() - started
                hyps[step][clip.name] = transcript.text
            for kind, s in spent.items():
                seconds[step][kind].append(s)
            print(
                f"round {r + 1} step {step}: "
                f"digits {spent['digits']:.1f} s, read {spent['read']:.1f} s"
            )

    base = steps[0]
    rows = []
    for step in steps:
        row: list[object] = [step]
        for kind in ("digits", "read"):
            chosen = [x for x in clips if x.kind == kind]
            m = process_words(
                [words(x.reference, kind) for x in chosen],
                [words(hyps[step][x.name], kind) for x in chosen],
            )
            n = m.hits + m.substitutions + m.deletions
            t = statistics.median(seconds[step][kind])
            row += [
                f"{100 * m.wer:.2f}%",
                f"{m.substitutions}/{m.deletions}/{m.insertions} of {n}",
                f"{t:.1f}",
                f"{t / statistics.median(seconds[base][kind]):.2f}",
            ]
        rows.append(row)
    c.table(
        [
            "VAD step s",
            "digits WER",
            "digits S/D/I",
            "digits ASR s",
            "vs first",
            "read WER",
            "read S/D/I",
            "read ASR s",
            "vs first",
        ],
        rows,
        note=f"medians of {args.rounds} rounds; {c.machine_note()}",
    )
    for step in steps[1:]:
        changed = [
            x.name
            for x in clips
            if words(hyps[step][x.name], x.kind) != words(hyps[base][x.name], x.kind)
        ]
        print(
            f"step {step}: {len(changed)} of {len(clips)} clips transcribed differently "
            f"from step {base}: {changed}"
        )


if __name__ == "__main__":
    main()
