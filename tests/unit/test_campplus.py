"""CAM++ module: checkpoint compatibility, front-end behaviour and the pyannote contract."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from deployments.campplus import (
    EMBEDDING_DIM,
    CamPlusPlusEmbedding,
    CAMPPlus,
    fbank,
    load_campplus,
)


def num_fbank_frames(num_samples: int) -> int:
    """Kaldi's frame count without edge padding: 25 ms windows every 10 ms at 16 kHz."""
    return 0 if num_samples < 400 else 1 + (num_samples - 400) // 160


MODELS_DIR = Path(
    os.environ.get("WHISPERX_SERVE_MODELS_DIR")
    or Path(__file__).resolve().parents[2].parent / "shared" / "models"
)
CHECKPOINT = MODELS_DIR / "diarization" / "campplus-cn-en-common" / "campplus_cn_en_common.pt"

needs_checkpoint = pytest.mark.skipif(
    not CHECKPOINT.exists(), reason=f"no CAM++ checkpoint at {CHECKPOINT}"
)


@pytest.fixture(scope="module")
def model() -> CamPlusPlusEmbedding:
    if not CHECKPOINT.exists():
        pytest.skip(f"no CAM++ checkpoint at {CHECKPOINT}")
    return load_campplus(CHECKPOINT, torch.device("cpu"))


def _noise(*shape: int, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@needs_checkpoint
def test_state_dict_matches_every_key_strictly() -> None:
    state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    net = CAMPPlus()
    assert len(state) == 937
    assert set(net.state_dict()) == set(state)
    net.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in net.parameters()) == 6_848_544


def test_network_shapes_without_weights() -> None:
    net = CAMPPlus().eval()
    with torch.inference_mode():
        out = net(torch.randn(3, 200, 80))
        frames = net.frames(torch.randn(1, 201, 80))
    assert out.shape == (3, EMBEDDING_DIM)
    assert frames.shape == (1, 512, 101)  # stride-2 TDNN


def test_fbank_is_80_bin_kaldi_with_25ms_10ms_frames() -> None:
    wave = _noise(16_000)
    feats = fbank(wave)
    assert feats.shape == (num_fbank_frames(16_000), 80) == (98, 80)
    assert num_fbank_frames(399) == 0
    assert num_fbank_frames(400) == 1


def test_compute_fbank_subtracts_each_segments_own_mean() -> None:
    model = CamPlusPlusEmbedding()
    waves = torch.stack([_noise(1, 8_000, seed=1), 5.0 * _noise(1, 8_000, seed=2)])
    feats = model.compute_fbank(waves)
    assert feats.shape == (2, num_fbank_frames(8_000), 80)
    torch.testing.assert_close(feats.mean(dim=1), torch.zeros(2, 80), atol=1e-4, rtol=0)
    assert feats.std() > 0.1  # variances are not normalised away


def test_embedding_is_gain_invariant(model: CamPlusPlusEmbedding) -> None:
    wave = _noise(1, 1, 32_000)
    with torch.inference_mode():
        quiet, loud = model(wave), model(8.0 * wave)
    assert torch.nn.functional.cosine_similarity(quiet, loud).item() > 0.999


