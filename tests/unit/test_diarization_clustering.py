"""The CAM++ clustering and the word-speaker assignment, on constructed inputs (no models)."""

from __future__ import annotations

import numpy as np
import pytest

from common.schemas import Segment, SpeakerTurn, Transcript, Word
from deployments.diarization import assign_speakers
from deployments.diarization_pipeline import ClusteringParams, _propagate, cluster_embeddings

PARAMS = ClusteringParams(threshold=0.45, min_cluster_seconds=5.0, merge_distance=0.3)


def _voices(
    sizes: list[int], *, spread: float = 0.5, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around one random direction per voice (192-dim, like CAM++)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((len(sizes), 192))
    x, truth = [], []
    for v, n in enumerate(sizes):
        pts = centres[v] + spread * rng.standard_normal((n, 192))
        x.append(pts)
        truth += [v] * n
    xs = np.concatenate(x)
    return xs / np.linalg.norm(xs, axis=1, keepdims=True), np.array(truth)


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = {(int(i), int(j)) for i, j in zip(a, b, strict=True)}
    return len(pairs) == len(set(a)) == len(set(b))


def test_auto_finds_each_voice_without_splitting_the_dominant_one() -> None:
    x, truth = _voices([120, 25, 20])
    labels = cluster_embeddings(x, np.ones(len(x)), PARAMS, num=None, lo=1, hi=1000)
    assert _same_partition(labels, truth)


@pytest.mark.parametrize("bounds", [{"num": 3}, {"lo": 3, "hi": 3}, {"lo": 2, "hi": 3}])
def test_true_count_gives_the_voices_not_a_peeled_off_handful(bounds: dict[str, int]) -> None:
    x, truth = _voices([150, 30, 30], seed=1)
    # a few odd embeddings of the dominant voice (overlap, noise) far from everything
    rng = np.random.default_rng(7)
    odd = rng.standard_normal((3, 192))
    x = np.concatenate([x, odd / np.linalg.norm(odd, axis=1, keepdims=True)])
    truth = np.concatenate([truth, [0, 0, 0]])
    w = np.ones(len(x))
    w[-3:] = 0.2
    args = {"num": None, "lo": 1, "hi": 1000} | bounds
    labels = cluster_embeddings(x, w, PARAMS, **args)
    assert len(set(labels)) == 3
    assert _same_partition(labels[:-3], truth[:-3])


def test_a_lower_bound_above_the_voices_splits_but_keeps_the_others_whole() -> None:
    x, truth = _voices([100, 40], seed=2)
    labels = cluster_embeddings(x, np.ones(len(x)), PARAMS, num=None, lo=3, hi=1000)
    assert len(set(labels)) == 3
    assert all(len(set(truth[labels == c])) == 1 for c in set(labels))


def test_an_upper_bound_merges_the_closest_voices() -> None:
    x, _ = _voices([60, 60, 60], seed=3)
    labels = cluster_embeddings(x, np.ones(len(x)), PARAMS, num=None, lo=1, hi=2)
    assert len(set(labels)) == 2


def test_one_embedding_is_one_speaker() -> None:
    x, _ = _voices([1])
    assert cluster_embeddings(x, np.ones(1), PARAMS, num=None, lo=1, hi=5).tolist() == [0]


TURNS = [
    SpeakerTurn(start=1.0, end=4.0, speaker="SPEAKER_00"),
    SpeakerTurn(start=4.5, end=8.0, speaker="SPEAKER_01"),
]


def _transcript(words: list[Word]) -> Transcript:
    return Transcript(segments=[Segment(start=0.5, end=9.5, text="x", words=words)])


def test_a_window_not_embedded_takes_the_clusters_its_activity_coincides_with() -> None:
    # three windows of 100 frames, 30 frames apart; voice A speaks frames 0-120 of the file,
    # voice B 110-190; the segmentation numbers them differently in each window
    frames, step = 100, 30
    data = np.zeros((3, frames, 3))

    def speak(slot_per_window: list[int], start: int, end: int) -> None:
        for c, slot in enumerate(slot_per_window):
            lo, hi = max(0, start - c * step), min(frames, end - c * step)
            if hi > lo:
                data[c, lo:hi, slot] = 1

    speak([0, 1, 2], 0, 120)  # A
    speak([1, 0, 0], 110, 190)  # B (absent from window 0)
    valid = np.zeros((3, 3), dtype=bool)
    valid[0, 0] = valid[2, 0] = valid[2, 2] = True  # windows 0 and 2 were embedded
    hard = np.full((3, 3), -2, dtype=np.int8)
    hard[0, 0], hard[2, 2], hard[2, 0] = 0, 0, 1  # A is cluster 0, B cluster 1
    active = data.sum(axis=1) > 0
    _propagate(hard, data, valid, active & ~valid, 2, float(step))
    assert hard[1, 1] == 0 and hard[1, 0] == 1  # not by slot: slot 0 of window 1 is B


def test_words_inside_a_turn_get_its_speaker_even_with_zero_length() -> None:
    words = [
        Word(word="a", start=2.0, end=2.0),  # whisperx drops these: no positive overlap
        Word(word="b", start=3.9, end=4.2),
        Word(word="c", start=5.0, end=5.4),
        Word(word="d", start=6.0, end=6.0),
    ]
    out = assign_speakers(_transcript(words), TURNS)
    assert [w.speaker for w in out.segments[0].words] == [
        "SPEAKER_00",
        "SPEAKER_00",
        "SPEAKER_01",
        "SPEAKER_01",
    ]
    assert out.segments[0].speaker == "SPEAKER_01"  # the longer share of 0.5-9.5


def test_words_near_a_turn_take_the_nearest_and_far_or_untimed_ones_none() -> None:
    words = [
        Word(word="gap", start=4.3, end=4.4),  # between turns: nearest is SPEAKER_01 (0.1 s)
        Word(word="tail", start=8.6, end=8.9),  # 0.6 s after the last turn
        Word(word="far", start=12.0, end=12.5),
        Word(word="untimed"),
    ]
    out = assign_speakers(_transcript(words), TURNS)
    assert [w.speaker for w in out.segments[0].words] == [
        "SPEAKER_01",
        "SPEAKER_01",
        None,
        None,
    ]


def test_no_turns_leaves_everything_unlabelled() -> None:
    out = assign_speakers(_transcript([Word(word="a", start=1.0, end=1.5)]), [])
    assert out.segments[0].speaker is None and out.segments[0].words[0].speaker is None
