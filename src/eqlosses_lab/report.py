"""Comparison outputs: results.json, a Markdown table and PNG plots.

Each run is a dict with at least ``loss``, ``seed``, ``metrics`` (name → value, higher
is better), ``per_class`` (one value per class), ``class_sizes`` (the x axis of the
per-class plot) and optionally ``grad_ratio_history`` (list of per-epoch ``g`` vectors).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .metrics import beats, mean_std

Run = dict[str, Any]


def _mean_std_dict(values: Sequence[float]) -> dict[str, float]:
    mean, std = mean_std(values)
    return {"mean": mean, "std": std}


def summarise(runs: Sequence[Run], losses: Sequence[str], metric_names: Sequence[str]) -> Run:
    """Mean and standard deviation over seeds of each metric of each loss."""
    summary: Run = {}
    for loss in losses:
        mine = [r for r in runs if r["loss"] == loss]
        if not mine:
            continue
        summary[loss] = {
            "seeds": [r["seed"] for r in mine],
            **{
                name: _mean_std_dict([r["metrics"][name] for r in mine])
                for name in metric_names
                if all(name in r["metrics"] for r in mine)
            },
        }
    return summary


def compare_to(runs: Sequence[Run], loss: str, baseline: str, metric: str) -> str:
    """'beats', 'loses' or 'tie' of ``loss`` against ``baseline`` on ``metric`` (paired by
    seed; see :func:`eqlosses_lab.metrics.beats`)."""
    by_seed_a = {r["seed"]: r["metrics"].get(metric) for r in runs if r["loss"] == loss}
    by_seed_b = {r["seed"]: r["metrics"].get(metric) for r in runs if r["loss"] == baseline}
    seeds = sorted(set(by_seed_a) & set(by_seed_b))
    if not seeds or any(by_seed_a[s] is None or by_seed_b[s] is None for s in seeds):
        return "n/a"
    a = [by_seed_a[s] for s in seeds]
    b = [by_seed_b[s] for s in seeds]
    if beats(a, b):
        return "beats"
    if beats(b, a):
        return "loses"
    return "tie"


def markdown_table(
    runs: Sequence[Run],
    losses: Sequence[str],
    metric_names: Sequence[str],
    baseline: str,
    *,
    scale: float = 100.0,
    decimals: int = 1,
) -> str:
    """Rows: losses; columns: metrics as ``mean ± std`` (times ``scale``), and how each
    loss compares with ``baseline`` on every metric (↑ beats, ↓ loses, = neither)."""
    summary = summarise(runs, losses, metric_names)
    # groups with no class (e.g. no few-shot class) are left out
    metric_names = [m for m in metric_names if any(m in stats for stats in summary.values())]
    header = ["loss", "seeds", *metric_names, f"vs {baseline}"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    marks = {"beats": "↑", "loses": "↓", "tie": "=", "n/a": "·"}
    for loss in losses:
        if loss not in summary:
            continue
        cells = [f"`{loss}`", str(len(summary[loss]["seeds"]))]
        for name in metric_names:
            stat = summary[loss].get(name)
            if stat is None or math.isnan(stat["mean"]):
                cells.append("—")
            else:
                cells.append(
                    f"{stat['mean'] * scale:.{decimals}f} ± {stat['std'] * scale:.{decimals}f}"
                )
        if loss == baseline:
            cells.append("baseline")
        else:
            cells.append(
                " ".join(
                    f"{name}{marks[compare_to(runs, loss, baseline, name)]}"
                    for name in metric_names
                )
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def best_per_metric(
    runs: Sequence[Run], losses: Sequence[str], metric_names: Sequence[str], baseline: str
) -> dict[str, Run]:
    """For each metric: the loss with the highest mean over seeds (the first listed on a
    tie), its mean and standard deviation, the baseline's, and ``vs_baseline``: the
    verdict of :func:`compare_to` (``'baseline'`` when the best is the baseline itself).
    Metrics no run has a number for are left out."""
    summary = summarise(runs, losses, metric_names)
    best: dict[str, Run] = {}
    for metric in metric_names:
        stats = {
            loss: values[metric]
            for loss, values in summary.items()
            if metric in values and not math.isnan(values[metric]["mean"])
        }
        if not stats:
            continue
        winner = max(stats, key=lambda loss: stats[loss]["mean"])
        base = stats.get(baseline)
        best[metric] = {
            "loss": winner,
            "mean": stats[winner]["mean"],
            "std": stats[winner]["std"],
            "seeds": len(summary[winner]["seeds"]),
            "baseline_mean": None if base is None else base["mean"],
            "baseline_std": None if base is None else base["std"],
            "vs_baseline": "baseline"
            if winner == baseline
            else compare_to(runs, winner, baseline, metric),
        }
    return best


def best_lines(best: dict[str, Run], baseline: str, *, scale: float = 100.0) -> str:
    """Markdown: the best loss on each metric and whether it beats the baseline."""
    if not best:
        return ""
    one_seed = any(entry["seeds"] < 2 for entry in best.values())
    lines = [
        f"Best loss on each metric (mean ± std over seeds). It beats `{baseline}` when the "
        "mean gap exceeds the two standard deviations summed and has the same sign on every "
        "seed" + ("; with one seed there is no spread, so any gap counts." if one_seed else "."),
        "",
    ]

    def value(mean: float, std: float) -> str:
        return f"{mean * scale:.1f} ± {std * scale:.1f}"

    for metric, entry in best.items():
        mine = f"- {metric}: `{entry['loss']}` {value(entry['mean'], entry['std'])}"
        verdict = entry["vs_baseline"]
        if verdict == "baseline":
            lines.append(f"{mine}, the baseline itself")
            continue
        if verdict == "n/a":
            lines.append(f"{mine}; no `{baseline}` run on the same seeds to compare with")
            continue
        theirs = f"`{baseline}` ({value(entry['baseline_mean'], entry['baseline_std'])})"
        if verdict == "beats":
            lines.append(f"{mine}, beats {theirs}")
        elif verdict == "loses":
            lines.append(f"{mine}, loses to {theirs} on the seeds both ran")
        else:
            lines.append(f"{mine}, does not beat {theirs}: the gap is within the seeds' spread")
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (files only, no display); imported on
    first use, so that the losses never need matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_per_class(
    runs: Sequence[Run], losses: Sequence[str], path: Path, *, ylabel: str, xlabel: str
) -> None:
    """Per-class metric (mean over seeds) against the class size, one panel per loss."""
    plt = _pyplot()

    present = [loss for loss in losses if any(r["loss"] == loss for r in runs)]
    cols = min(4, len(present))
    rows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False, sharex=True, sharey=True
    )
    for ax, loss in zip(axes.flat, present, strict=False):
        mine = [r for r in runs if r["loss"] == loss]
        sizes = mine[0]["class_sizes"]
        for run in mine:
            ax.scatter(run["class_sizes"], run["per_class"], s=8, alpha=0.35, color="tab:blue")
        if all(r["class_sizes"] == sizes for r in mine):
            mean = [sum(r["per_class"][c] for r in mine) / len(mine) for c in range(len(sizes))]
            order = sorted(range(len(sizes)), key=lambda c: sizes[c])
            ax.plot([sizes[c] for c in order], [mean[c] for c in order], color="tab:red", lw=1)
        ax.set_xscale("log")
        ax.set_title(loss, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(present) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel(xlabel)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grad_ratio_figure(
    runs: Sequence[Run], panel_size: tuple[float, float]
) -> tuple[Any, Any, Any, dict[str, Run]] | None:
    """pyplot, a figure with one panel of ``panel_size`` inches per loss that records ``g``
    per epoch, the row of panels, and each such loss's first run; ``None`` if no run
    records ``g``."""
    recorded: dict[str, Run] = {}
    for run in runs:
        if run.get("grad_ratio_history") and run["loss"] not in recorded:
            recorded[run["loss"]] = run
    if not recorded:
        return None
    plt = _pyplot()
    width, height = panel_size
    fig, axes = plt.subplots(
        1, len(recorded), figsize=(width * len(recorded), height), squeeze=False
    )
    return plt, fig, axes[0], recorded


def _ratio_ticks(values: Sequence[float]) -> tuple[list[float], bool]:
    """Tick positions of a logarithmic ``g`` axis that spans ``values``, and whether the
    axis must also show 0 (a class whose ``g`` is 0, which a log axis cannot place).

    Ticks sit at 1, 2 and 5 times each power of ten when the values span two decades or
    less, at the powers of ten otherwise (every second one beyond six decades), from
    the last tick at or below the smallest positive value to the first at or above the
    largest, so every tick is labelled and the labels bracket the data.
    """
    finite = [v for v in values if math.isfinite(v)]
    positive = [v for v in finite if v > 0] or [1.0]
    low = math.floor(math.log10(min(positive)))
    high = math.ceil(math.log10(max(positive)))
    high = max(high, low + 1)
    if high - low <= 2:
        steps = [m * 10.0**e for e in range(low, high + 1) for m in (1, 2, 5)]
    else:
        stride = 2 if high - low > 6 else 1
        steps = [10.0**e for e in range(low, high + 1, stride)]
    first = max(i for i, t in enumerate(steps) if t <= min(positive) * (1 + 1e-9))
    last = min(i for i, t in enumerate(steps) if t >= max(positive) * (1 - 1e-9))
    return steps[first : max(last, first + 1) + 1], any(v <= 0 for v in finite)


def _format_g_axes(ax: Any, values: Sequence[float]) -> None:
    """Whole epochs across; up, a logarithmic ``g`` axis whose every tick is labelled (see
    :func:`_ratio_ticks`), symmetric-logarithmic, linear below the smallest tick, when
    some ``g`` is 0."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ticks, with_zero = _ratio_ticks(values)
    # a little room beyond the outer ticks, so a value on one is not cut by the frame
    margin = 1.15
    if with_zero:
        ax.set_yscale("symlog", linthresh=ticks[0])
        ax.set_ylim(-0.15 * ticks[0], ticks[-1] * margin)
        ticks = [0.0, *ticks]
    else:
        ax.set_yscale("log")
        ax.set_ylim(ticks[0] / margin, ticks[-1] * margin)
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_locator(NullLocator())


