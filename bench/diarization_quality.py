"""Diarization quality on the bench set (bench/diarization_data.py builds it): DER, speaker
count, WER and cpWER, for our engine and for the plain pyannote pipeline it replaced.

    flock /tmp/wxs-heavy.lock python bench/diarization_quality.py [--side ours|pyannote|service]
        [--true-count] [--set field=value ...] [--only KIND] [--json OUT] [--url URL]

* ``ours``: ``DiarizationEngine`` in-process with the offline parts (segmentation-3.0 +
  CAM++) and the configuration defaults; ``--set`` overrides DiarizationConfig fields.
* ``pyannote``: the plain library ``SpeakerDiarization`` on the same models, configured as
  this service was before (step 0.1, AgglomerativeClustering average/0.5/min size 12).
* ``service``: the running service at ``--url`` (``make run``), each clip uploaded as a
  speech-to-text task with ``diarize=true`` (ASR, alignment, diarization); DER from the
  result's ``speaker_turns``, WER/cpWER from its own speaker-labelled words, and a check
  that the srt / vtt / txt / tsv downloads say exactly what the JSON segments say (words,
  numbers, punctuation, speaker labels), on every clip.
* ``--true-count``: also runs each clip with ``num_speakers`` = its true count.

DER is pyannote.metrics' ``DiarizationErrorRate`` with overlap scored; "collar 0.25" is
+-0.25 s around each reference boundary (pyannote's ``collar=0.5``, the total width).
Figures per clip type are pooled over its clips (total error / total speech). WER and
cpWER (meeteval) use faster-whisper tiny.en words (cached per clip) labelled by the
service's word-speaker assignment, both sides normalised by Whisper's English normaliser;
they exist only for clips with known text (espeak, real-text).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

for _k, _v in {
    "PYANNOTE_METRICS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}.items():
    os.environ.setdefault(_k, _v)

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
MODELS = Path(os.environ.get("WHISPERX_SERVE_MODELS_DIR", REPO.parent / "shared" / "models"))
DATA = Path(__file__).resolve().parent / ".data" / "diarization"
SR = 16_000


def load_clips(data: Path, only: str | None, names: str | None = None) -> list[dict]:
    from faster_whisper import decode_audio

    clips = []
    for meta in sorted(data.glob("*.json")):
        clip = json.loads(meta.read_text())
        if only and not any(o in clip["kind"] for o in only.split(",")):
            continue
        if names and clip["name"] not in names.split(","):
            continue
        clip["audio"] = np.asarray(
            decode_audio(str(meta.with_suffix(".wav")), sampling_rate=SR), dtype=np.float32
        )
        clips.append(clip)
    return clips


def reference(clip: dict):
    from pyannote.core import Annotation, Segment

    ref = Annotation(uri=clip["name"])
    i = 0
    for t in clip["turns"]:
        for a, b in t.get("speech") or [(t["start"], t["end"])]:
            ref[Segment(a, b), i] = t["speaker"]
            i += 1
    return ref


def hypothesis(name: str, turns: list) -> object:
    from pyannote.core import Annotation, Segment

    hyp = Annotation(uri=name)
    for i, t in enumerate(turns):
        hyp[Segment(t.start, t.end), i] = t.speaker
    return hyp


# ------------------------------------------------------------------------------ sides


def our_engine(overrides: dict[str, str]):
    from common.config import DiarizationConfig
    from deployments.diarization import DiarizationEngine

    fields: dict[str, object] = {
        "pipeline": None,
        "segmentation": "diarization/segmentation-3.0",
        "embedding": "diarization/campplus-cn-en-common/campplus_cn_en_common.pt",
    }
    fields.update(overrides)
    return DiarizationEngine(DiarizationConfig.model_validate(fields), models_dir=MODELS)


class PlainPyannote:
    """The plain library pipeline on the same models, as this service configured it before."""

    def __init__(self) -> None:
        import torch
        from pyannote.audio import Model
        from pyannote.audio.pipelines import SpeakerDiarization

        from deployments.campplus import load_campplus
        from deployments.diarization import _placeholder_plda

        torch.set_num_threads(2)
        seg = Model.from_pretrained(str(MODELS / "diarization/segmentation-3.0"))
        emb = load_campplus(
            MODELS / "diarization/campplus-cn-en-common/campplus_cn_en_common.pt",
            torch.device("cpu"),
        )
        self.pipeline = SpeakerDiarization(
            segmentation=seg,
            embedding=emb,
            embedding_exclude_overlap=True,
            plda=_placeholder_plda(),
            clustering="AgglomerativeClustering",
            embedding_batch_size=16,
            segmentation_batch_size=16,
        )
        self.pipeline.instantiate(
            {
                "segmentation": {"min_duration_off": 0.0},
                "clustering": {"method": "average", "min_cluster_size": 12, "threshold": 0.5},
            }
        )

    def turns(self, audio: np.ndarray, num_speakers: int | None):
        import torch

        from common.schemas import SpeakerTurn

        out = self.pipeline(
            {"waveform": torch.from_numpy(audio)[None], "sample_rate": SR},
            num_speakers=num_speakers,
        )
        ann = getattr(out, "speaker_diarization", out)
        return [
            SpeakerTurn(start=s.start, end=s.end, speaker=str(label))
            for s, _, label in ann.itertracks(yield_label=True)
        ]


class Service:
    """The running service over HTTP: one speech-to-text task per clip, polled to its end."""

    FORMATS = ("srt", "vtt", "txt", "tsv")

    def __init__(self, url: str) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=60)
        self.http.get("/health/ready").raise_for_status()
        self.subtitle_problems: dict[str, list[str]] = {}
        self.words: dict[tuple[str, int | None], list[dict]] = {}

    def transcribe(self, clip: dict, num_speakers: int | None) -> dict:
        import io
        import wave

        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SR)
            w.writeframes((np.clip(clip["audio"], -1, 1) * 32767).astype("<i2").tobytes())
        params = {"diarize": "true", "language": "en"}
        if num_speakers is not None:
            params["num_speakers"] = str(num_speakers)
        r = self.http.post(
            "/speech-to-text",
            params=params,
            files={"file": (f"{clip['name']}.wav", buf.getvalue(), "audio/wav")},
        )
        r.raise_for_status()
        task_id = r.json()["identifier"]
        deadline = time.monotonic() + 1800
        while True:
            task = self.http.get(f"/task/{task_id}").json()
            if task["status"] in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{clip['name']}: task {task_id} still {task['status']}")
            time.sleep(0.5)
        if task["status"] != "completed":
            raise RuntimeError(f"{clip['name']}: task {task_id} {task['status']}: {task}")
        rendered = {
            fmt: self.http.get(f"/task/{task_id}/result", params={"format": fmt}).text
            for fmt in self.FORMATS
        }
        key = f"{clip['name']} {'auto' if num_speakers is None else 'true-count'}"
        self.subtitle_problems[key] = subtitle_mismatches(task["result"], rendered)
        return task["result"]


_LABEL = re.compile(r"^\[([^\]]+)\]: ")


def _cue_blocks(text: str, fmt: str) -> list[tuple[str | None, str]]:
    """(speaker, text) of each cue of an srt / vtt file; a cue's lines joined by a space."""
    body = text.removeprefix("WEBVTT") if fmt == "vtt" else text
    out = []
    for block in re.split(r"\n\s*\n", body.strip()):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        timed = next((i for i, ln in enumerate(lines) if "-->" in ln), None)
        if timed is None:
            continue
        joined = " ".join(lines[timed + 1 :])
        label = _LABEL.match(joined)
        out.append((label.group(1) if label else None, _LABEL.sub("", joined)))
    return out


