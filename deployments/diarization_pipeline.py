"""pyannote's ``SpeakerDiarization`` with batched CAM++ embeddings and a clustering made for them.

pyannote's pipeline is kept for what it does well: the sliding-window segmentation, the
per-frame speaker count and the reconstruction of turns from clustered local speakers. Two
steps are replaced:

* **embeddings** (``BatchedCamppDiarization.get_embeddings``): the fbank of each window is
  computed once; each local speaker's active frames are cut out, shortened to a multiple of
  ``embedding_quantum`` frames and embedded in batches of equal-length items. pyannote
  otherwise hands CAM++ one masked item at a time (the wrapper loops), so a batch size
  changed nothing. With ``embedding_stride`` N only every N-th window is embedded (the
  embeddings were ~85% of the time); the local speakers of the others are labelled by
  ``_propagate`` from the embedded windows they overlap, so the turns keep the
  segmentation step's resolution at a fraction of the embedding cost. On CPU the network
  runs as a frozen TorchScript graph (``frozen_for_cpu``: batch norms folded, oneDNN).
* **clustering** (``CosineClustering``): average-linkage agglomerative clustering on cosine
  similarity of L2-normalised CAM++ embeddings with a threshold calibrated on the bench set
  (bench/diarization_quality.py), tiny clusters merged into their nearest neighbour, then
  centroid refinement. A requested speaker count (``num_speakers`` / ``min_speakers`` /
  ``max_speakers``) bounds the number of clusters; it is reached by cutting the same tree,
  never by splitting a cluster for size. When too few embeddings qualify (very little speech)
  every active local speaker goes to one speaker instead of none.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pyannote.audio.pipelines import SpeakerDiarization
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import linear_sum_assignment

from deployments.campplus import (
    NUM_MEL_BINS,
    CamPlusPlusEmbedding,
    embed_batched,
    fbank,
    frozen_for_cpu,
    masked_features,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusteringParams:
    threshold: float = 0.45
    """Average-linkage cosine *distance* at which two clusters stop merging."""
    min_cluster_seconds: float = 3.0
    """A cluster with less clean speech than this is merged into its nearest cluster, unless
    that would go below ``min_speakers``. Measured in seconds of audio: each window's
    activity is scaled by step / window, so the value holds for any segmentation step."""
    merge_distance: float = 0.3
    """Two clusters whose centroids are closer than this cosine distance are merged (while
    above ``min_speakers``): average linkage over noisy short-window embeddings splits a
    voice that its centroid shows to be one."""
    min_active_seconds: float = 2.0
    """A local speaker needs this much clean (non-overlapped) speech in a window for its
    embedding to train the clustering; the others are only assigned."""


def _normalise(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)
    return out


def _centroids(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x)
    return _normalise(sums)


def _relabel(labels: np.ndarray) -> np.ndarray:
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse


def _nearest_of(x: np.ndarray, labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Moves the members of clusters not in ``keep`` to the nearest kept centroid."""
    centroids = _centroids(x, labels, int(labels.max()) + 1)[keep]
    out = keep[np.argmax(x @ centroids.T, axis=1)]
    out[np.isin(labels, keep)] = labels[np.isin(labels, keep)]
    return _relabel(out)


def _merge_small(
    x: np.ndarray, labels: np.ndarray, weights: np.ndarray, min_mass: float, floor: int
) -> np.ndarray:
    """Merges clusters lighter than ``min_mass`` into their nearest, lightest first, keeping
    at least ``floor`` clusters."""
    labels = _relabel(labels)
    k = int(labels.max()) + 1
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x)
    mass = np.bincount(labels, weights=weights, minlength=k).astype(float)
    alive = np.ones(k, dtype=bool)
    while alive.sum() > max(floor, 1):
        small = int(np.flatnonzero(alive)[np.argmin(mass[alive])])
        if mass[small] >= min_mass:
            break
        sim = _normalise(sums) @ _normalise(sums[small])
        sim[~alive] = -np.inf
        sim[small] = -np.inf
        target = int(np.argmax(sim))
        sums[target] += sums[small]
        mass[target] += mass[small]
        alive[small] = False
        labels[labels == small] = target
    return _relabel(labels)


