"""End-to-end wall time through the service vs the plain whisperx library, in one run.

Same audio, same models (the offline bundle), same device (CPU here), same work: ASR with
tiny.en, then pyannote diarization (segmentation-3.0 + CAM++) and
``whisperx.assign_word_speakers``. No word alignment on either side (the bundle has no
wav2vec2). Both sides have their models loaded before timing starts. The plain side is
``whisperx.load_model(...).transcribe`` plus the diarization pipeline, called in this
process; the service side is submit → terminal WebSocket event → ``GET /task``.

Clips: pyannote's two-speaker sample (30 s) and a ~5 min mix of it and jfk.flac.

The service runs twice, as shipped (diarization beside ASR: ``runner.diarize_alongside_asr``)
and with diarization after ASR, each after one untimed task that wakes every replica (the
local config starts diarization at zero replicas).

    .venv/bin/python bench/e2e_vs_whisperx.py --runs 3

Prints per-clip medians and the ratios service / plain.
"""

from __future__ import annotations

import argparse
import asyncio

import _common as c


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--long", type=float, default=300.0, help="long clip seconds")
    args = parser.parse_args()
    tmp = c.temp_dir("bench-audio-")
    clips = {
        "30 s (2 speakers)": c.speech_clip(30, tmp / "short.wav"),
        f"{args.long:.0f} s mix": c.speech_clip(args.long, tmp / "long.wav"),
    }

    plain = c.PlainWhisperx()
    plain_times = {name: c.time_plain(plain, path, args.runs) for name, path in clips.items()}
    del plain

    variants = {"beside ASR": True, "after ASR": False}
    served: dict[str, dict[str, list[float]]] = {}
    for variant, alongside in variants.items():
        service = c.start_service({"runner": {"diarize_alongside_asr": alongside}})
        try:
            asyncio.run(c.run_task(service, clips["30 s (2 speakers)"], align="false"))  # warm
            served[variant] = {
                name: [
                    asyncio.run(c.run_task(service, path, align="false")) for _ in range(args.runs)
                ]
                for name, path in clips.items()
            }
        finally:
            c.stop_service()

    rows = []
    for name in clips:
        p = c.median(plain_times[name])
        beside, after = (c.median(served[v][name]) for v in variants)
        rows.append([name, p, beside, after, beside / p, after / p])
    c.table(
        [
            "clip",
            "plain whisperx s",
            "service, diarization beside ASR s",
            "service, after ASR s",
            "beside / plain",
            "after / plain",
        ],
        rows,
        note=f"medians of {args.runs} runs, CPU; {c.machine_note()}",
    )


if __name__ == "__main__":
    main()