def subtitle_mismatches(result: dict, rendered: dict[str, str]) -> list[str]:
    """Where a text download does not say what the JSON segments say: the same words in the
    same order, each under the same speaker label."""
    segments = [s for s in result["segments"] if s["text"].strip()]
    want = [(s.get("speaker"), tok) for s in segments for tok in s["text"].split()]
    problems = []
    for fmt, text in rendered.items():
        if fmt in ("srt", "vtt"):
            got = [(spk, tok) for spk, cue in _cue_blocks(text, fmt) for tok in cue.split()]
        elif fmt == "txt":
            got = []
            for line in text.splitlines():
                label = _LABEL.match(line)
                got += [
                    (label.group(1) if label else None, t) for t in _LABEL.sub("", line).split()
                ]
        else:  # tsv: start, end, text[, speaker]
            rows = [line.split("\t") for line in text.splitlines()[1:] if line.strip()]
            got = [((r[3] or None) if len(r) > 3 else None, t) for r in rows for t in r[2].split()]
        if got != want:
            first = next(
                (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                min(len(got), len(want)),
            )
            problems.append(
                f"{fmt}: word {first}: {got[first : first + 3]} vs json {want[first : first + 3]}"
                f" ({len(got)} vs {len(want)} words)"
            )
    return problems


# ------------------------------------------------------------------------------ text


def asr_words(clip: dict) -> list[dict]:
    """tiny.en words with times for one clip, cached next to the data."""
    cache = DATA / "asr" / f"{clip['name']}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from faster_whisper import WhisperModel

    global _ASR
    if "_ASR" not in globals():
        _ASR = WhisperModel(
            str(MODELS / "asr/faster-whisper-tiny.en"),
            device="cpu",
            compute_type="int8",
            cpu_threads=2,
            local_files_only=True,
        )
    segments, _ = _ASR.transcribe(clip["audio"], language="en", word_timestamps=True)
    words = [
        {"word": w.word, "start": w.start, "end": w.end} for s in segments for w in (s.words or [])
    ]
    cache.parent.mkdir(exist_ok=True)
    cache.write_text(json.dumps(words))
    return words


def text_scores(clip: dict, turns: list, service_words: list | None = None):
    """(WER, cpWER, reference words) of the speaker-labelled transcript, or None.

    ``service_words``: the service's own words, each with its speaker; otherwise tiny.en
    words in-process, labelled from ``turns`` by the service's assignment."""
    if not all(t.get("text") for t in clip["turns"]):
        return None
    from meeteval.wer import cp_word_error_rate
    from whisper_normalizer.english import EnglishTextNormalizer

    from common.schemas import Segment, Transcript, Word
    from deployments.diarization import DiarizationEngine

    norm = EnglishTextNormalizer()
    if service_words is not None:
        return _wer_cpwer(
            clip, norm, [(w.word, w.speaker or "none") for w in service_words], cp_word_error_rate
        )
    words = asr_words(clip)
    transcript = Transcript(
        segments=[
            Segment(
                start=w["start"],
                end=w["end"],
                text=w["word"],
                words=[Word(word=w["word"], start=w["start"], end=w["end"])],
            )
            for w in words
        ]
    )
    labelled = DiarizationEngine._assign(transcript, turns)
    labelled_words = [(w.word, w.speaker or "none") for s in labelled.segments for w in s.words]
    return _wer_cpwer(clip, norm, labelled_words, cp_word_error_rate)


def _wer_cpwer(clip: dict, norm, words: list[tuple[str, str]], cp_word_error_rate):
    import jiwer

    ref_by: dict[str, list[str]] = defaultdict(list)
    for t in clip["turns"]:
        ref_by[t["speaker"]].append(norm(t["text"]))
    hyp_by: dict[str, list[str]] = defaultdict(list)
    for word, speaker in words:
        hyp_by[speaker].append(norm(word))
    ref_all = norm(" ".join(t["text"] for t in clip["turns"]))
    hyp_all = norm(" ".join(word for word, _ in words))
    wer = jiwer.wer(ref_all, hyp_all)
    refs = [" ".join(v).strip() for _, v in sorted(ref_by.items())]
    hyps = [" ".join(v).strip() for _, v in sorted(hyp_by.items())]
    cp = cp_word_error_rate(refs, hyps)
    return wer, cp.error_rate, len(ref_all.split())


# ------------------------------------------------------------------------------ scoring


def detection_miss(clip: dict, hyp) -> tuple[float, float]:
    """(missed speech seconds, reference speech seconds), speaker-agnostic."""
    from pyannote.metrics.detection import DetectionErrorRate

    d = DetectionErrorRate(collar=0.0)(reference(clip), hyp, detailed=True)
    return d["miss"], d["total"]


def count_timeline(count) -> object:
    """Where the segmentation alone hears speech (its speaker count > 0), as an Annotation."""
    from pyannote.core import Annotation, Segment

    ann = Annotation()
    sw, active = count.sliding_window, count.data[:, 0] > 0
    i = 0
    while i < len(active):
        if active[i]:
            j = i
            while j + 1 < len(active) and active[j + 1]:
                j += 1
            ann[Segment(sw[i].middle - sw.step / 2, sw[j].middle + sw.step / 2)] = "speech"
            i = j + 1
        else:
            i += 1
    return ann


def run(side, clips, *, true_count: bool) -> list[dict]:
    from common.schemas import DiarizeRequest, Transcript

    counts: list = []
    if not isinstance(side, Service):  # the segmentation's own speech, for the miss figure
        pipe = side.pipeline if isinstance(side, PlainPyannote) else side._pipeline
        original_count = pipe.speaker_count

        def recording_count(*a, **k):
            out = original_count(*a, **k)
            counts.append(out)
            return out

        pipe.speaker_count = recording_count
    rows = []
    for clip in clips:
        modes = [None] + ([clip["num_speakers"]] if true_count else [])
        for num in modes:
            started = time.perf_counter()
            words = None
            if isinstance(side, Service):
                result = Transcript.model_validate(side.transcribe(clip, num))
                turns = result.speaker_turns or []
                words = [w for seg in result.segments for w in seg.words]
            elif isinstance(side, PlainPyannote):
                turns = side.turns(clip["audio"], num)
            else:
                result = side.diarize(clip["audio"], DiarizeRequest(num_speakers=num))
                turns = result.speaker_turns or []
            seconds = time.perf_counter() - started
            mode = "true-count" if num else "auto"
            rows.append(score(clip, turns, mode=mode, seconds=seconds, words=words))
            r = rows[-1]
            if counts:  # speech missed by ours vs by the segmentation model's own activity
                r["our_miss"], r["speech"] = detection_miss(clip, hypothesis(clip["name"], turns))
                r["seg_miss"], _ = detection_miss(clip, count_timeline(counts[-1]))
                counts.clear()
            print(
                f"  {clip['name']:22s} {r['mode']:10s} DER {100 * r['der']:5.1f}% "
                f"spk {r['found']}/{r['true']} {seconds:5.1f}s",
                flush=True,
            )
    return rows


def score(clip: dict, turns: list, *, mode: str, seconds: float, words: list | None = None) -> dict:
    from pyannote.metrics.diarization import DiarizationErrorRate

    ref, hyp = reference(clip), hypothesis(clip["name"], turns)
    row: dict = {
        "clip": clip["name"],
        "kind": clip["kind"],
        "mode": mode,
        "true": clip["num_speakers"],
        "found": len({t.speaker for t in turns}),
        "turns": len(turns),
        "seconds": seconds,
        "duration": len(clip["audio"]) / SR,
    }
    for collar, tag in ((0.0, ""), (0.5, "_c25")):
        d = DiarizationErrorRate(collar=collar, skip_overlap=False)(ref, hyp, detailed=True)
        row["total" + tag] = d["total"]
        for key, short in (
            ("missed detection", "miss"),
            ("false alarm", "fa"),
            ("confusion", "conf"),
        ):
            row[short + tag] = d[key]
        row["der" + tag] = d["diarization error rate"]
    text = text_scores(clip, turns, words)
    if text is not None:
        row["wer"], row["cpwer"], row["ref_words"] = text
    return row


def table(rows: list[dict], title: str) -> str:
    out = [
        f"\n{title}\n",
        "| clip type | mode | clips | DER | DER c0.25 | miss | FA | conf | count exact | "
        "WER | cpWER | RTF | speech missed: ours / segmentation alone |",
        "| --- | --- " + "| ---: " * 11 + "|",
    ]
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["kind"], r["mode"])].append(r)
        if not r["kind"].endswith("1spk"):
            groups[("ALL multi-speaker", r["mode"])].append(r)
        if r["kind"].startswith("real") and not r["kind"].endswith("1spk"):
            groups[("all real multi-speaker", r["mode"])].append(r)
    for (kind, mode), g in sorted(groups.items()):
        total = sum(r["total"] for r in g)
        total_c = sum(r["total_c25"] for r in g)

        def pct(key: str, tot: float = total, rows: list[dict] = g) -> str:
            return f"{100 * sum(r[key] for r in rows) / tot:.1f}%"

        exact = sum(r["found"] == r["true"] for r in g)
        text = [r for r in g if "wer" in r]
        words = sum(r["ref_words"] for r in text)
        wer = f"{100 * sum(r['wer'] * r['ref_words'] for r in text) / words:.1f}%" if text else "-"
        cpwer = (
            f"{100 * sum(r['cpwer'] * r['ref_words'] for r in text) / words:.1f}%" if text else "-"
        )
        rtf = sum(r["seconds"] for r in g) / sum(r["duration"] for r in g)
        der_c = 100 * sum(r["der_c25"] * r["total_c25"] for r in g) / max(total_c, 1e-9)
        seg = [r for r in g if "seg_miss" in r]
        speech = sum(r["speech"] for r in seg)
        missed = (
            f"{100 * sum(r['our_miss'] for r in seg) / speech:.1f}% / "
            f"{100 * sum(r['seg_miss'] for r in seg) / speech:.1f}%"
            if speech
            else "-"
        )
        out.append(
            f"| {kind} | {mode} | {len(g)} | {pct('der_num')} | {der_c:.1f}% | {pct('miss')} | "
            f"{pct('fa')} | {pct('conf')} | {exact}/{len(g)} | {wer} | {cpwer} | {rtf:.3f} | "
            f"{missed} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--side", choices=["ours", "pyannote", "service"], default="ours")
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="the service (--side service)")
    ap.add_argument("--true-count", action="store_true")
    ap.add_argument("--only", help="clip types containing one of these (comma-separated)")
    ap.add_argument("--clips", help="only these clip names (comma-separated)")
    ap.add_argument("--set", action="append", default=[], help="DiarizationConfig field=value")
    ap.add_argument("--json", type=Path, help="write the per-clip rows here")
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()}")
    clips = load_clips(args.data, args.only, args.clips)
    if args.side == "service":
        side = Service(args.url)
    elif args.side == "pyannote":
        side = PlainPyannote()
    else:
        side = our_engine(dict(kv.split("=", 1) for kv in args.set))
    rows = run(side, clips, true_count=args.true_count)
    for r in rows:
        r["der_num"] = r["der"] * r["total"]
    print(table(rows, f"side={args.side} set={args.set}"))
    if isinstance(side, Service):
        bad = {k: v for k, v in side.subtitle_problems.items() if v}
        print(
            f"\nsubtitles (srt, vtt, txt, tsv) say what the JSON says on "
            f"{len(side.subtitle_problems) - len(bad)} of {len(side.subtitle_problems)} results"
        )
        for key, problems in bad.items():
            print(f"  {key}: {'; '.join(problems)}")
    print(f"load average {os.getloadavg()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
