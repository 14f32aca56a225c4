"""CAM++ speaker embeddings as a pyannote.audio ``Model``.

CAM++ (Wang et al., "CAM++: A Fast and Efficient Network for Speaker Verification Using
Context-Aware Masking", Interspeech 2023) is a densely connected TDNN with a small 2-D
convolutional front-end and context-aware masking. This module rebuilds it so that the
3D-Speaker ``campplus_cn_en_common.pt`` state_dict loads with ``strict=True``, and puts the
80-bin Kaldi fbank front-end with per-segment mean normalisation in front of it, so a
pyannote ``SpeakerDiarization`` pipeline can use it as its ``embedding`` model.

When pyannote passes per-frame ``weights`` (one local speaker's activity in a chunk), only
the frames where that speaker is active are embedded: they are gathered, mean-normalised
as one segment and fed through the network, which is what the model saw in training.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi
from pyannote.audio import Model
from torch import nn
from torch.jit._trace import TracerWarning

from deployments.audio import SAMPLE_RATE

logger = logging.getLogger(__name__)

NUM_MEL_BINS = 80
EMBEDDING_DIM = 192
_WINDOW = 400  # 25 ms at 16 kHz
_SHIFT = 160  # 10 ms at 16 kHz
MIN_NUM_FRAMES = 3
"""Fewest fbank frames one embedding needs (two frames after the stride-2 TDNN, for a std)."""
_ACTIVE = 0.5
"""A frame belongs to the speaker when its (interpolated) weight is above this."""


def _norm_act(channels: int, *, relu: bool = True, affine: bool = True) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict(
        batchnorm=nn.BatchNorm1d(channels, affine=affine)
    )
    if relu:
        layers["relu"] = nn.ReLU()
    return nn.Sequential(layers)


class _ResBlock2d(nn.Module):
    """3x3 residual block; ``stride`` downsamples the frequency axis only."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels, channels, 1, stride=(stride, 1), bias=False),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class _FrontEnd(nn.Module):
    """FCM head: (batch, mels, frames) -> (batch, channels * mels / 8, frames)."""

    def __init__(self, channels: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.layer1 = nn.Sequential(_ResBlock2d(channels, 2), _ResBlock2d(channels, 1))
        self.layer2 = nn.Sequential(_ResBlock2d(channels, 2), _ResBlock2d(channels, 1))
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x.unsqueeze(1))))
        y = self.layer2(self.layer1(y))
        y = F.relu(self.bn2(self.conv2(y)))
        return y.flatten(1, 2)


