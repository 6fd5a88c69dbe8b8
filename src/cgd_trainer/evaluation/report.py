"""Plots (matplotlib, Agg backend) and markdown reports for `cgd eval`, checkpoint selection and `cgd diagnose`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _pyplot():
    # Agg renders to files without a display (servers, CI); set before pyplot is first imported.
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def percent(value: float | None, digits: int = 1) -> str:
    """Formats a rate in [0, 1] as a percentage, or `-` when there is none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """
    Renders a markdown table.

    Args:
        headers (`Sequence[str]`): Column names.
        rows (`Sequence[Sequence]`): Cells, converted with `str`; `|` in a cell is escaped.

    Returns:
        `str`: The table, without a trailing newline.
    """

    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def plot_benchmark_accuracy(
    accuracy: Mapping[str, Mapping[str, float | None]], path: str | Path, title: str = "Accuracy per benchmark"
) -> Path:
    """
    Draws grouped bars: one group per benchmark, one bar per model.

    Args:
        accuracy (`Mapping[str, Mapping[str, float]]`): `{model label: {benchmark: accuracy in [0, 1]}}`; a missing
            or `None` value draws no bar.
        path (`str` or `Path`): Where to save the PNG.
        title (`str`): Title of the figure.

    Returns:
        `Path`: The saved file.
    """
    plt = _pyplot()
    models = list(accuracy)
    benchmarks: list[str] = []
    for values in accuracy.values():
        benchmarks += [name for name in values if name not in benchmarks]
    width = 0.8 / max(1, len(models))
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 + 1.1 * len(benchmarks) * max(1, len(models)) ** 0.5), 4.2))
    for m, model in enumerate(models):
        xs, heights = [], []
        for b, benchmark in enumerate(benchmarks):
            value = accuracy[model].get(benchmark)
            if value is not None:
                xs.append(b - 0.4 + width * (m + 0.5))
                heights.append(100 * value)
        bars = axes.bar(xs, heights, width=width, label=model)
        axes.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    axes.set_xticks(range(len(benchmarks)), benchmarks)
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 105)
    axes.set_title(title)
    # Below the axes, so that the legend never hides a bar near 100%.
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=min(4, max(1, len(models))))
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_checkpoint_accuracy(
    points: Sequence[Mapping[str, Any]], path: str | Path, best: str | None = None, title: str | None = None
) -> Path:
    """
    Draws validation accuracy per checkpoint as a line, the selected checkpoint marked.

    Args:
        points (`Sequence[Mapping]`): In training order, each with `label` and `accuracy` (in [0, 1]).
        path (`str` or `Path`): Where to save the PNG.
        best (`str`, *optional*): Label of the selected checkpoint.
        title (`str`, *optional*): Title of the figure.

    Returns:
        `Path`: The saved file.
    """
    plt = _pyplot()
    labels = [str(point["label"]) for point in points]
    values = [100 * point["accuracy"] for point in points]
    figure, axes = plt.subplots(figsize=(max(5.0, 0.9 * len(points) + 2), 3.8))
    axes.plot(range(len(points)), values, marker="o")
    if best in labels:
        i = labels.index(best)
        axes.scatter([i], [values[i]], s=160, facecolors="none", edgecolors="red", linewidths=2, label="selected")
        axes.legend(fontsize=8)
    axes.set_xticks(range(len(points)), labels, rotation=30, ha="right", fontsize=8)
    axes.set_ylabel("validation accuracy (%)")
    low, high = (min(values), max(values)) if values else (0.0, 100.0)
    axes.set_ylim(max(0.0, low - 10), min(105.0, high + 10))
    axes.set_title(title or "Accuracy per checkpoint")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
