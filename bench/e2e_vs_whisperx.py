"""End-to-end wall time through the service vs the plain whisperx library, in one run.

Same audio, same models (the offline bundle), same device (CPU here), same work: ASR with
tiny.en, then pyannote diarization (segmentation-3.0 + CAM++) and
``whisperx.assign_word_speakers``. No word alignment on either side (the bundle has no
wav2vec2). Both sides have their models loaded before timing starts. The plain side is
``whisperx.load_model(...).transcribe`` plus the diarization pipeline, called in this
process; the service side is submit → terminal WebSocket event → ``GET /task``.

Clips: pyannote's two-speaker sample (30 s) and a ~5 min mix of it and jfk.flac.

    .venv/bin/python bench/e2e_vs_whisperx.py --runs 3

Prints per-clip medians and the ratio service / plain (overhead of the graph).
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

    service = c.start_service()
    try:
        served = {
            name: [asyncio.run(c.run_task(service, path, align="false")) for _ in range(args.runs)]
            for name, path in clips.items()
        }
    finally:
        c.stop_service()

    rows = []
    for name in clips:
        p, s = c.median(plain_times[name]), c.median(served[name])
        rows.append([name, p, s, s / p])
    c.table(
        ["clip", "plain whisperx s", "service s", "service / plain"],
        rows,
        note=f"medians of {args.runs} runs, CPU; {c.machine_note()}",
    )


if __name__ == "__main__":
    main()
