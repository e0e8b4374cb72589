"""Long-tail profile and subset sampling, checked against hand-computed counts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from eqlosses_lab.data.longtail import longtail_counts, longtail_subset, split_validation


def test_counts_match_published_cifar10_lt_profile() -> None:
    # CIFAR-10-LT with imbalance 100 (Cui et al. 2019, Cao et al. 2019) has these counts.
    assert longtail_counts(5000, 10, 100) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_counts_hand_computed_small_profile() -> None:
    # 100 * 10 ** (-j / 9), floored, worked out by hand.
    assert longtail_counts(100, 10, 10) == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]


def test_tail_is_not_lost_to_rounding() -> None:
    # 15 * 15 ** -1 evaluates to 0.999... in floating point; the tail must still get 1.
    counts = longtail_counts(15, 242, 15)
    assert counts[0] == 15
    assert counts[-1] == 1
    assert all(a >= b for a, b in itertools.pairwise(counts))


def test_counts_edge_cases() -> None:
    assert longtail_counts(7, 1, 50) == [7]
    assert longtail_counts(9, 2, 3) == [9, 3]
    assert longtail_counts(4, 3, 1) == [4, 4, 4]


@pytest.mark.parametrize(
    ("n_max", "num_classes", "rho"),
    [(0, 3, 2.0), (5, 0, 2.0), (5, 3, 0.5), (5, 3, float("nan")), (5, 3, 6.0)],
)
def test_counts_reject_bad_arguments(n_max: int, num_classes: int, rho: float) -> None:
    with pytest.raises(ValueError):
        longtail_counts(n_max, num_classes, rho)


def _balanced_labels(num_classes: int, per_class: int, seed: int = 123) -> np.ndarray:
    labels = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(seed).permutation(labels)


def test_subset_follows_profile_with_default_n_max() -> None:
    labels = _balanced_labels(4, 10)
    idx = longtail_subset(labels, imbalance_ratio=5, seed=0)
    # n_max defaults to the smallest class (10): 10 * 5 ** (-j / 3) -> 10, 5, 3, 2.
    assert np.bincount(labels[idx], minlength=4).tolist() == [10, 5, 3, 2]
    assert idx.dtype == np.int64
    assert np.all(np.diff(idx) > 0)  # sorted, no duplicate


def test_subset_is_seeded() -> None:
    labels = _balanced_labels(5, 40)
    a = longtail_subset(labels, 10, n_max=30, seed=3)
    b = longtail_subset(torch.from_numpy(labels), 10, n_max=30, seed=3)
    c = longtail_subset(labels, 10, n_max=30, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_subset_rejects_missing_or_small_classes() -> None:
    with pytest.raises(ValueError, match="no sample"):
        longtail_subset(np.array([0, 0, 2, 2]), 2)
    labels = np.array([0] * 5 + [1] * 3)
    with pytest.raises(ValueError, match="class 0"):
        longtail_subset(labels, 2, n_max=6)
    # Class 1 needs floor(4 / 1) = 4 > 3 with rho = 1.
    with pytest.raises(ValueError, match="class 1"):
        longtail_subset(labels, 1, n_max=4)


def test_split_validation_counts_per_class() -> None:
    labels = np.array([0] * 10 + [1] * 5 + [2] * 3 + [3] * 1 + [4] * 2)
    indices = np.arange(labels.size)
    train, val = split_validation(indices, labels, fraction=0.5, seed=0)
    # round-half-up(0.5 * n), keeping one in training: 10 -> 5, 5 -> 3, 3 -> 2, 1 -> 0, 2 -> 1.
    assert np.bincount(labels[val], minlength=5).tolist() == [5, 3, 2, 0, 1]
    assert np.bincount(labels[train], minlength=5).tolist() == [5, 2, 1, 1, 1]
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), indices)


def test_split_validation_on_subset_of_indices() -> None:
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1, 2, 2])
    indices = np.array([0, 2, 4, 6, 1, 3, 8])  # class 0: 4, class 1: 2, class 2: 1
    train, val = split_validation(indices, labels, fraction=0.25, seed=1)
    # 0.25 * 4 = 1, 0.25 * 2 = 0.5 -> 1, class 2 keeps its single sample.
    assert np.bincount(labels[val], minlength=3).tolist() == [1, 1, 0]
    assert set(train.tolist()) | set(val.tolist()) == set(indices.tolist())
    again = split_validation(indices, labels, fraction=0.25, seed=1)
    np.testing.assert_array_equal(again[1], val)


def test_split_validation_rejects_bad_input() -> None:
    labels = np.array([0, 0, 1, 1])
    with pytest.raises(ValueError):
        split_validation(np.arange(4), labels, fraction=1.0)
    with pytest.raises(ValueError):
        split_validation(np.array([0, 0]), labels, fraction=0.5)
    with pytest.raises(ValueError):
        split_validation(np.array([5]), labels, fraction=0.5)
