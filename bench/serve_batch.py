"""Does cross-request batching (``@serve.batch``) raise ASR throughput on this machine?

whisperx already batches the VAD windows of one file into one CTranslate2 ``generate``
call (``batch_size``). Cross-request batching would also put windows of *different*
requests into one call, which only matters when single files do not fill a batch (short
clips) or when a bigger batch runs faster per window.

One small Serve deployment (its own, not the service's) loads tiny.en once and serves
these paths over the same model, measured in the same run on the same clip:

- ``plain``: the production path. ``pipeline.transcribe(audio, batch_size=B)`` under a
  lock, one request at a time (as ``AsrEngine`` does).
- ``serve.batch max N``: VAD + log-mel per request (one VAD at a time), then every window
  goes through a ``@serve.batch(max_batch_size=N)`` method, so windows of concurrent
  requests can share one ``generate`` call. ``max 1`` never batches: against ``plain`` it
  shows what overlapping one request's VAD with another's decoding is worth on its own.
  Serve forms a batch from what arrived within ``batch_wait_timeout_s`` and then queues
  it behind the running one (``max_concurrent_batches=1``), so a short wait yields
  batches of one when windows trickle in; the long-wait mode lets them accumulate.
- ``parallel VAD``: the same, but the VADs of concurrent requests run at once, so their
  windows reach the batcher together (``max 1`` again isolates the batching).

``--concurrency`` clients each send the clip ``--rounds`` times; throughput is seconds of
audio transcribed per wall second. The modes are interleaved round by round so a change
in machine load hits all of them alike. A second table times ``generate`` alone on 1, 2,
4, 8, 16 copies of one window: whether a bigger batch is cheaper per window at all here.

    .venv/bin/python bench/serve_batch.py --seconds 30 --concurrency 8 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
from typing import Any

import _common as c
import numpy as np
from ray import serve

SR = 16_000


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0})
class BatchBench:
    def __init__(self, model: str, batch_size: int, threads: int) -> None:
        import torch
        import whisperx

        torch.set_num_threads(1)  # as AsrEngine: torch runs only the VAD here
        self._pipeline: Any = whisperx.load_model(
            model, "cpu", compute_type="int8", language="en", local_files_only=True, threads=threads
        )
        self._batch_size = batch_size
        self._model_lock = threading.Lock()  # one CTranslate2 call at a time, as in AsrEngine
        self._vad_lock = threading.Lock()
        self.batches: list[int] = []  # windows per generate call, read by the driver

    def set_max_batch(self, size: int, wait_s: float) -> None:
        self.generate.set_max_batch_size(size)
        self.generate.set_batch_wait_timeout_s(wait_s)

    # ------------------------------------------------------------------ production path

    async def plain(self, audio: np.ndarray) -> list[str]:
        return await asyncio.to_thread(self._plain, audio)

    def _plain(self, audio: np.ndarray) -> list[str]:
        with self._model_lock:
            out = self._pipeline.transcribe(audio, batch_size=self._batch_size)
        return [str(s["text"]) for s in out["segments"]]

    # ------------------------------------------------------------------ cross-request path

    async def batched(self, audio: np.ndarray) -> list[str]:
        windows = await asyncio.to_thread(self._windows, audio, True)
        return list(await asyncio.gather(*(self.generate(w) for w in windows)))

    async def batched_parallel_vad(self, audio: np.ndarray) -> list[str]:
        """As ``batched``, but the VADs of concurrent requests run at the same time."""
        windows = await asyncio.to_thread(self._windows, audio, False)
        return list(await asyncio.gather(*(self.generate(w) for w in windows)))

    def _windows(self, audio: np.ndarray, one_vad_at_a_time: bool = True) -> list[Any]:
        """VAD and log-mel features, exactly as ``FasterWhisperPipeline.transcribe``."""
        from whisperx.vads import Pyannote, Vad

        pipeline = self._pipeline
        vad = pipeline.vad_model
        if isinstance(vad, Vad):
            waveform, merge = vad.preprocess_audio(audio), vad.merge_chunks
        else:
            waveform, merge = Pyannote.preprocess_audio(audio), Pyannote.merge_chunks
        with self._vad_lock if one_vad_at_a_time else contextlib.nullcontext():
            segments = vad({"waveform": waveform, "sample_rate": SR})
        segments = merge(
            segments,
            30,
            onset=pipeline._vad_params["vad_onset"],
            offset=pipeline._vad_params["vad_offset"],
        )
        return [
            pipeline.preprocess({"inputs": audio[int(s["start"] * SR) : int(s["end"] * SR)]})[
                "inputs"
            ]
            for s in segments
        ]

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def generate(self, windows: list[Any]) -> list[str]:
        return await asyncio.to_thread(self._generate, windows)

    def _generate(self, windows: list[Any]) -> list[str]:
        import torch

        pipeline = self._pipeline
        with self._model_lock:
            out = pipeline.model.generate_segment_batched(
                torch.stack(windows).numpy(), pipeline.tokenizer, pipeline.options
            )
        self.batches.append(len(windows))
        return [str(t) for t in out["text"]]

    def sweep(self, audio: np.ndarray, sizes: list[int], repeats: int) -> dict[int, float]:
        """Median seconds per window of ``generate`` on ``size`` copies of the first window."""
        import torch

        window = self._windows(audio)[0]
        out: dict[int, float] = {}
        for size in sizes:
            batch = torch.stack([window] * size).numpy()
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                with self._model_lock:
                    self._pipeline.model.generate_segment_batched(
                        batch, self._pipeline.tokenizer, self._pipeline.options
                    )
                times.append((time.perf_counter() - started) / size)
            out[size] = float(np.median(times))
        return out

    def take_batch_sizes(self) -> list[int]:
        sizes, self.batches[:] = list(self.batches), []
        return sizes


async def one_round(
    handle: Any, method: str, audio: np.ndarray, clients: int
) -> tuple[float, list[list[str]]]:
    started = time.perf_counter()
    results = await asyncio.gather(*(getattr(handle, method).remote(audio) for _ in range(clients)))
    return time.perf_counter() - started, list(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4, help="whisperx batch_size (B)")
    parser.add_argument("--max-batch", type=int, default=16, help="bigger serve.batch size (M)")
    parser.add_argument("--wait-s", type=float, default=0.05, help="batch_wait_timeout_s")
    parser.add_argument(
        "--long-wait-s", type=float, default=1.0, help="a wait about one generate call long"
    )
    parser.add_argument("--threads", type=int, default=2, help="CTranslate2 cpu threads")
    parser.add_argument("--sweep-repeats", type=int, default=5)
    args = parser.parse_args()

    import ray

    from deployments.audio import decode_audio

    clip = c.speech_clip(args.seconds, c.temp_dir("bench-audio-") / "clip.wav")
    audio = decode_audio(clip)
    ray.init(
        address="local",
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": c.ENV},
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": c.free_port()})  # never 8000
        handle = serve.run(
            BatchBench.bind(
                str(c.MODELS / "asr" / "faster-whisper-tiny.en"), args.batch_size, args.threads
            ),
            name="serve-batch-bench",
            route_prefix=None,
        )
        b, m, short, long = args.batch_size, args.max_batch, args.wait_s, args.long_wait_s
        modes: dict[str, tuple[str, int | None, float]] = {
            "plain": ("plain", None, 0.0),
            f"serve.batch max 1, wait {short}": ("batched", 1, short),
            f"serve.batch max {b}, wait {short}": ("batched", b, short),
            f"serve.batch max {m}, wait {short}": ("batched", m, short),
            f"serve.batch max {m}, wait {long}": ("batched", m, long),
            f"parallel VAD, serve.batch max 1, wait {short}": ("batched_parallel_vad", 1, short),
            f"parallel VAD, serve.batch max {b}, wait {short}": ("batched_parallel_vad", b, short),
        }
        # warm-up: every path once
        for method, size, wait in modes.values():
            if size is not None:
                handle.set_max_batch.remote(size, wait).result()
            asyncio.run(one_round(handle, method, audio, 1))
        handle.take_batch_sizes.remote().result()

        walls: dict[str, list[float]] = {name: [] for name in modes}
        sizes: dict[str, list[int]] = {name: [] for name in modes}
        texts: dict[str, list[str]] = {}
        for _ in range(args.rounds):
            for name, (method, size, wait) in modes.items():
                if size is not None:
                    handle.set_max_batch.remote(size, wait).result()
                wall, results = asyncio.run(one_round(handle, method, audio, args.concurrency))
                walls[name].append(wall)
                sizes[name].extend(handle.take_batch_sizes.remote().result())
                texts.setdefault(name, " ".join(results[0]).split())
        windows = len(handle.batched.remote(audio).result())
        handle.take_batch_sizes.remote().result()
        per_window = handle.sweep.remote(audio, [1, 2, 4, 8, 16], args.sweep_repeats).result()
    finally:
        serve.shutdown()
        ray.shutdown()

    audio_s = args.seconds * args.concurrency
    base = audio_s / c.median(walls["plain"])
    rows = []
    for name in modes:
        throughput = audio_s / c.median(walls[name])
        mean_batch = float(np.mean(sizes[name])) if sizes[name] else float(args.batch_size)
        same = (
            "yes"
            if texts[name] == texts["plain"]
            else f"no ({_diff(texts[name], texts['plain'])} words differ)"
        )
        rows.append(
            [
                name,
                c.median(walls[name]),
                throughput,
                throughput / base,
                mean_batch if sizes[name] else "-",
                same,
            ]
        )
    c.table(
        [
            "mode",
            "wall s (median)",
            "audio s / s",
            "vs plain",
            "mean windows/generate",
            "same text",
        ],
        rows,
        note=(
            f"{args.concurrency} concurrent requests x {args.seconds:.0f} s clip, medians of "
            f"{args.rounds} rounds, tiny.en int8, {args.threads} CTranslate2 threads, "
            f"{windows} VAD window(s) per request\n"
            f"{c.machine_note()}"
        ),
    )
    c.table(
        ["windows per generate", "ms per window", "vs 1"],
        [[n, t * 1000, t / per_window[1]] for n, t in per_window.items()],
        note=f"generate alone on copies of one window, medians of {args.sweep_repeats}",
    )


def _diff(a: list[str], b: list[str]) -> int:
    return sum(1 for x, y in zip(a, b, strict=False) if x != y) + abs(len(a) - len(b))


if __name__ == "__main__":
    main()
