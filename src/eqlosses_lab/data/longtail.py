"""Long-tailed subsets of balanced data sets.

The standard way to study long-tailed recognition on a balanced data set (CIFAR-LT,
ImageNet-LT, ...) is to keep an exponentially decaying number of training samples per class:

    n_j = floor(n_max * rho ** (-j / (C - 1))),   j = 0 .. C-1,

so class 0 is the head with ``n_max`` samples and class ``C - 1`` the tail with
``floor(n_max / rho)`` samples; ``rho`` is the imbalance ratio ``n_0 / n_{C-1}``.  Class ``j``
keeps count ``n_j``: class indices double as frequency ranks, which makes per-class plots
(accuracy against class index) readable without a separate ordering.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import torch

# Absolute slack added before flooring: n_max * rho ** -1 is computed as e.g. 0.9999999999999999
# instead of 1.0 for n_max = rho = 15, and flooring that would empty the tail class.
_FLOOR_EPS = 1e-9

IntArray = npt.NDArray[np.int64]


def longtail_counts(n_max: int, num_classes: int, imbalance_ratio: float) -> list[int]:
    """Per-class sample counts of the exponential long-tail profile.

    Args:
        n_max: Count of the head class (class 0).
        num_classes: Number of classes ``C``.
        imbalance_ratio: ``rho = n_0 / n_{C-1}`` (>= 1; 1 gives a balanced set).

    Returns:
        ``[n_0, ..., n_{C-1}]`` with ``n_j = floor(n_max * rho ** (-j / (C - 1)))``,
        non-increasing.  With a single class the profile is ``[n_max]``.

    Raises:
        ValueError: on non-positive sizes, ``rho < 1``, or when the tail class would get no
            sample at all (``rho > n_max``), which no loss can learn from.
    """
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not math.isfinite(imbalance_ratio) or imbalance_ratio < 1.0:
        raise ValueError(f"imbalance_ratio must be a finite number >= 1, got {imbalance_ratio}")
    if num_classes == 1:
        return [n_max]
    counts = [
        math.floor(n_max * imbalance_ratio ** (-j / (num_classes - 1)) + _FLOOR_EPS)
        for j in range(num_classes)
    ]
    if counts[-1] < 1:
        raise ValueError(
            f"imbalance_ratio={imbalance_ratio} > n_max={n_max} leaves the tail class empty; "
            "raise n_max or lower the ratio"
        )
    return counts


def _as_label_array(labels: torch.Tensor | npt.ArrayLike) -> IntArray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    out = arr.astype(np.int64, copy=False)
    if out.size and out.min() < 0:
        raise ValueError("labels must be non-negative class indices")
    return out


def longtail_subset(
    labels: torch.Tensor | npt.ArrayLike,
    imbalance_ratio: float,
    n_max: int | None = None,
    seed: int = 0,
) -> IntArray:
    """Indices of a seeded long-tailed subset of a (roughly) balanced labelled set.

    Class ``j`` (for ``j = 0 .. C-1``, ``C = max(labels) + 1``) keeps ``n_j`` samples drawn
    uniformly without replacement from its members, with ``n_j`` from :func:`longtail_counts`.

    Args:
        labels: Class index of every sample, shape ``(N,)``.
        imbalance_ratio: ``rho = n_0 / n_{C-1}``.
        n_max: Head-class count.  Defaults to the smallest class size, the largest value for
            which every class can supply its count.
        seed: Seed of the draw; the same seed and labels always give the same subset.

    Returns:
        Sorted int64 indices into ``labels``.

    Raises:
        ValueError: if a class in ``0 .. C-1`` has no sample, or has fewer samples than its
            count requires.
    """
    y = _as_label_array(labels)
    if y.size == 0:
        raise ValueError("labels is empty")
    num_classes = int(y.max()) + 1
    sizes = np.bincount(y, minlength=num_classes)
    if (sizes == 0).any():
        missing = np.flatnonzero(sizes == 0).tolist()
        raise ValueError(f"classes {missing[:10]} have no sample; labels must cover 0..C-1")
    if n_max is None:
        n_max = int(sizes.min())
    counts = longtail_counts(n_max, num_classes, imbalance_ratio)
    short = [j for j in range(num_classes) if counts[j] > sizes[j]]
    if short:
        j = short[0]
        raise ValueError(
            f"class {j} has {int(sizes[j])} samples but the profile needs {counts[j]}; "
            f"lower n_max (the smallest class has {int(sizes.min())})"
        )
    rng = np.random.default_rng(seed)
    # Stable sort keeps each class's members in index order, so the draw depends only on
    # the seed and the labels, not on how numpy orders ties.
    order = np.argsort(y, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    chosen = [
        rng.choice(order[starts[j] : starts[j + 1]], size=counts[j], replace=False)
        for j in range(num_classes)
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def split_validation(
    indices: npt.ArrayLike,
    labels: torch.Tensor | npt.ArrayLike,
    fraction: float,
    seed: int = 0,
) -> tuple[IntArray, IntArray]:
    """Carve a class-stratified validation split out of (long-tailed) training indices.

    Hyper-parameters of long-tail losses must not be tuned on the test set, and a random
    split of a long-tailed set would leave most tail classes without any validation sample
    or without any training sample.  Here each class gives ``round(fraction * n_c)``
    samples (half rounded up) to validation, but always keeps at least one in training, so a
    one-sample tail class stays entirely in training.

    Args:
        indices: Training indices (into ``labels``) to split, e.g. from :func:`longtail_subset`.
        labels: Class index of every sample of the full data set, shape ``(N,)``.
        fraction: Share of each class moved to validation, in ``[0, 1)``.
        seed: Seed of the draw.

    Returns:
        ``(train_indices, val_indices)``: disjoint, sorted, their union is ``indices``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    idx = np.asarray(indices)
    if idx.ndim != 1:
        raise ValueError(f"indices must be one-dimensional, got shape {idx.shape}")
    idx = idx.astype(np.int64, copy=False)
    if np.unique(idx).size != idx.size:
        raise ValueError("indices contain duplicates")
    y = _as_label_array(labels)
    if idx.size and (idx.min() < 0 or idx.max() >= y.size):
        raise ValueError("indices out of range for labels")
    sub_labels = y[idx]
    rng = np.random.default_rng(seed)
    val_parts: list[IntArray] = []
    for c in np.unique(sub_labels):
        members = np.sort(idx[sub_labels == c])
        n_val = min(math.floor(fraction * members.size + 0.5), members.size - 1)
        if n_val > 0:
            val_parts.append(rng.choice(members, size=n_val, replace=False))
    val = np.sort(np.concatenate(val_parts)) if val_parts else np.empty(0, dtype=np.int64)
    train = np.setdiff1d(idx, val, assume_unique=True)
    return train.astype(np.int64), val.astype(np.int64)
