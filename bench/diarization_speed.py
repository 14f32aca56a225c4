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
            if '{"' in line:  # senko may print colour codes without a newline first
                return json.loads(line[line.index('{"') :])

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
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help="another configuration of ours, alternated too: field=value,field=value",
    )
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
    base = dict(kv.split("=", 1) for kv in args.set)
    engines = {"ours": q.our_engine(base)}
    for v in args.variant:
        engines[f"ours[{v}]"] = q.our_engine(base | dict(kv.split("=", 1) for kv in v.split(",")))
    senko = None if args.no_senko else Senko(args.senko_python)
    tmp = Path(tempfile.mkdtemp())
    warm = clips[0]["audio"][: 30 * q.SR]
    for engine in engines.values():
        engine.diarize(warm, DiarizeRequest())
    if senko:
        senko.diarize(write_wav(warm, tmp / "warm.wav"))
    for clip in clips:
        wav = write_wav(clip["audio"], tmp / f"{clip['name']}.wav")
        times: dict[str, list[float]] = {name: [] for name in engines}
        turns: dict[str, list] = {}
        senko_t: list[float] = []
        senko_turns: list = []
        for _ in range(args.runs):
            for name, engine in engines.items():
                t = time.perf_counter()
                r = engine.diarize(clip["audio"], DiarizeRequest())
                times[name].append(time.perf_counter() - t)
                turns[name] = r.speaker_turns or []
            if senko:
                s, segs = senko.diarize(wav)
                senko_t.append(s)
                senko_turns = [SpeakerTurn(start=a, end=b, speaker=c) for a, b, c in segs]
        dur = len(clip["audio"]) / q.SR
        print(f"{clip['name']} ({dur:.0f} s, {clip['num_speakers']} speakers):")
        sk = None
        if senko:
            sk = q.score(clip, senko_turns, mode="auto", seconds=statistics.median(senko_t))
        for name in [*engines, "senko"]:
            if name == "senko":
                if sk is None:
                    continue
                row, runs = sk, senko_t
            else:
                row = q.score(
                    clip, turns[name], mode="auto", seconds=statistics.median(times[name])
                )
                runs = times[name]
            line = (
                f"    {name:50s} median {row['seconds']:6.1f} s  RTF {row['seconds'] / dur:.4f}  "
                f"DER {100 * row['der']:5.1f}% (c0.25 {100 * row['der_c25']:5.1f}%)  "
                f"found {row['found']}  runs {[round(x, 1) for x in runs]}"
            )
            if sk is not None and name != "senko":
                line += f"  time/senko {row['seconds'] / sk['seconds']:.2f}"
            print(line, flush=True)
        if args.profile:
            for name, engine in engines.items():
                print(f"    profile {name} (one run): {profile(engine, clip)}", flush=True)
    if senko:
        senko.close()
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
