"""Builds the diarization quality set deterministically (bench/.data/diarization, not committed).

Sources (nothing from pyannote-audio's ``tests/data``):

* real read speech: LibriSpeech test-other, 10 speakers x 10 utterances, as kept in
  ``resemble-ai/Resemblyzer`` ``audio_data/librispeech_test-other`` (CC BY 4.0, LibriSpeech
  (c) 2014 Vassil Panayotov; the folder has its LICENSE.TXT and SPEAKERS.TXT). No
  transcripts come with them, so the real tier scores diarization only.
* real read speech with text: LibriSpeech test-clean 1089-134686-0001, 1221-135766-0001/2
  with ``trans.txt``, as kept in ``yuekaizhang/Triton-ASR-Client`` ``datasets/mini_en``.
* synthetic voices: espeak-ng (``apt-get install espeak-ng``) speaking known sentences.

Utterances (or 1-4 s pieces of them, cut at the quietest 100 ms near the wanted length)
are arranged into conversations with controlled turn lengths, pauses and overlaps; each
clip gets a ``.wav`` (16 kHz mono), a ``.rttm`` reference and a ``.json`` with the turns'
speakers, times and (where known) text. Every random choice comes from a seeded RNG.

    python bench/diarization_data.py --resemblyzer DIR --mini-en DIR [--out DIR]

where DIR is a checkout (work tree) of each repository; ``--git`` reads them from bare git
directories instead (what the ``fetch`` tool gives).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SR = 16_000
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / ".data" / "diarization"
RESEMBLYZER_COMMIT = "4596465caf9328c9dedfe80c2a4468255ba8428d"
TRITON_COMMIT = "8e35ed77aeece087fa53abf2a68a282dc13efc8c"
ESPEAK_SENTENCES = [
    "Good morning, did you manage to read the report I sent yesterday?",
    "Yes, I read it on the train, and I have a few questions about the budget.",
    "The numbers for the third quarter look much better than we expected.",
    "I agree, but the travel costs are still far too high for a small team.",
    "We could hold most of the planning meetings online instead.",
    "That would save money, although some people prefer to meet in person.",
    "Let us ask the whole group before we make a final decision.",
    "Fine. I will send a short survey to everyone this afternoon.",
    "Please include a question about the new office hours as well.",
    "Of course. Is there anything else we should add to the list?",
    "Only the date of the next review, which I think is in March.",
    "Then we are done for today. Thank you both for your time.",
    "The weather has been cold and wet all week in the city.",
    "My brother bought a new bicycle and rides it to work every day.",
    "Could you tell me where the nearest library is, please?",
    "The museum opens at ten and closes early on Sundays.",
]
ESPEAK_VOICES = [  # (voice, pitch 0-99, speed wpm): clearly different timbres
    ("en-us+m3", 35, 165),
    ("en-gb+f3", 70, 175),
    ("en-gb-scotland+m7", 20, 150),
    ("en-us+f4", 85, 185),
]


@dataclass
class Turn:
    speaker: str
    start: float
    end: float
    text: str | None = None
    speech: list[tuple[float, float]] = field(default_factory=list)
    """Where in the turn the speaker is heard (pauses of 0.3 s or more inside it are not
    speech); the reference RTTM is made of these."""


@dataclass
class Clip:
    name: str
    kind: str
    num_speakers: int
    turns: list[Turn] = field(default_factory=list)


# --------------------------------------------------------------------------- sources


def _decode(data: bytes) -> np.ndarray:
    from faster_whisper import decode_audio

    return np.asarray(decode_audio(io.BytesIO(data), sampling_rate=SR), dtype=np.float32)


class Source:
    """Files of one repository, from a work tree or (``git=True``) a bare git dir."""

    def __init__(self, root: Path, commit: str, *, git: bool) -> None:
        self.root, self.commit, self.git = root, commit, git

    def list(self, folder: str) -> list[str]:
        if self.git:
            out = subprocess.run(
                ["git", "-C", str(self.root), "ls-tree", "-r", "--name-only", self.commit, folder],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            return sorted(out.split())
        return sorted(
            str(p.relative_to(self.root)) for p in (self.root / folder).rglob("*") if p.is_file()
        )

    def read(self, path: str) -> bytes:
        if self.git:
            return subprocess.run(
                ["git", "-C", str(self.root), "show", f"{self.commit}:{path}"],
                check=True,
                capture_output=True,
            ).stdout
        return (self.root / path).read_bytes()


def librispeech_speakers(src: Source) -> dict[str, list[np.ndarray]]:
    speakers: dict[str, list[np.ndarray]] = {}
    for path in src.list("audio_data/librispeech_test-other"):
        if path.endswith(".flac"):
            speakers.setdefault(path.split("/")[-2], []).append(_decode(src.read(path)))
    return speakers


def mini_en(src: Source) -> list[tuple[str, np.ndarray, str]]:
    base = "datasets/mini_en"
    text = dict(
        line.split(maxsplit=1)
        for line in src.read(f"{base}/trans.txt").decode().splitlines()
        if line.strip()
    )
    return [
        (utt.split("-")[0], _decode(src.read(f"{base}/wav/{utt}.wav")), text[utt].strip())
        for utt in sorted(text)
    ]


def espeak(text: str, voice: str, pitch: int, speed: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(path), text],
            check=True,
        )
        return _decode(path.read_bytes())


# --------------------------------------------------------------------------- arranging


def _trim(x: np.ndarray) -> np.ndarray:
    """Drop leading/trailing silence (20 ms frames under -40 dB of the peak frame)."""
    frame = 320
    n = len(x) // frame
    if n == 0:
        return x
    energy = (x[: n * frame].reshape(n, frame) ** 2).mean(axis=1)
    loud = np.flatnonzero(energy > energy.max() * 1e-4)
    return x[loud[0] * frame : (loud[-1] + 1) * frame]


def _piece(x: np.ndarray, rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    """A piece of ``x`` of about ``lo``-``hi`` s, cut at the quietest 100 ms near the target."""
    want = int(rng.uniform(lo, hi) * SR)
    if len(x) <= want:
        return x
    start = int(rng.integers(0, len(x) - want))
    win = SR // 10
    lo_cut, hi_cut = start + want - SR // 2, min(len(x), start + want + SR // 2)
    best, best_e = start + want, np.inf
    for c in range(max(start + SR, lo_cut), hi_cut - win, win // 2):
        e = float((x[c : c + win] ** 2).mean())
        if e < best_e:
            best, best_e = c + win // 2, e
    return _trim(x[start:best])


def _speech(x: np.ndarray, offset: float) -> list[tuple[float, float]]:
    """Speech regions of one utterance: 20 ms frames within 30 dB of its loud frames (95th
    percentile energy), pauses shorter than 0.3 s bridged."""
    frame = 320
    n = len(x) // frame
    if n == 0:
        return [(offset, offset + len(x) / SR)]
    energy = (x[: n * frame].reshape(n, frame) ** 2).mean(axis=1)
    loud = energy > np.percentile(energy, 95) * 1e-3
    regions: list[list[float]] = []
    for i in np.flatnonzero(loud):
        t0, t1 = i * frame / SR, (i + 1) * frame / SR
        if regions and t0 - regions[-1][1] < 0.3:
            regions[-1][1] = t1
        else:
            regions.append([t0, t1])
    return [(round(offset + a, 3), round(offset + b, 3)) for a, b in regions]


def _level(x: np.ndarray, db: float) -> np.ndarray:
    rms = float(np.sqrt((x**2).mean())) or 1.0
    return x * (0.05 * 10 ** (db / 20) / rms)


def arrange(
    name: str,
    kind: str,
    pieces: list[tuple[str, np.ndarray, str | None]],
    rng: np.random.Generator,
    *,
    pause: tuple[float, float] = (0.2, 1.0),
    overlap: float = 0.0,
    overlap_len: tuple[float, float] = (0.3, 1.2),
) -> tuple[Clip, np.ndarray]:
    """Lays ``pieces`` (speaker, audio, text) end to end; a share ``overlap`` of the changes
    of speaker start before the previous turn ends."""
    gains = {s: rng.uniform(-3, 3) for s in sorted({p[0] for p in pieces})}
    turns: list[Turn] = []
    placed: list[tuple[int, np.ndarray]] = []
    t = 0.5
    prev_spk = None
    for spk, audio, text in pieces:
        audio = _level(_trim(audio), gains[spk])
        if turns and spk != prev_spk and rng.random() < overlap:
            start = max(turns[-1].start + 0.5, turns[-1].end - rng.uniform(*overlap_len))
        elif turns:
            start = turns[-1].end + rng.uniform(*pause)
        else:
            start = t
        turns.append(
            Turn(
                spk, round(start, 3), round(start + len(audio) / SR, 3), text, _speech(audio, start)
            )
        )
        placed.append((round(start * SR), audio))
        prev_spk = spk
    total = int((turns[-1].end + 0.5) * SR) + 1
    mix = np.zeros(total, dtype=np.float32)
    for offset, audio in placed:
        mix[offset : offset + len(audio)] += audio
    mix += 1e-3 * rng.standard_normal(total).astype(np.float32)  # a little room noise
    peak = float(np.abs(mix).max())
    if peak > 0.99:
        mix *= 0.99 / peak
    return Clip(name, kind, len(gains), turns), mix


def _order(speakers: list[str], n_turns: int, rng: np.random.Generator) -> list[str]:
    """A conversation order: no speaker twice in a row; every speaker speaks."""
    order = list(rng.permutation(speakers))
    while len(order) < n_turns:
        order.append(str(rng.choice([s for s in speakers if s != order[-1]])))
    return [str(s) for s in order]


def build(real: dict[str, list[np.ndarray]], text_set, rng: np.random.Generator):
    ids = sorted(real)
    used = {s: 0 for s in ids}

    def utt(s: str) -> np.ndarray:
        x = real[s][used[s] % len(real[s])]
        used[s] += 1
        return x

    # (kind, n speakers, turns, piece length or None, overlap share)
    plans: list[tuple[str, int, int, tuple[float, float] | None, float]] = []
    plans += [("real-2spk", 2, 10, None, 0.0)] * 4
    plans += [("real-3spk", 3, 12, None, 0.0)] * 4
    plans += [("real-4spk", 4, 14, None, 0.0)] * 3
    plans += [("real-short-turns", 3, 30, (1.0, 4.0), 0.0)] * 3
    plans += [("real-overlap", 2 + i % 2, 14, (2.0, 8.0), 0.5) for i in range(3)]
    plans += [("real-1spk", 1, 6, None, 0.0)] * 2
    clips = []
    counts: dict[str, int] = {}
    for kind, n, n_turns, piece, ov in plans:
        k = counts[kind] = counts.get(kind, 0) + 1
        spk = [str(s) for s in rng.choice(ids, size=n, replace=False)]
        order = _order(spk, n_turns, rng) if n > 1 else spk * n_turns
        pieces = [(s, _piece(utt(s), rng, *piece) if piece else utt(s), None) for s in order]
        clips.append(arrange(f"{kind}-{k}", kind, pieces, rng, overlap=ov))
    # real speech with known text: two LibriSpeech test-clean readers, five turns
    mini = text_set["mini_en"]
    order = [0, 1, 2, 0, 1] if len(mini) >= 3 else list(range(len(mini)))
    clips.append(
        arrange("real-text-2spk-1", "real-text", [mini[i] for i in order], rng, pause=(0.3, 0.8))
    )
    # espeak dialogues
    for n, k in ((2, 1), (2, 2), (3, 1), (3, 2), (4, 1)):
        voices = [ESPEAK_VOICES[(k - 1 + j) % len(ESPEAK_VOICES)] for j in range(n)]
        names = [f"espeak{j}" for j in range(n)]
        order = _order(names, 10 + 2 * n, rng)
        sentences = list(rng.permutation(ESPEAK_SENTENCES))
        pieces = []
        for i, s in enumerate(order):
            text = str(sentences[i % len(sentences)])
            pieces.append((s, espeak(text, *voices[names.index(s)]), text))
        clips.append(arrange(f"espeak-{n}spk-{k}", f"espeak-{n}spk", pieces, rng))
    return clips


def build_long(real: dict[str, list[np.ndarray]], rng: np.random.Generator):
    """Two long conversations for the speed bench: ~300 s of 4 readers and ~600 s of 6, turns
    of 2-10 s pieces, a fifth of the speaker changes overlapped."""
    ids = sorted(real)
    clips = []
    for seconds, n in ((300, 4), (600, 6)):
        spk = [str(s) for s in rng.choice(ids, size=n, replace=False)]
        order = _order(spk, int(seconds / 4.6), rng)
        pieces = [
            (s, _piece(real[s][int(rng.integers(len(real[s])))], rng, 2.0, 10.0), None)
            for s in order
        ]
        clips.append(arrange(f"long-{seconds}", f"long-{n}spk", pieces, rng, overlap=0.2))
    return clips


def write(clips, out: Path) -> None:
    from tests.audio import write_wav

    out.mkdir(parents=True, exist_ok=True)
    for clip, audio in clips:
        write_wav(audio, out / f"{clip.name}.wav")
        with open(out / f"{clip.name}.rttm", "w") as f:
            for t in clip.turns:
                for a, b in t.speech:
                    f.write(
                        f"SPEAKER {clip.name} 1 {a:.3f} {b - a:.3f} "
                        f"<NA> <NA> {t.speaker} <NA> <NA>\n"
                    )
        (out / f"{clip.name}.json").write_text(json.dumps(asdict(clip), indent=1))
    total = sum(len(a) for _, a in clips) / SR
    print(f"{len(clips)} clips, {total:.0f} s, in {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--resemblyzer", type=Path, required=True)
    ap.add_argument("--mini-en", type=Path, required=True)
    ap.add_argument("--git", action="store_true", help="the two paths are bare git dirs")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE.parent))
    real = librispeech_speakers(Source(args.resemblyzer, RESEMBLYZER_COMMIT, git=args.git))
    mini = mini_en(Source(args.mini_en, TRITON_COMMIT, git=args.git))
    rng = np.random.default_rng(13)
    write(build(real, {"mini_en": mini}, rng), args.out)
    write(build_long(real, np.random.default_rng(600)), args.out.with_name("diarization-long"))


if __name__ == "__main__":
    main()
