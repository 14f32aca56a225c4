"""Test-only model builders.

There is no real wav2vec2 alignment model in the offline bundle, so tests build a tiny
``Wav2Vec2ForCTC`` with RANDOM weights to exercise the alignment code path. Any word
timings it produces are meaningless; assert on structure only.
"""

from __future__ import annotations

import json
from pathlib import Path

# CTC vocabulary: specials first (``<pad>`` is the CTC blank whisperx looks for), then
# the word delimiter, the apostrophe and lowercase letters.
TINY_WAV2VEC2_CHARS: tuple[str, ...] = (
    "<pad>",
    "<s>",
    "</s>",
    "<unk>",
    "|",
    "'",
    *"abcdefghijklmnopqrstuvwxyz",
)


def build_tiny_wav2vec2(path: Path) -> Path:
    """Save a random-init tiny ``Wav2Vec2ForCTC`` + ``Wav2Vec2Processor`` under ``path``.

    The folder loads with ``from_pretrained(path)`` like a hub model (so it can be put in
    ``AlignConfig.models``). Weights are seeded, so the folder is reproducible. Returns ``path``.
    """
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    path.mkdir(parents=True, exist_ok=True)
    vocab = {char: index for index, char in enumerate(TINY_WAV2VEC2_CHARS)}
    vocab_file = path / "vocab.json"
    vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = Wav2Vec2CTCTokenizer(  # type: ignore[no-untyped-call]
        str(vocab_file),
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        word_delimiter_token="|",
    )
    feature_extractor = Wav2Vec2FeatureExtractor(  # type: ignore[no-untyped-call]
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=False,
    )
    processor = Wav2Vec2Processor(  # type: ignore[no-untyped-call]
        feature_extractor=feature_extractor, tokenizer=tokenizer
    )
    config = Wav2Vec2Config(  # type: ignore[no-untyped-call]
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        # Real models' strides (320 samples = 20 ms per frame), tiny channel counts.
        conv_dim=(16, 16, 16, 16, 16, 16, 16),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="group",
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        ctc_loss_reduction="mean",
        tokenizer_class="Wav2Vec2CTCTokenizer",
    )
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(config).eval()  # type: ignore[no-untyped-call]
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
