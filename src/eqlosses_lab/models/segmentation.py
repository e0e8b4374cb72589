"""A light FPN decoder over frozen EfficientNet-Lite0 feature maps, for segmentation.

The encoder is frozen, so its multi-scale maps (strides 4, 8, 16, 32) are computed once per
image (:func:`extract_feature_maps`) and only the decoder trains. The decoder follows the
feature-pyramid pattern (Lin et al., CVPR 2017; the semantic FPN of Kirillov et al. 2019
in miniature): a 1x1 lateral convolution brings every map to ``width`` channels and a
top-down pass adds each coarser map, upsampled, to the next finer one. Two 3x3
convolutions with GroupNorm refine the pyramid at its second-finest stride (8), where they
cost a quarter of what they would at stride 4; the finest map (stride 4, the detail of
thin objects) is added after them, just before the 1x1 classifier. The logits come out at
stride 4; :meth:`FPNDecoder.forward` upsamples them bilinearly to the image size, so the
loss sees one row per pixel.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eqlosses_lab.models.efficientnet_lite import EfficientNetLite0, preprocess

# Channels of EfficientNet-Lite0's maps by stride (see EfficientNetLite0.forward_features).
LITE0_MAP_CHANNELS: dict[int, int] = {4: 24, 8: 40, 16: 112, 32: 320}
GROUPS = 8


def _refine(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.GroupNorm(GROUPS, channels),
        nn.ReLU(inplace=True),
    )


class FPNDecoder(nn.Module):
    """Feature-pyramid decoder: multi-scale maps in, per-pixel class logits out.

    Args:
        num_classes: ``C``.
        in_channels: channels of the input map at each stride (default: Lite0's).
        width: channels inside the decoder (64); a multiple of 8 (GroupNorm groups).

    Shape:
        - maps: ``{stride: (N, in_channels[stride], ceil(H / stride), ceil(W / stride))}``.
        - output: ``(N, C, H, W)`` for ``output_size=(H, W)``; ``(N, C, H/4, W/4)``
          (the finest map's size) without it.

    Example:
        >>> decoder = FPNDecoder(num_classes=11)
        >>> maps = {s: torch.randn(2, c, -(-180 // s), -(-240 // s))
        ...         for s, c in LITE0_MAP_CHANNELS.items()}
        >>> decoder(maps, output_size=(180, 240)).shape
        torch.Size([2, 11, 180, 240])
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: Mapping[int, int] = LITE0_MAP_CHANNELS,
        width: int = 64,
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes: expected a positive integer, got {num_classes}")
        if width < GROUPS or width % GROUPS:
            raise ValueError(f"width: expected a positive multiple of {GROUPS}, got {width}")
        if len(in_channels) < 2:
            raise ValueError(f"in_channels: expected at least two strides, got {dict(in_channels)}")
        self.strides = sorted(in_channels)
        self.lateral = nn.ModuleDict(
            {str(s): nn.Conv2d(in_channels[s], width, 1) for s in self.strides}
        )
        self.refine = nn.Sequential(_refine(width), _refine(width))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(
        self, maps: Mapping[int, Tensor], output_size: tuple[int, int] | None = None
    ) -> Tensor:
        missing = [s for s in self.strides if s not in maps]
        if missing:
            raise ValueError(f"maps: expected strides {self.strides}, missing {missing}")
        top = self.lateral[str(self.strides[-1])](maps[self.strides[-1]])
        for stride in reversed(self.strides[:-1]):
            if stride == self.strides[0]:
                top = self.refine(top)
            lateral = self.lateral[str(stride)](maps[stride])
            top = lateral + F.interpolate(
                top, size=lateral.shape[-2:], mode="bilinear", align_corners=False
            )
        logits: Tensor = self.classifier(F.relu(top))
        if output_size is not None:
            logits = F.interpolate(logits, size=output_size, mode="bilinear", align_corners=False)
        return logits


def extract_feature_maps(
    images: npt.NDArray[np.uint8] | Tensor,
    encoder: EfficientNetLite0,
    batch_size: int = 16,
    dtype: torch.dtype = torch.float16,
) -> dict[int, Tensor]:
    """The encoder's multi-scale maps of uint8 RGB images, in eval mode, no grad.

    Args:
        images: ``(N, H, W, 3)`` uint8.
        encoder: the frozen extractor (e.g. :func:`load_pretrained_efficientnet_lite0`).
        batch_size: images per forward pass.
        dtype: storage dtype of the result (float16 halves a cache's size; the decoder
            casts back to float32).

    Returns:
        ``{stride: (N, channels, ceil(H / stride), ceil(W / stride))}`` on the CPU.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size}")
    was_training = encoder.training
    encoder.eval()
    chunks: dict[int, list[Tensor]] = {}
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = preprocess(images[start : start + batch_size])
                # NHWC picks oneDNN's faster depthwise kernels on the CPU (same numbers)
                maps = encoder.forward_features(batch.to(memory_format=torch.channels_last))
                for stride, value in maps.items():
                    chunks.setdefault(stride, []).append(value.to(dtype).contiguous())
    finally:
        encoder.train(was_training)
    if not chunks:
        raise ValueError("images: expected at least one image, got none")
    return {stride: torch.cat(parts) for stride, parts in chunks.items()}