def _merge_close(x: np.ndarray, labels: np.ndarray, max_distance: float, floor: int) -> np.ndarray:
    """Merges the two clusters with the closest centroids while their cosine distance is
    below ``max_distance``, keeping at least ``floor`` clusters."""
    labels = _relabel(labels)
    k = int(labels.max()) + 1
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x)
    alive = np.ones(k, dtype=bool)
    while alive.sum() > max(floor, 1):
        c = _normalise(sums)
        sim = c @ c.T
        sim[~alive] = -np.inf
        sim[:, ~alive] = -np.inf
        np.fill_diagonal(sim, -np.inf)
        a, b = np.unravel_index(int(np.argmax(sim)), sim.shape)
        if 1 - sim[a, b] >= max_distance:
            break
        sums[a] += sums[b]
        alive[b] = False
        labels[labels == b] = a
    return _relabel(labels)


def _cut_into(
    tree: np.ndarray, x: np.ndarray, weights: np.ndarray, k: int, min_mass: float
) -> np.ndarray:
    """``k`` clusters from the tree: the finest cut that holds ``k`` clusters of at least
    ``min_mass`` (the rest join their nearest), so a requested count comes from separating
    real groups, not from peeling off a handful of odd embeddings."""
    n = len(x)
    best = None
    for m in range(k, min(n, 4 * k + 16) + 1):
        labels = fcluster(tree, m, criterion="maxclust") - 1
        labels = _relabel(labels)
        mass = np.bincount(labels, weights=weights)
        order = np.argsort(-mass)
        best = _nearest_of(x, labels, np.sort(order[:k]))
        if (mass >= min_mass).sum() >= k:
            break
    assert best is not None
    return best


def cluster_embeddings(
    x: np.ndarray,
    weights: np.ndarray,
    params: ClusteringParams,
    *,
    num: int | None,
    lo: int,
    hi: int,
) -> np.ndarray:
    """Labels ``0..k-1`` for L2-normalised embeddings ``x (n, d)`` of clean-speech ``weights``."""
    n = len(x)
    if n == 1:
        return np.zeros(1, dtype=int)
    if num is not None:
        lo = hi = num
    hi = max(1, min(hi, n))
    lo = max(1, min(lo, hi))
    tree = linkage(x, method="average", metric="cosine")
    labels = _relabel(fcluster(tree, params.threshold, criterion="distance") - 1)
    labels = _merge_small(x, labels, weights, params.min_cluster_seconds, lo)
    labels = _merge_close(x, labels, params.merge_distance, lo)
    k = int(labels.max()) + 1
    if k < lo or k > hi:
        labels = _cut_into(tree, x, weights, max(lo, min(k, hi)), params.min_cluster_seconds)
        k = int(labels.max()) + 1
    # refinement: each embedding to its nearest centroid, unless that empties a cluster
    for _ in range(3):
        new = np.argmax(x @ _centroids(x, labels, k).T, axis=1)
        if len(np.unique(new)) < k:
            break
        labels = new
    return labels


