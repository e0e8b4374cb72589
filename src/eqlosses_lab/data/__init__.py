"""Data sets and long-tail sampling for the loss comparisons.

Everything reads local files only: Fashion-MNIST's IDX files, Omniglot's zips and the
240x180 CamVid folder, found as :mod:`eqlosses_lab.locations` describes. A missing data
set raises :class:`~eqlosses_lab.errors.DatasetNotFoundError` with a one-line fix.
"""

from eqlosses_lab.data.camvid import (
    CAMVID_CLASSES,
    CAMVID_IGNORE_INDEX,
    CamVid,
    load_camvid,
)
from eqlosses_lab.data.canvases import (
    CanvasDataset,
    CanvasSplit,
    banded_longtail_counts,
    build_canvases,
    frequency_group,
)
from eqlosses_lab.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FashionMNIST,
    load_fashion_mnist,
    read_idx,
)
from eqlosses_lab.data.features import cache_path, cached_features
from eqlosses_lab.data.longtail import longtail_counts, longtail_subset, split_validation
from eqlosses_lab.data.omniglot import (
    OMNIGLOT_ZIPS,
    Omniglot,
    OmniglotSplit,
    load_omniglot,
    omniglot_lt_split,
)

__all__ = [
    "CAMVID_CLASSES",
    "CAMVID_IGNORE_INDEX",
    "FASHION_MNIST_CLASSES",
    "OMNIGLOT_ZIPS",
    "CamVid",
    "CanvasDataset",
    "CanvasSplit",
    "FashionMNIST",
    "Omniglot",
    "OmniglotSplit",
    "banded_longtail_counts",
    "build_canvases",
    "cache_path",
    "cached_features",
    "frequency_group",
    "load_camvid",
    "load_fashion_mnist",
    "load_omniglot",
    "longtail_counts",
    "longtail_subset",
    "omniglot_lt_split",
    "read_idx",
    "split_validation",
]
