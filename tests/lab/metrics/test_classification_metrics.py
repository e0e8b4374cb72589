"""Classification metrics and the "beats" rule against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from eqlosses_lab.metrics import beats, class_groups, group_accuracy, mean_std, per_class_accuracy
from eqlosses_lab.report import compare_to, markdown_table


def test_per_class_accuracy_by_hand() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    predictions = torch.tensor([0, 1, 0, 1, 0, 2, 2, 2, 0])
    got = per_class_accuracy(predictions, labels, num_classes=4)
    assert got[:3].tolist() == pytest.approx([2 / 3, 1 / 2, 3 / 4])
    assert math.isnan(got[3])  # no test sample of class 3


def test_groups_thirds_and_shots() -> None:
    counts = [500, 150, 101, 100, 60, 20, 19, 3, 1]
    groups = class_groups(counts)
    assert groups["head"] == [0, 1, 2]
    assert groups["middle"] == [3, 4, 5]
    assert groups["tail"] == [6, 7, 8]
    assert groups["many"] == [0, 1, 2]  # > 100
    assert groups["medium"] == [3, 4, 5]  # 20 ..= 100
    assert groups["few"] == [6, 7, 8]  # < 20


def test_empty_shot_groups_are_left_out() -> None:
    groups = class_groups([300, 200, 150])
    assert "medium" not in groups and "few" not in groups


def test_thirds_sort_by_count_not_index() -> None:
    groups = class_groups([1, 50, 9, 200, 30, 5])
    assert groups["head"] == [1, 3]
    assert groups["middle"] == [2, 4]
    assert groups["tail"] == [0, 5]


def test_group_accuracy_by_hand() -> None:
    counts = [300, 200, 10]
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    predictions = torch.tensor([0, 0, 1, 0, 0, 0])
    result = group_accuracy(predictions, labels, counts)
    assert result.overall == pytest.approx(3 / 6)
    assert result.per_class == pytest.approx([1.0, 0.5, 0.0])
    assert result.groups["head"] == pytest.approx(1.0)
    assert result.groups["tail"] == pytest.approx(0.0)
    assert result.groups["many"] == pytest.approx(0.75)
    assert result.groups["few"] == pytest.approx(0.0)


def test_mean_std_sample_deviation() -> None:
    mean, std = mean_std([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert std == pytest.approx(math.sqrt(5 / 3))
    assert mean_std([7.0]) == (7.0, 0.0)


def test_beats_needs_gap_beyond_spread_and_every_seed() -> None:
    assert beats([0.80, 0.82, 0.81], [0.70, 0.71, 0.72])
    # mean gap 0.05 but spreads 0.1 + 0.01: not a win
    assert not beats([0.70, 0.90, 0.80], [0.74, 0.75, 0.76])
    # large mean gap, but one seed goes the other way
    assert not beats([0.99, 0.99, 0.60], [0.61, 0.62, 0.61])
    assert not beats([0.5, 0.5], [0.5, 0.5])
    with pytest.raises(ValueError, match="a, b"):
        beats([0.1], [0.1, 0.2])


def test_table_marks_and_missing_groups() -> None:
    def run(loss: str, seed: int, overall: float) -> dict[str, object]:
        return {"loss": loss, "seed": seed, "metrics": {"overall": overall, "tail": overall}}

    runs = [run("ce", s, v) for s, v in enumerate([0.50, 0.51, 0.52])]
    runs += [run("new", s, v) for s, v in enumerate([0.60, 0.61, 0.62])]
    runs += [run("bad", s, v) for s, v in enumerate([0.40, 0.41, 0.42])]
    assert compare_to(runs, "new", "ce", "overall") == "beats"
    assert compare_to(runs, "bad", "ce", "overall") == "loses"
    assert compare_to(runs, "ce", "ce", "overall") == "tie"
    table = markdown_table(runs, ["ce", "new", "bad"], ["overall", "tail", "few"], "ce")
    lines = table.splitlines()
    assert lines[0] == "| loss | seeds | overall | tail | vs ce |"  # 'few' absent: no column
    assert "| `new` | 3 | 61.0 ± 1.0 | 61.0 ± 1.0 | overall↑ tail↑ |" in lines
    assert "| `bad` | 3 | 41.0 ± 1.0 | 41.0 ± 1.0 | overall↓ tail↓ |" in lines
