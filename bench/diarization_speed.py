"""Diarization speed and DER side by side: our engine (in-process) and senko 0.2.2 (its own
venv, a subprocess), on the same 300 s and 600 s clips, alternating, models warm, medians.

    flock /tmp/wxs-heavy.lock python bench/diarization_speed.py [--runs 3] [--set f=v ...]
        [--senko-python /work/senko-venv/bin/python] [--profile]

The clips are the first 300 s and 600 s of bench/.data/diarization-long/long-{300,600}
(real LibriSpeech readers arranged into conversations; bench/diarization_data.py), with
their reference turns cut at the same point. ``--profile`` also prints where our time
goes (segmentation, embeddings, clustering and the rest), from one extra run per clip.
Both sides get the same torch thread count (DiarizationConfig.cpu_threads, 2 here).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import diarization_quality as q

LONG = q.DATA.with_name("diarization-long")


def cut(clip: dict, seconds: float) -> dict:
    turns = [
        {
            **t,
            "end": min(t["end"], seconds),
            "speech": [(a, min(b, seconds)) for a, b in t["speech"] if a < seconds],
        }
        for t in clip["turns"]
        if t["start"] < seconds - 0.2
    ]
    return {
        **clip,
        "name": f"{clip['name']}@{seconds:g}",
        "audio": clip["audio"][: int(seconds * q.SR)],
        "turns": turns,
        "num_speakers": len({t["speaker"] for t in turns}),
    }


class Senko:
    def __init__(self, python: str) -> None:
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).with_name("senko_worker.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._read()

    def _read(self) -> dict:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("senko worker exited")
            if line.startswith("{"):
                return json.loads(line)

    def diarize(self, wav: Path) -> tuple[float, list]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{wav}\n")
        self.proc.stdin.flush()
        out = self._read()
        return out["seconds"], out["segments"]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def profile(engine, clip: dict) -> dict[str, float]:
    """Seconds per step of one run, by wrapping the pipeline's steps."""
    from common.schemas import DiarizeRequest

    pipe = engine._pipeline
    spent: dict[str, float] = {}
    originals = {}
    for name in ("get_segmentations", "get_embeddings", "clustering", "reconstruct"):
        fn = getattr(pipe, name)
        originals[name] = fn

        def timed(*a, _fn=fn, _name=name, **k):
            t = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                spent[_name] = spent.get(_name, 0.0) + time.perf_counter() - t

        setattr(pipe, name, timed)
    t = time.perf_counter()
    engine.diarize(clip["audio"], DiarizeRequest())
    spent["total"] = time.perf_counter() - t
    for name, fn in originals.items():
        if name == "clustering":
            pipe.clustering = fn
        else:
            delattr(pipe, name) if name in pipe.__dict__ else None
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--senko-python", default="/work/senko-venv/bin/python")
    ap.add_argument("--lengths", default="300,600")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-senko", action="store_true")
    args = ap.parse_args()
    from common.schemas import DiarizeRequest, SpeakerTurn
    from tests.audio import write_wav

    print(f"load average at start {os.getloadavg()}")
    longs = {c["name"]: c for c in q.load_clips(LONG, None)}
    clips = []
    for sec in map(float, args.lengths.split(",")):
        src = longs["long-300"] if sec <= 300 else longs["long-600"]
        clips.append(cut(src, sec))
    engine = q.our_engine(dict(kv.split("=", 1) for kv in args.set))
    senko = None if args.no_senko else Senko(args.senko_python)
    tmp = Path(tempfile.mkdtemp())
    warm = clips[0]["audio"][: 30 * q.SR]
    engine.diarize(warm, DiarizeRequest())
    if senko:
        senko.diarize(write_wav(warm, tmp / "warm.wav"))
    lines = []
    for clip in clips:
        wav = write_wav(clip["audio"], tmp / f"{clip['name']}.wav")
        ours_t, senko_t = [], []
        ours_turns, senko_turns = [], []
        for _ in range(args.runs):
            t = time.perf_counter()
            r = engine.diarize(clip["audio"], DiarizeRequest())
            ours_t.append(time.perf_counter() - t)
            ours_turns = r.speaker_turns or []
            if senko:
                s, segs = senko.diarize(wav)
                senko_t.append(s)
                senko_turns = [SpeakerTurn(start=a, end=b, speaker=c) for a, b, c in segs]
        dur = len(clip["audio"]) / q.SR
        ours = q.score(clip, ours_turns, mode="auto", seconds=statistics.median(ours_t))
        line = (
            f"{clip['name']} ({dur:.0f} s, {clip['num_speakers']} speakers): ours median "
            f"{ours['seconds']:.1f} s RTF {ours['seconds'] / dur:.4f} DER {100 * ours['der']:.1f}% "
            f"found {ours['found']} | runs {[round(x, 1) for x in ours_t]}"
        )
        if senko:
            sk = q.score(clip, senko_turns, mode="auto", seconds=statistics.median(senko_t))
            line += (
                f"\n    senko median {sk['seconds']:.1f} s RTF {sk['seconds'] / dur:.4f} "
                f"DER {100 * sk['der']:.1f}% found {sk['found']} | runs "
                f"{[round(x, 1) for x in senko_t]}\n    ours/senko time ratio "
                f"{ours['seconds'] / sk['seconds']:.2f}"
            )
        print(line, flush=True)
        lines.append(line)
        if args.profile:
            print(f"    profile (one run): {profile(engine, clip)}", flush=True)
    if senko:
        senko.close()
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