class _Tdnn(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(
            in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False
        )
        self.nonlinear = _norm_act(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.nonlinear(self.linear(x))
        return y


class _ContextAwareMask(nn.Module):
    """A TDNN whose output is gated by a mask predicted from utterance and segment context."""

    def __init__(self, in_ch: int, out_ch: int, dilation: int, segment: int = 100) -> None:
        super().__init__()
        self.segment = segment
        self.linear_local = nn.Conv1d(
            in_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.linear1 = nn.Conv1d(in_ch, in_ch // 2, 1)
        self.linear2 = nn.Conv1d(in_ch // 2, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[-1]
        seg = F.avg_pool1d(x, self.segment, stride=self.segment, ceil_mode=True)
        seg = seg.repeat_interleave(self.segment, dim=-1)[..., :frames]
        context = x.mean(dim=-1, keepdim=True) + seg
        mask = torch.sigmoid(self.linear2(F.relu(self.linear1(context))))
        y: torch.Tensor = self.linear_local(x)
        return y * mask


class _DenseLayer(nn.Module):
    def __init__(self, in_ch: int, growth: int, bottleneck: int, dilation: int) -> None:
        super().__init__()
        self.nonlinear1 = _norm_act(in_ch)
        self.linear1 = nn.Conv1d(in_ch, bottleneck, 1, bias=False)
        self.nonlinear2 = _norm_act(bottleneck)
        self.cam_layer = _ContextAwareMask(bottleneck, growth, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))))
        return y


class _DenseBlock(nn.ModuleDict):
    """Each layer sees the concatenation of the block input and all earlier layer outputs."""

    def __init__(
        self, layers: int, in_ch: int, growth: int, bottleneck: int, dilation: int
    ) -> None:
        super().__init__(
            {
                f"tdnnd{i + 1}": _DenseLayer(in_ch + i * growth, growth, bottleneck, dilation)
                for i in range(layers)
            }
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.values():
            x = torch.cat([x, layer(x)], dim=1)
        return x


class _Transit(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.nonlinear = _norm_act(in_ch)
        self.linear = nn.Conv1d(in_ch, out_ch, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.linear(self.nonlinear(x))
        return y


class _Embedding(nn.Module):
    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(in_ch, out_ch, 1, bias=False)
        self.nonlinear = _norm_act(out_ch, relu=False, affine=False)

    def forward(self, stats: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.nonlinear(self.linear(stats.unsqueeze(-1)))
        return y.squeeze(-1)


class CAMPPlus(nn.Module):
    """The CAM++ network: mean-normalised fbank ``(batch, frames, 80)`` -> ``(batch, 192)``."""

    def __init__(
        self,
        feat_dim: int = NUM_MEL_BINS,
        embedding_size: int = EMBEDDING_DIM,
        growth: int = 32,
        init_channels: int = 128,
    ) -> None:
        super().__init__()
        self.head = _FrontEnd()
        modules: OrderedDict[str, nn.Module] = OrderedDict(
            tdnn=_Tdnn(32 * (feat_dim // 8), init_channels, 5, 2)
        )
        channels = init_channels
        for i, (layers, dilation) in enumerate(((12, 1), (24, 2), (16, 2)), start=1):
            modules[f"block{i}"] = _DenseBlock(layers, channels, growth, 4 * growth, dilation)
            channels += layers * growth
            modules[f"transit{i}"] = _Transit(channels, channels // 2)
            channels //= 2
        modules["out_nonlinear"] = _norm_act(channels)
        modules["dense"] = _Embedding(2 * channels, embedding_size)
        self.xvector = nn.ModuleDict(modules)

    def frames(self, fbank: torch.Tensor) -> torch.Tensor:
        """Frame-level features ``(batch, 512, ceil(frames / 2))`` before pooling."""
        x: torch.Tensor = self.head(fbank.transpose(1, 2))
        for name, module in self.xvector.items():
            if name == "dense":
                break
            x = module(x)
        return x

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        x = self.frames(fbank)
        stats = torch.cat([x.mean(dim=-1), x.std(dim=-1, correction=1)], dim=-1)
        embedding: torch.Tensor = self.xvector["dense"](stats)
        return embedding


def fbank(waveform: torch.Tensor) -> torch.Tensor:
    """Kaldi log-mel fbank of one mono 16 kHz waveform ``(samples,)`` -> ``(frames, 80)``."""
    feats: torch.Tensor = kaldi.fbank(
        waveform.unsqueeze(0),
        num_mel_bins=NUM_MEL_BINS,
        sample_frequency=SAMPLE_RATE,
        frame_length=1000 * _WINDOW / SAMPLE_RATE,
        frame_shift=1000 * _SHIFT / SAMPLE_RATE,
        dither=0.0,
        window_type="povey",
        snip_edges=True,
    )
    return feats


class CamPlusPlusEmbedding(Model):
    """pyannote ``Model``: waveforms ``(batch, 1, samples)`` -> embeddings ``(batch, 192)``."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, num_channels: int = 1) -> None:
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"CAM++ expects {SAMPLE_RATE} Hz audio, not {sample_rate} Hz")
        super().__init__(sample_rate=sample_rate, num_channels=num_channels)
        self.campplus = CAMPPlus()

    @property
    def dimension(self) -> int:
        return EMBEDDING_DIM

    @property
    def min_num_samples(self) -> int:
        return _WINDOW + (MIN_NUM_FRAMES - 1) * _SHIFT

    def compute_fbank(self, waveforms: torch.Tensor) -> torch.Tensor:
        """Mean-normalised fbank ``(batch, frames, 80)`` of ``(batch, 1, samples)`` waveforms."""
        feats = torch.stack([fbank(w[0]) for w in waveforms.float()])
        return feats - feats.mean(dim=1, keepdim=True)

    def forward(  # type: ignore[override]  # pyannote's Model.forward takes **kwargs
        self, waveforms: torch.Tensor, weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embed each waveform; with ``weights (batch, frames)``, only its active frames."""
        if waveforms.shape[-1] < self.min_num_samples:
            raise ValueError(
                f"CAM++ needs at least {self.min_num_samples} samples, got {waveforms.shape[-1]}"
            )
        if weights is None:
            plain: torch.Tensor = self.campplus(self.compute_fbank(waveforms))
            return plain
        feats = torch.stack([fbank(w[0]) for w in waveforms.float()])
        active = (
            F.interpolate(weights[:, None].float(), size=feats.shape[1], mode="nearest")[:, 0]
            > _ACTIVE
        )
        out = torch.zeros(len(feats), EMBEDDING_DIM, device=feats.device)
        for i, (feat, keep) in enumerate(zip(feats, active, strict=True)):
            selected = feat[keep]
            if selected.shape[0] < MIN_NUM_FRAMES:
                out[i] = float("nan")  # pyannote drops NaN embeddings before clustering
                continue
            out[i] = self.campplus((selected - selected.mean(dim=0))[None])[0]
        return out


def load_campplus(path: Path, device: torch.device) -> CamPlusPlusEmbedding:
    """CAM++ with the 3D-Speaker state_dict at ``path`` (strict), in eval mode on ``device``."""
    started = time.perf_counter()
    model = CamPlusPlusEmbedding()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.campplus.load_state_dict(state, strict=True)
    model.eval().to(device)
    logger.info("loaded CAM++ from %s on %s in %.2fs", path, device, time.perf_counter() - started)
    return model


def frozen_for_cpu(model: CAMPPlus) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` as a frozen TorchScript graph for CPU inference: each batch norm that
    follows a convolution is folded into it and the convolutions run on oneDNN
    (``torch.jit.optimize_for_inference``). It computes what the eager network computes
    (within float rounding; tests/unit/test_campplus.py), 1.3-2x faster per frame on a
    2-core CPU at fixed shapes (BENCHMARKS.md). The trace is valid for any batch and length:
    CAM++ has no branch on its input, only sizes read from it, and the tracer records those
    as graph ops."""
    example = torch.zeros(2, 237, NUM_MEL_BINS)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", TracerWarning)  # sizes read from the input
        traced = torch.jit.trace(model.eval(), example, check_trace=False)  # type: ignore[no-untyped-call]
        frozen: Callable[[torch.Tensor], torch.Tensor] = torch.jit.optimize_for_inference(
            torch.jit.freeze(traced)
        )
        frozen(example)  # the first call builds the oneDNN kernels
    return frozen


def masked_features(
    fbank_chunk: torch.Tensor, active: torch.Tensor, quantum: int, max_frames: int | None = None
) -> torch.Tensor:
    """The frames of ``fbank_chunk (frames, 80)`` where ``active``, at most ``max_frames`` of
    them (the middle ones), shortened to a multiple of ``quantum`` frames (at least
    ``MIN_NUM_FRAMES``) and mean-normalised as one segment.

    Shortening to a multiple of ``quantum`` lets items of nearly equal length share one
    batch with no padding (padding would change CAM++'s context means and statistics)."""
    selected = fbank_chunk[active]
    n = selected.shape[0]
    if max_frames is not None and n > max_frames:
        start = (n - max_frames) // 2
        selected = selected[start : start + max_frames]
        n = max_frames
    if n >= max(quantum, MIN_NUM_FRAMES):
        selected = selected[: n - n % quantum]
    return selected - selected.mean(dim=0)


@torch.inference_mode()
def embed_batched(
    model: Callable[[torch.Tensor], torch.Tensor],
    items: list[torch.Tensor],
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Embeds mean-normalised feature sequences ``(frames_i, 80)``; sequences of one length go
    through the network together in batches of ``batch_size``. Sequences shorter than
    ``MIN_NUM_FRAMES`` give NaN rows (pyannote drops NaN embeddings)."""
    out = torch.full((len(items), EMBEDDING_DIM), float("nan"))
    by_length: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        if item.shape[0] >= MIN_NUM_FRAMES:
            by_length.setdefault(item.shape[0], []).append(i)
    for _, idx in sorted(by_length.items()):
        for start in range(0, len(idx), batch_size):
            part = idx[start : start + batch_size]
            out[part] = model(torch.stack([items[i] for i in part])).float()
            if progress is not None:
                progress(len(part))
    return out
