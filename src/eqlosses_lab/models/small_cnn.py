"""A small CNN for 28x28 grayscale images (Fashion-MNIST-LT experiments).

Three conv-GroupNorm-ReLU stages (a stride-2 stem, then 14 -> 7 -> 3 pixels), global
average pooling and one linear layer. GroupNorm normalises each sample on its own, so
splitting a batch across processes leaves training unchanged (BatchNorm would see other
batch statistics). The linear layer is kept as a separate attribute,
:attr:`SmallCNN.classifier`, because equalization losses act on the last layer's logits.

About 24k parameters with the default widths: an epoch on ~15k images takes seconds on
two CPU cores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor, nn

GROUPS = 4


def _conv_norm_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    # No conv bias: the GroupNorm shift that follows makes it redundant.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(GROUPS, out_channels),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Conv-GroupNorm-ReLU stages with max-pooling between them, pooling and a linear head.

    Args:
        num_classes: Outputs of the linear head.
        in_channels: Input channels (1 for grayscale).
        widths: Channels of each stage. The first convolution has stride 2 and every stage
            but the last is followed by a 2x2 max-pool, so the defaults see 14, 7 and 3 pixel
            grids: cheap enough to train many models on two CPU cores.

    Attributes:
        classifier: The final ``nn.Linear(widths[-1], num_classes)``.
        feature_dim: Size of the vectors returned by :meth:`features`.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not widths:
            raise ValueError("widths must name at least one stage")
        layers: list[nn.Module] = []
        channels = in_channels
        for i, width in enumerate(widths):
            layers.append(_conv_norm_relu(channels, width, stride=2 if i == 0 else 1))
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.body = nn.Sequential(*layers)
        self.feature_dim = channels
        self.classifier = nn.Linear(channels, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Pooled penultimate features, shape ``(N, feature_dim)``, from ``(N, C, H, W)``."""
        out: Tensor = self.body(x).mean(dim=(2, 3))
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)``."""
        out: Tensor = self.classifier(self.features(x))
        return out


def grayscale_batch(
    images: npt.NDArray[np.uint8] | Tensor,
    mean: float = 0.5,
    std: float = 0.5,
) -> Tensor:
    """uint8 images ``(N, H, W)`` -> float32 ``(N, 1, H, W)`` with ``(x / 255 - mean) / std``.

    The defaults map pixel values to ``[-1, 1]``; GroupNorm after the first convolution makes
    the exact constants matter little.
    """
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8 or t.ndim != 3:
        raise ValueError(f"expected uint8 images (N, H, W), got {t.dtype} {tuple(t.shape)}")
    return ((t.to(torch.float32) / 255.0 - mean) / std).unsqueeze(1)