def test_forward_shapes_and_weights(model: CamPlusPlusEmbedding) -> None:
    waves = _noise(2, 1, 48_000)
    weights = torch.zeros(2, 293)
    weights[0] = 1.0
    weights[1, :100] = 1.0
    with torch.inference_mode():
        plain = model(waves)
        weighted = model(waves, weights=weights)
        first_part = model(waves[1:, :, : 100 * 48_000 // 293])
    assert plain.shape == weighted.shape == (2, EMBEDDING_DIM)
    torch.testing.assert_close(weighted[0], plain[0], atol=1e-4, rtol=1e-4)  # all frames active
    assert torch.nn.functional.cosine_similarity(weighted[1:], first_part).item() > 0.95


def test_inactive_speaker_gives_nan_embedding(model: CamPlusPlusEmbedding) -> None:
    with torch.inference_mode():
        out = model(_noise(1, 1, 16_000), weights=torch.zeros(1, 59))
    assert torch.isnan(out).all()  # pyannote drops NaN embeddings before clustering


def test_min_num_samples_is_enforced_and_found_by_pyannote(model: CamPlusPlusEmbedding) -> None:
    from pyannote.audio.pipelines.speaker_verification import PretrainedSpeakerEmbedding

    n = model.min_num_samples
    with torch.inference_mode():
        assert model(_noise(1, 1, n)).shape == (1, EMBEDDING_DIM)
        with pytest.raises(ValueError, match="at least"):
            model(_noise(1, 1, n - 1))
    wrapper = PretrainedSpeakerEmbedding(model)
    assert wrapper.min_num_samples == n
    assert wrapper.dimension == EMBEDDING_DIM
    assert wrapper.sample_rate == 16_000
    assert wrapper.metric == "cosine"


def test_rejects_other_sample_rates() -> None:
    with pytest.raises(ValueError, match="16000"):
        CamPlusPlusEmbedding(sample_rate=8_000)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda(model: CamPlusPlusEmbedding) -> None:
    waves = _noise(2, 1, 32_000)
    with torch.inference_mode():
        cpu = model(waves, weights=torch.ones(2, 100))
        gpu = model.to(torch.device("cuda"))(waves.cuda(), weights=torch.ones(2, 100).cuda())
    model.to(torch.device("cpu"))
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=1e-3)


def test_batched_embeddings_equal_one_at_a_time(model: CamPlusPlusEmbedding) -> None:
    from deployments.campplus import MIN_NUM_FRAMES, embed_batched, masked_features

    feats = fbank(_noise(16_000 * 4, seed=3))
    rng = torch.Generator().manual_seed(1)
    items = []
    for i in range(9):  # assorted masks: several share a length, one is too short
        active = torch.rand(feats.shape[0], generator=rng) < (0.3 + 0.07 * (i % 3))
        if i == 8:
            active[:] = False
            active[: MIN_NUM_FRAMES - 1] = True
        items.append(masked_features(feats, active, quantum=10))
    assert len({item.shape[0] for item in items}) < len(items)  # some batching happens
    batched = embed_batched(model.campplus, items, batch_size=4)
    with torch.inference_mode():
        for i, item in enumerate(items[:8]):
            alone = model.campplus(item[None])[0]
            assert torch.allclose(batched[i], alone, atol=1e-4, rtol=1e-4)
    assert torch.isnan(batched[8]).all()
    for item in items[:8]:
        assert item.shape[0] % 10 == 0
        assert torch.allclose(item.mean(dim=0), torch.zeros(80), atol=1e-4)


def test_quantised_masked_embedding_stays_close_to_the_exact_one(
    model: CamPlusPlusEmbedding,
) -> None:
    from deployments.campplus import masked_features

    feats = fbank(_noise(16_000 * 6, seed=5))
    active = torch.zeros(feats.shape[0], dtype=torch.bool)
    active[37:451] = True  # 414 frames: the quantum of 10 drops 4
    with torch.inference_mode():
        exact = model(_noise(1, 1, 16_000 * 6, seed=5), weights=active[None].float())
        short = model.campplus(masked_features(feats, active, quantum=10)[None])
    assert torch.nn.functional.cosine_similarity(exact, short).item() > 0.99


@pytest.mark.parametrize("batch", [1, 5])
def test_frozen_cpu_graph_embeds_as_the_eager_network_at_any_length(
    model: CamPlusPlusEmbedding, batch: int
) -> None:
    """The trace is taken at one shape; a size baked into it would show at the others."""
    from deployments.campplus import MIN_NUM_FRAMES, frozen_for_cpu

    frozen = frozen_for_cpu(model.campplus)
    rng = torch.Generator().manual_seed(7)
    with torch.inference_mode():
        for frames in (MIN_NUM_FRAMES, 7, 10, 130, 237, 437, 1000):
            feats = torch.randn(batch, frames, 80, generator=rng)
            torch.testing.assert_close(frozen(feats), model.campplus(feats), atol=1e-4, rtol=1e-4)
