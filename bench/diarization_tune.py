"""Calibrates the clustering on the bench set: segmentation and embeddings once per clip,
then every clustering setting on them (seconds per setting instead of minutes).

    flock /tmp/wxs-heavy.lock python bench/diarization_tune.py [--set field=value ...]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import diarization_quality as q


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--threshold", default="0.35,0.45,0.55,0.65")
    ap.add_argument("--min-cluster", default="2,5")
    ap.add_argument("--min-active", default="0.5,2")
    ap.add_argument("--merge", default="0.3")
    ap.add_argument("--only")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--json", type=Path, help="write the rows of the last setting here")
    args = ap.parse_args()
    from common.schemas import DiarizeRequest
    from deployments.diarization_pipeline import ClusteringParams, CosineClustering

    print(f"load average {os.getloadavg()}")
    clips = q.load_clips(q.DATA, args.only)
    engine = q.our_engine(dict(kv.split("=", 1) for kv in args.set))
    pipe = engine._pipeline
    import pickle

    cache_file = q.DATA.parent / "results" / f"tune-cache-{'_'.join(sorted(args.set))}.pkl"
    cache: dict[str, tuple] = {}
    if cache_file.exists():
        cache = pickle.loads(cache_file.read_bytes())
    current = {"name": ""}
    get_seg, get_emb = pipe.get_segmentations, pipe.get_embeddings

    def seg(file, hook=None):
        key = current["name"]
        if key not in cache:
            cache[key] = (get_seg(file, hook=hook), None)
        return cache[key][0]

    def emb(file, binary, exclude_overlap=False, hook=None):
        key = current["name"]
        s, e = cache[key]
        if e is None:
            e = get_emb(file, binary, exclude_overlap=exclude_overlap, hook=hook)
            cache[key] = (s, e)
        return e

    pipe.get_segmentations, pipe.get_embeddings = seg, emb
    grid = itertools.product(
        *(
            map(float, v.split(","))
            for v in (args.threshold, args.min_cluster, args.min_active, args.merge)
        )
    )
    summary = []
    saved = False
    if any(c["name"] not in cache for c in clips):
        import numpy as np

        class _One:  # fills the cache; the clustering does not matter
            def __call__(self, embeddings, segmentations, **_):
                hard = np.zeros(embeddings.shape[:2], dtype=np.int8)
                return hard, None, np.zeros((1, embeddings.shape[2]))

        pipe.clustering = _One()
        for clip in clips:
            current["name"] = clip["name"]
            engine.diarize(clip["audio"], DiarizeRequest())
        cache_file.parent.mkdir(exist_ok=True)
        cache_file.write_bytes(pickle.dumps(cache))
        saved = True
    for th, mcs, mas, md in grid:
        pipe.clustering = CosineClustering(
            ClusteringParams(
                threshold=th, min_cluster_seconds=mcs, min_active_seconds=mas, merge_distance=md
            ),
            engine._config.embedding_stride,
        )
        rows = []
        for clip in clips:
            current["name"] = clip["name"]
            for num in (None, clip["num_speakers"]):
                r = engine.diarize(clip["audio"], DiarizeRequest(num_speakers=num))
                row = q.score(
                    {**clip, "turns": clip["turns"]},
                    r.speaker_turns or [],
                    mode="true-count" if num else "auto",
                    seconds=0.0,
                )
                rows.append(row)
        if not saved:
            cache_file.parent.mkdir(exist_ok=True)
            cache_file.write_bytes(pickle.dumps(cache))
            saved = True
        multi = [r for r in rows if r["true"] > 1]
        auto = [r for r in multi if r["mode"] == "auto"]
        tc = [r for r in multi if r["mode"] == "true-count"]
        ones = [r for r in rows if r["true"] == 1 and r["mode"] == "auto"]

        def der(rs):
            return 100 * sum(r["der"] * r["total"] for r in rs) / sum(r["total"] for r in rs)

        exact = sum(r["found"] == r["true"] for r in auto)
        worse = sum(
            a["der"] > t["der"] + 0.005 for a, t in zip(tc, auto, strict=True)
        )  # true count worse than auto
        line = (
            f"th={th:.2f} mcs={mcs:g} mas={mas:g} md={md:g}: auto DER {der(auto):.1f}% exact "
            f"{exact}/{len(auto)} 1spk-ok {sum(r['found'] == 1 for r in ones)}/{len(ones)} | "
            f"true-count DER {der(tc):.1f}%, worse than auto on {worse} clips"
        )
        print(line, flush=True)
        summary.append(line)
        if args.json:
            import json

            for r in rows:
                r["der_num"] = r["der"] * r["total"]
            args.json.write_text(json.dumps(rows, indent=1))
            print(q.table(rows, line))
        if args.verbose:
            for r in rows:
                print(
                    f"    {r['clip']:22s} {r['mode']:10s} {100 * r['der']:5.1f}% "
                    f"{r['found']}/{r['true']}"
                )
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