class CosineClustering:
    """Drop-in for pyannote's clustering step (same call and return shapes)."""

    expects_num_clusters = False

    def __init__(self, params: ClusteringParams, embedding_stride: int = 1) -> None:
        self.params = params
        self.embedding_stride = embedding_stride
        """Only every ``embedding_stride``-th window was embedded (see get_embeddings): a
        clean-speech weight stands for that many windows."""

    def __call__(
        self,
        embeddings: np.ndarray,
        segmentations: Any,
        num_clusters: int | None = None,
        min_clusters: int | None = None,
        max_clusters: int | None = None,
        **_: Any,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        data = np.nan_to_num(segmentations.data, nan=0.0)
        num_chunks, num_frames, local = data.shape
        frame_seconds = segmentations.sliding_window.duration / num_frames
        clean = data * (data.sum(axis=2, keepdims=True) == 1)
        clean_seconds = clean.sum(axis=1) * frame_seconds  # (chunks, local)
        active = data.sum(axis=1) > 0
        valid = ~np.isnan(embeddings).any(axis=2)
        train = valid & (clean_seconds >= self.params.min_active_seconds)
        if train.sum() < 2:  # very little speech: the valid ones, else one speaker
            train = valid
        lo = min_clusters or 1
        hi = max_clusters if max_clusters is not None and math.isfinite(max_clusters) else 1000
        if train.sum() == 0:
            hard = np.where(active, 0, -2).astype(np.int8)
            soft = np.where(active[..., None], 1.0, 0.0)
            return hard, soft, np.zeros((1, embeddings.shape[2]))
        x = _normalise(embeddings[train])
        window = segmentations.sliding_window
        overlap = min(1.0, self.embedding_stride * window.step / window.duration)
        labels = cluster_embeddings(
            x,
            np.maximum(clean_seconds[train], frame_seconds) * overlap,
            self.params,
            num=num_clusters,
            lo=int(lo),
            hi=int(hi),
        )
        k = int(labels.max()) + 1
        centroids = _centroids(x, labels, k)
        soft = np.zeros((num_chunks, local, k))
        soft[valid] = _normalise(embeddings[valid]) @ centroids.T
        hard = np.full((num_chunks, local), -2, dtype=np.int8)
        for c in range(num_chunks):
            if k >= local:
                rows, cols = linear_sum_assignment(-soft[c])
                hard[c, rows] = cols
            else:
                hard[c] = np.argmax(soft[c], axis=1)
        missing = active & ~valid
        if missing.any():
            step_frames = window.step / frame_seconds
            _propagate(hard, data, valid, missing, k, step_frames)
        return hard, soft, centroids


def _propagate(
    hard: np.ndarray,
    data: np.ndarray,
    valid: np.ndarray,
    missing: np.ndarray,
    k: int,
    step_frames: float,
) -> None:
    """Labels the active local speakers without an embedding (windows that were not embedded,
    speech too short to embed) by their activity: a local speaker takes the cluster of the
    embedded local speakers of overlapping windows whose activity coincides with its own on
    the frames the two windows share (the segmentation model's local speakers are the same
    voice where they coincide). Two local speakers of one window get different clusters when
    there are enough. One with no coincident activity takes the cluster of the nearest window
    where its local slot had an embedding (better labelled than dropped)."""
    num_chunks, num_frames, _ = data.shape
    reach = math.ceil(num_frames / step_frames)
    for c in map(int, np.flatnonzero(missing.any(axis=1))):
        rows = np.flatnonzero(missing[c])
        score = np.zeros((len(rows), k))
        for c2 in range(max(0, c - reach), min(num_chunks, c + reach + 1)):
            if c2 == c or not valid[c2].any():
                continue
            off = round((c2 - c) * step_frames)  # frame of c where c2 starts
            lo, hi = max(0, off), min(num_frames, num_frames + off)
            if hi <= lo:
                continue
            mine = data[c, lo:hi][:, rows]  # (shared, rows)
            theirs = data[c2, lo - off : hi - off]  # (shared, local)
            coincide = mine.T @ theirs  # (rows, local)
            for s2 in np.flatnonzero(valid[c2]):
                score[:, hard[c2, s2]] += coincide[:, s2]
        taken = {int(hard[c, s]) for s in np.flatnonzero(valid[c])}
        free = [j for j in range(k) if j not in taken]
        if len(free) >= len(rows):
            r, col = linear_sum_assignment(-score[:, free])
            choice = np.array(free)[col[np.argsort(r)]]
        else:
            choice = np.argmax(score, axis=1)
        for i, s in enumerate(rows):
            if score[i].max() > 0:
                hard[c, s] = choice[i]
                continue
            done = np.flatnonzero(valid[:, s])
            hard[c, s] = hard[done[np.argmin(np.abs(done - c))], s] if len(done) else 0


class BatchedCamppDiarization(SpeakerDiarization):
    """SpeakerDiarization whose CAM++ embeddings are computed in real batches."""

    def __init__(
        self,
        *,
        campplus: CamPlusPlusEmbedding,
        embedding_quantum: int,
        embedding_max_seconds: float | None,
        clustering_params: ClusteringParams,
        embedding_stride: int = 1,
        embedding_frozen: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(embedding=campplus, **kwargs)
        self._campplus = campplus
        self._frozen = embedding_frozen
        self._frozen_network: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._quantum = embedding_quantum
        self._stride = embedding_stride
        self._max_frames = (
            None if embedding_max_seconds is None else max(10, int(embedding_max_seconds * 100))
        )
        del self.clustering  # pyannote's sub-pipeline, with hyper-parameters of its own
        self.clustering = CosineClustering(clustering_params, embedding_stride)

    def get_embeddings(
        self,
        file: Any,
        binary_segmentations: Any,
        exclude_overlap: bool = False,
        hook: Any = None,
    ) -> np.ndarray:
        window = binary_segmentations.sliding_window
        data = np.nan_to_num(binary_segmentations.data, nan=0.0).astype(np.float32)
        num_chunks, num_frames, local = data.shape
        clean = data * (data.sum(axis=2, keepdims=True) < 2)
        items: list[torch.Tensor] = []
        if hook is not None:
            hook("embeddings", None, total=2 * num_chunks, completed=0)
        embedded = np.zeros(num_chunks, dtype=bool)
        embedded[:: self._stride] = True
        embedded[-1] = True  # the end of the file is covered by no later window
        for c in range(num_chunks):
            if not embedded[c]:
                items.extend(_NOTHING for _ in range(local))  # NaN: labelled by _propagate
                continue
            waveform, _ = self._audio.crop(file, window[c], mode="pad")
            feats = fbank(waveform[0].float())
            n = feats.shape[0]
            idx = np.minimum((np.arange(n) * num_frames) // n, num_frames - 1)
            for s in range(local):
                mask = clean[c, :, s] if exclude_overlap else data[c, :, s]
                if exclude_overlap and mask.sum() * n / num_frames < 3 * self._quantum:
                    mask = data[c, :, s]  # too little clean speech: use all of it
                active = torch.from_numpy(mask[idx] > 0.5)
                items.append(masked_features(feats, active, self._quantum, self._max_frames))
            if hook is not None and c % 50 == 0:
                hook("embeddings", None, total=2 * num_chunks, completed=c // 2)
        progress = _BatchProgress(hook, num_chunks, max(1, sum(len(i) > 0 for i in items)))
        out = embed_batched(self.network(), items, self.embedding_batch_size, progress=progress)
        return out.numpy().reshape(num_chunks, local, -1)

    def network(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """The frozen CPU graph when asked for and the model is on the CPU (built on first
        use, after any ``.to(device)``), else the eager network."""
        network = self._campplus.campplus
        if not self._frozen or next(network.parameters()).device.type != "cpu":
            return network
        if self._frozen_network is None:
            self._frozen_network = frozen_for_cpu(network)
        return self._frozen_network


_NOTHING = torch.zeros(0, NUM_MEL_BINS)


class _BatchProgress:
    def __init__(self, hook: Any, num_chunks: int, total_items: int) -> None:
        self._hook, self._chunks, self._total, self._done = hook, num_chunks, total_items, 0

    def __call__(self, items: int) -> None:
        self._done += items
        if self._hook is not None:
            self._hook(
                "embeddings",
                None,
                total=2 * self._chunks,
                completed=self._chunks // 2 + int(1.5 * self._chunks * self._done / self._total),
            )