def plot_grad_ratio(
    runs: Sequence[Run], path: Path, *, size_label: str = "training images of the class"
) -> bool:
    """The per-class gradient ratio ``g`` over training (first seed of each loss that
    records it), each class coloured by its class size on a logarithmic colour scale over
    the sizes' actual range, labelled ``size_label``; False if no run records ``g``."""
    figure = _grad_ratio_figure(runs, (4.2, 3.2))
    if figure is None:
        return False
    plt, fig, axes, recorded = figure
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import NullLocator

    cmap = plt.get_cmap("viridis")
    # a class without a training sample sits at the scale's bottom with the size-1 ones
    sizes = [max(1, size) for run in recorded.values() for size in run["class_sizes"]]
    low, high = min(sizes), max(sizes)
    norm = LogNorm(vmin=low, vmax=high if high > low else low * 10)
    for ax, (loss, run) in zip(axes, recorded.items(), strict=True):
        history = run["grad_ratio_history"]
        for c, size in enumerate(run["class_sizes"]):
            colour = cmap(norm(max(1, size)))
            # a single epoch is a point, which a line alone would not show
            marker = "o" if len(history) == 1 else None
            epochs = range(1, len(history) + 1)
            ax.plot(epochs, [h[c] for h in history], color=colour, lw=0.8, marker=marker, ms=3)
        _format_g_axes(ax, [g for h in history for g in h])
        ax.set_title(f"{loss}: g per class", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("pos / neg gradient (g)")
    mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    cbar = fig.colorbar(mappable, ax=axes.tolist(), fraction=0.03)
    cbar.set_label(size_label)
    # the smallest and largest class sizes, and round sizes between them not too close
    steps, _ = _ratio_ticks([low, high])
    between = [t for t in steps if low * 1.3 < t < high / 1.3]
    cbar.set_ticks([low, *between, high], labels=[f"{t:g}" for t in (low, *between, high)])
    cbar.ax.yaxis.set_minor_locator(NullLocator())
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def plot_segmentation_examples(
    images: Any,
    labels: Any,
    predictions: dict[str, Any],
    path: Path,
    *,
    palette: Sequence[tuple[int, int, int]],
    class_names: Sequence[str],
) -> None:
    """A few test images: the image, its ground truth and each loss's predicted map.

    Args:
        images: uint8 ``(K, H, W, 3)``.
        labels: integer ``(K, H, W)``; labels past the classes (unlabelled) take the
            palette's last colour.
        predictions: loss name → integer ``(K, H, W)`` predicted maps.
        palette: one RGB colour per class, plus one for unlabelled.
        class_names: for the legend.
    """
    plt = _pyplot()
    import numpy as np
    from matplotlib.patches import Patch

    colours = np.asarray(palette, dtype=np.uint8)
    last = len(colours) - 1
    columns = ["image", "ground truth", *predictions]
    rows = len(images)
    fig, axes = plt.subplots(
        rows, len(columns), figsize=(2.4 * len(columns), 1.9 * rows + 0.6), squeeze=False
    )
    for k in range(rows):
        panels = [
            np.asarray(images[k]),
            colours[np.minimum(np.asarray(labels[k]), last)],
            *(colours[np.minimum(np.asarray(p[k]), last)] for p in predictions.values()),
        ]
        for ax, panel, title in zip(axes[k], panels, columns, strict=True):
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if k == 0:
                ax.set_title(title, fontsize=9)
    handles = [Patch(color=colours[c] / 255.0, label=name) for c, name in enumerate(class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(6, len(handles)), fontsize=7)
    fig.tight_layout(rect=(0.0, 0.07, 1.0, 1.0))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_grad_ratio_by_class(
    runs: Sequence[Run], path: Path, *, class_names: Sequence[str], highlight: Sequence[int]
) -> bool:
    """The gradient ratio ``g`` of each named class over training (first seed of each loss
    that records it), one labelled line per class; the ``highlight`` classes (e.g. the
    rare ones) dashed. For a few classes, where a colour scale would hide which is which.
    False if no run records ``g``."""
    figure = _grad_ratio_figure(runs, (5.0, 3.4))
    if figure is None:
        return False
    plt, fig, axes, recorded = figure
    cmap = plt.get_cmap("tab20")
    marked = set(highlight)
    for ax, (loss, run) in zip(axes, recorded.items(), strict=True):
        history = run["grad_ratio_history"]
        epochs = range(1, len(history) + 1)
        for c, name in enumerate(class_names):
            ax.plot(
                epochs,
                [h[c] for h in history],
                color=cmap(c % 20),
                lw=1.2,
                marker="o" if len(history) == 1 else None,
                ms=3,
                ls="--" if c in marked else "-",
                label=f"{name} *" if c in marked else name,
            )
        _format_g_axes(ax, [g for h in history for g in h])
        ax.set_title(f"{loss}: g per class (* = rare, dashed)", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("pos / neg gradient (g)")
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return True


def plot_detections(
    images: Sequence[Any],
    ground_truth: Sequence[tuple[Sequence[Sequence[float]], Sequence[int]]],
    panels: dict[str, Sequence[Run]],
    path: Path,
    *,
    score_threshold: float = 0.3,
) -> None:
    """Test canvases (columns) with each loss's detections (rows).

    Ground-truth boxes are dashed green; a detection at or above ``score_threshold`` is
    blue when its class is on the canvas and red otherwise, labelled ``class:score``.
    ``panels[loss][k]`` holds ``boxes``, ``scores`` and ``labels`` for ``images[k]``.
    """
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    rows, cols = len(panels), len(images)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for row, (loss, examples) in enumerate(panels.items()):
        for col, (image, (gt_boxes, gt_labels), example) in enumerate(
            zip(images, ground_truth, examples, strict=False)
        ):
            ax = axes[row][col]
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            for (x1, y1, x2, y2), label in zip(gt_boxes, gt_labels, strict=True):
                ax.add_patch(
                    Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="tab:green", ls="--")
                )
                ax.text(x1, y2, str(label), color="tab:green", fontsize=6, va="top")
            for (x1, y1, x2, y2), score, label in zip(
                example["boxes"], example["scores"], example["labels"], strict=True
            ):
                if score < score_threshold:
                    continue
                colour = "tab:blue" if label in gt_labels else "tab:red"
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colour))
                ax.text(x1, y1, f"{label}:{score:.2f}", color=colour, fontsize=6, va="bottom")
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(loss)
    fig.suptitle(
        f"green dashed: ground truth; blue: detection of a class on the canvas, red: of "
        f"another class (score >= {score_threshold})",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
