"""The gradient-ratio picture: readable ``g`` ticks and a colour bar of the real class
sizes (the figures are caught as they are saved)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from eqlosses_lab import report

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402


@pytest.fixture
def saved_figures(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """Every figure saved while the test runs, drawn (so its tick labels are set)."""
    figures: list[Figure] = []
    save = Figure.savefig

    def keep(self: Figure, *args: Any, **kwargs: Any) -> None:
        save(self, *args, **kwargs)
        figures.append(self)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def _runs(history: list[list[float]], sizes: list[int]) -> list[dict[str, Any]]:
    return [{"loss": "softmax-eql", "seed": 0, "grad_ratio_history": history, "class_sizes": sizes}]


def _labelled_ticks(ax: Any) -> list[float]:
    """The y values of the tick labels a reader sees: drawn, inside the axis, not empty."""
    low, high = sorted(ax.get_ylim())
    shown = []
    for minor in (False, True):
        for tick, label in zip(
            ax.get_yticks(minor=minor), ax.get_yticklabels(minor=minor), strict=True
        ):
            if low <= tick <= high and label.get_visible() and label.get_text().strip():
                shown.append(float(tick))
    return sorted(shown)


@pytest.mark.parametrize(
    ("low", "high", "least"),
    [(0.02, 0.9, 4), (0.3, 1.2, 3), (1e-3, 40.0, 5), (5.0, 2e3, 3)],
)
def test_g_axis_labels_enough_ticks_to_read_g(
    tmp_path: Path, saved_figures: list[Figure], low: float, high: float, least: int
) -> None:
    # 6 classes over 4 epochs, g between low and high
    history = [[low * (high / low) ** ((c + e) / 8) for c in range(6)] for e in range(4)]
    assert report.plot_grad_ratio(_runs(history, [500, 200, 80, 30, 10, 3]), tmp_path / "g.png")
    figure = saved_figures[-1]
    figure.canvas.draw()
    ax = figure.axes[0]
    ticks = _labelled_ticks(ax)
    assert len(ticks) >= least, ticks
    # every value is inside the axis, and the labels bracket the data
    values = [g for row in history for g in row]
    bottom, top = sorted(ax.get_ylim())
    assert bottom <= min(values) and max(values) <= top
    assert ticks[0] <= min(values) * 1.0001 and ticks[-1] >= max(values) * 0.9999
    labels = {text.get_text() for text in ax.get_yticklabels() if text.get_text()}
    assert len(labels) == len(ticks)  # no two ticks read the same


def test_a_zero_g_stays_on_the_axis(tmp_path: Path, saved_figures: list[Figure]) -> None:
    history = [[0.0, 0.05, 0.5], [0.0, 0.1, 0.9]]
    assert report.plot_grad_ratio(_runs(history, [100, 10, 1]), tmp_path / "g.png")
    figure = saved_figures[-1]
    figure.canvas.draw()
    ticks = _labelled_ticks(figure.axes[0])
    assert ticks[0] == 0.0 and len(ticks) >= 4


def test_colour_bar_spans_the_class_sizes(tmp_path: Path, saved_figures: list[Figure]) -> None:
    sizes = [6000, 1300, 280, 60]
    history = [[1.0, 0.5, 0.2, 0.05]]
    assert report.plot_grad_ratio(_runs(history, sizes), tmp_path / "g.png")
    figure = saved_figures[-1]
    panel, bar = figure.axes
    assert bar.get_ylabel() == "training images of the class"
    bottom, top = bar.get_ylim()
    assert math.isclose(bottom, min(sizes)) and math.isclose(top, max(sizes))
    # the smallest and the largest class take the two ends of the colour map
    cmap = matplotlib.colormaps["viridis"]
    colours = {size: line.get_color() for size, line in zip(sizes, panel.get_lines(), strict=True)}
    assert colours[min(sizes)] == pytest.approx(cmap(0.0))
    assert colours[max(sizes)] == pytest.approx(cmap(1.0))
    # in between, on a logarithmic scale: 280 sits at log(280/60) / log(6000/60)
    middle = math.log(280 / 60) / math.log(6000 / 60)
    assert colours[280] == pytest.approx(cmap(middle), abs=1 / 256)


def test_segmentation_g_axis_is_readable(tmp_path: Path, saved_figures: list[Figure]) -> None:
    history = [[0.03, 0.2, 0.7], [0.05, 0.3, 0.8]]
    runs = _runs(history, [10, 20, 30])
    assert report.plot_grad_ratio_by_class(
        runs, tmp_path / "g.png", class_names=["a", "b", "c"], highlight=[0]
    )
    figure = saved_figures[-1]
    figure.canvas.draw()
    assert len(_labelled_ticks(figure.axes[0])) >= 4
