"""The FPN decoder and the extraction of EfficientNet-Lite0 feature maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eqlosses_lab.models.efficientnet_lite import EfficientNetLite0, preprocess
from eqlosses_lab.models.segmentation import LITE0_MAP_CHANNELS, FPNDecoder, extract_feature_maps


def _maps(batch: int, height: int, width: int) -> dict[int, torch.Tensor]:
    return {
        s: torch.randn(batch, c, -(-height // s), -(-width // s))
        for s, c in LITE0_MAP_CHANNELS.items()
    }


def test_decoder_output_sizes_and_every_parameter_learns() -> None:
    torch.manual_seed(0)
    decoder = FPNDecoder(num_classes=5, width=16)
    maps = _maps(2, 45, 61)
    assert decoder(maps).shape == (2, 5, 12, 16)  # the stride-4 map's size
    logits = decoder(maps, output_size=(45, 61))
    assert logits.shape == (2, 5, 45, 61)
    logits.square().mean().backward()
    for name, param in decoder.named_parameters():
        assert param.grad is not None and bool(param.grad.abs().sum() > 0), name


def test_decoder_uses_every_scale() -> None:
    torch.manual_seed(0)
    decoder = FPNDecoder(num_classes=3, width=8)
    maps = _maps(1, 32, 32)
    base = decoder(maps)
    for stride in LITE0_MAP_CHANNELS:
        changed = dict(maps)
        changed[stride] = maps[stride] + 1.0
        assert not torch.allclose(decoder(changed), base), stride


def test_decoder_errors() -> None:
    with pytest.raises(ValueError, match="width: expected a positive multiple of 8, got 12"):
        FPNDecoder(3, width=12)
    with pytest.raises(ValueError, match="in_channels: expected at least two strides"):
        FPNDecoder(3, in_channels={4: 24})
    decoder = FPNDecoder(3, width=8)
    maps = _maps(1, 32, 32)
    del maps[16]
    missing = r"maps: expected strides \[4, 8, 16, 32\], missing \[16\]"
    with pytest.raises(ValueError, match=missing):
        decoder(maps)


def test_extract_feature_maps_matches_the_encoder_and_restores_its_mode() -> None:
    torch.manual_seed(0)
    encoder = EfficientNetLite0().train()
    images = np.random.default_rng(0).integers(0, 256, (3, 36, 52, 3), dtype=np.uint8)
    maps = extract_feature_maps(images, encoder, batch_size=2, dtype=torch.float32)
    assert encoder.training
    encoder.eval()
    with torch.no_grad():
        expected = encoder.forward_features(preprocess(images))
    for stride, channels in LITE0_MAP_CHANNELS.items():
        assert maps[stride].shape == (3, channels, -(-36 // stride), -(-52 // stride))
        torch.testing.assert_close(maps[stride], expected[stride], rtol=1e-4, atol=1e-6)
    stored = extract_feature_maps(images[:1], encoder)  # float16 by default (the cache)
    assert all(value.dtype == torch.float16 for value in stored.values())
