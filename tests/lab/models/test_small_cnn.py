"""SmallCNN: shapes, parameter budget, separable classifier, and that it can learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from eqlosses_lab.models.small_cnn import SmallCNN, grayscale_batch


def test_parameter_count_hand_computed() -> None:
    model = SmallCNN(num_classes=10)
    # convs 1*16*9 + 16*32*9 + 32*64*9, GroupNorm 2*(16+32+64), head 64*10 + 10.
    expected = 144 + 4608 + 18432 + 2 * (16 + 32 + 64) + 650
    assert expected == 24058
    assert sum(p.numel() for p in model.parameters()) == expected


def test_shapes_and_classifier_split() -> None:
    torch.manual_seed(0)
    model = SmallCNN(num_classes=7).eval()
    x = torch.randn(5, 1, 28, 28)
    feats = model.features(x)
    assert feats.shape == (5, model.feature_dim) == (5, 64)
    assert isinstance(model.classifier, nn.Linear)
    assert model.classifier.weight.shape == (7, 64)
    logits = model(x)
    assert logits.shape == (5, 7)
    torch.testing.assert_close(logits, model.classifier(feats))


def test_custom_widths() -> None:
    model = SmallCNN(num_classes=3, in_channels=3, widths=(8, 16))
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 3)
    with pytest.raises(ValueError):
        SmallCNN(num_classes=0)


def test_grayscale_batch_values() -> None:
    images = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    x = grayscale_batch(images)
    assert x.shape == (1, 1, 2, 2)
    torch.testing.assert_close(x[0, 0], torch.tensor([[-1.0, 1.0], [-0.6, -0.2]]))
    with pytest.raises(ValueError):
        grayscale_batch(images.astype(np.float32))


def test_fits_a_tiny_batch() -> None:
    # A working model and backward pass drive training loss on 8 fixed images close to 0.
    torch.manual_seed(0)
    model = SmallCNN(num_classes=4)
    x = torch.randn(8, 1, 28, 28)
    y = torch.arange(8) % 4
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(80):
        loss = nn.functional.cross_entropy(model(x), y)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[0] > 1.0  # about ln(4) at initialisation
    assert losses[-1] < 0.2 * losses[0]
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).all()
