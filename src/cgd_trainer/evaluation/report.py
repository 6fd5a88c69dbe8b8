"""Plots (matplotlib, Agg backend) and markdown reports for `cgd eval`, checkpoint selection and `cgd diagnose`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import MissingDependency
from .metrics import CRITIQUE_DETECTORS
from .protocols import PROTOCOLS, get_protocol


def _pyplot():
    # Agg renders to files without a display (servers, CI); set before pyplot is first imported.
    try:
        import matplotlib
    except ImportError as error:
        raise MissingDependency(
            "Plots need matplotlib: `pip install 'cgd-trainer[eval]'`, or set `plot: false`."
        ) from error

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
    accuracy: Mapping[str, Mapping[str, float | None]],
    path: str | Path,
    title: str = "Accuracy per benchmark",
    errors: Mapping[str, Mapping[str, float | None]] | None = None,
) -> Path:
    """
    Draws grouped bars: one group per benchmark, one bar per model.

    Args:
        accuracy (`Mapping[str, Mapping[str, float]]`): `{model label: {benchmark: accuracy in [0, 1]}}`; a missing
            or `None` value draws no bar.
        path (`str` or `Path`): Where to save the PNG.
        title (`str`): Title of the figure.
        errors (`Mapping[str, Mapping[str, float | None]]`, *optional*): Same shape: a standard deviation (in
            [0, 1]) drawn as an error bar on each bar that has one (e.g. over seeds).

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
        xs, heights, spreads = [], [], []
        for b, benchmark in enumerate(benchmarks):
            value = accuracy[model].get(benchmark)
            if value is not None:
                xs.append(b - 0.4 + width * (m + 0.5))
                heights.append(100 * value)
                spread = (errors or {}).get(model, {}).get(benchmark)
                spreads.append(0.0 if spread is None else 100 * spread)
        bars = axes.bar(xs, heights, width=width, label=model, yerr=spreads if any(spreads) else None, capsize=3)
        axes.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
    axes.set_xticks(range(len(benchmarks)), benchmarks)
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 105)
    axes.set_title(title)
    # Below the axes (and below tick labels of several lines), so that the legend never hides a bar near 100%.
    lines = max((name.count("\n") + 1 for name in benchmarks), default=1)
    axes.legend(
        fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.03 - 0.07 * lines), ncol=min(4, max(1, len(models)))
    )
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


# --- reports ---------------------------------------------------------------------------------------------------------


def render_report(summary: Mapping[str, Any], plot_name: str | None = "accuracy.png") -> str:
    """
    The markdown report of an evaluation: the protocol preset, accuracy table (models x benchmarks), the accuracy
    under every preset side by side, pass@k, format drift, data notes.

    Args:
        summary (`Mapping`): What [`~cgd_trainer.evaluation.evaluate`] writes to `summary.json`.
        plot_name (`str`, *optional*): The accuracy plot, relative to the report; `None` for none.

    Returns:
        `str`: The report.
    """
    decoding = summary["decoding"]
    benchmarks = [b["name"] for b in summary["benchmarks"]]
    results = summary["results"]
    lines = ["# Evaluation report", ""]
    if decoding["temperature"] == 0:
        mode = "greedy decoding, pass@1"
    else:
        mode = (
            f"sampling (temperature {decoding['temperature']}, top_p {decoding['top_p']}, seed {decoding['seed']}), "
            f"{decoding['num_samples']} samples per problem"
        )
    preset = get_protocol(summary.get("config", {}).get("protocol", "strict"))
    lines += [
        f"Protocol: **{preset.name}**. Answers: {preset.answers}. Comparable with {preset.comparable_with}.",
        "",
        f"Decoding: {mode}; at most {decoding['max_new_tokens']} new tokens. Accuracy in %.",
        "",
        "## Accuracy",
        "",
    ]
    rows = []
    for label, per_benchmark in results.items():
        cells = [percent(per_benchmark.get(b, {}).get("accuracy")) for b in benchmarks]
        rows.append([label, *cells, percent(summary["average"].get(label))])
    lines += [markdown_table(["model", *benchmarks, "average"], rows), ""]
    if plot_name:
        lines += [f"![accuracy per benchmark]({plot_name})", ""]
    lines += _gradings_table(results, benchmarks, preset.name)
    if decoding["num_samples"] > 1:
        ks = decoding["pass_k"]
        lines += ["## Sampled pass@k", "", "Per-sample accuracy is the mean ± sd over the sample indices.", ""]
        rows = []
        for label, per_benchmark in results.items():
            for benchmark in benchmarks:
                metrics = per_benchmark.get(benchmark)
                if not metrics or metrics["accuracy"] is None:
                    continue
                spread = f"{percent(metrics['sample_accuracy_mean'])} ± {percent(metrics['sample_accuracy_sd'])}"
                rows.append([label, benchmark, spread, *[percent(metrics["pass@k"].get(str(k))) for k in ks]])
        lines += [markdown_table(["model", "benchmark", "per-sample acc", *[f"pass@{k}" for k in ks]], rows), ""]
    lines += [
        "## Format drift",
        "",
        "Rates in % of the model's outputs on all benchmarks (failed generations left out). *critique-style* counts "
        "outputs matching any detector below.",
        "",
    ]
    rows = []
    for label, drift in summary["drift"].items():
        rates = drift.get("critique_rates", {})
        mean_chars = "-" if drift["mean_chars"] is None else f"{drift['mean_chars']:.0f}"
        mean_words = "-" if drift["mean_words"] is None else f"{drift['mean_words']:.0f}"
        rows.append(
            [
                label,
                drift["outputs"],
                percent(drift["boxed_rate"]),
                percent(drift["critique_rate"]),
                *[percent(rates.get(name)) for name in CRITIQUE_DETECTORS],
                mean_chars,
                mean_words,
            ]
        )
    headers = ["model", "outputs", "boxed", "critique-style", *CRITIQUE_DETECTORS, "mean chars", "mean words"]
    lines += [markdown_table(headers, rows), ""]
    lines += ["Detectors (case-insensitive regular expressions):", ""]
    lines += [f"- `{name}`: `{pattern.pattern}`" for name, pattern in CRITIQUE_DETECTORS.items()]
    lines += ["", "## Data and failures", ""]
    rows = []
    for info in summary["benchmarks"]:
        failed = ", ".join(
            f"{label}: {results[label].get(info['name'], {}).get('failed_samples', 0)}" for label in results
        )
        rows.append([info["name"], info["source"], info["problems"], info["ungradable"], failed])
    lines += [
        markdown_table(["benchmark", "source", "problems graded", "ungradable (excluded)", "failed samples"], rows),
        "",
        "Problems whose reference answer math-verify cannot parse are excluded from every score; failed "
        "generations are graded wrong.",
        "",
    ]
    lines += ["## Models", ""]
    lines += [
        f"- **{m['label']}**: `{m['model']}` ({m['backend']['backend']}, {m['backend']['prompt_format']})"
        for m in summary["models"]
    ]
    return "\n".join(lines) + "\n"


def _gradings_table(results: Mapping[str, Any], benchmarks: Sequence[str], chosen: str) -> list[str]:
    """The accuracy of every model under every protocol preset, one row per model and preset (nothing without)."""
    rows = []
    for label, per_benchmark in results.items():
        for name in PROTOCOLS:
            values = [per_benchmark.get(b, {}).get("accuracy_by_protocol", {}).get(name) for b in benchmarks]
            if all(value is None for value in values):
                continue
            present = [value for value in values if value is not None]
            average = sum(present) / len(present) if present else None
            marker = f"{name} (reported)" if name == chosen else name
            rows.append([label, marker, *[percent(value) for value in values], percent(average)])
    if not rows:
        return []
    return [
        "## Gradings side by side",
        "",
        "The same outputs graded under each protocol preset (`correct_<preset>` in `samples.jsonl`). `strict` reads "
        "only the last box; `harness` reads the answer as the math-evaluation-harness does (Minerva's final-answer "
        'line, the last "boxed", everything after "the answer is", the last number, then its clean-up).',
        "",
        markdown_table(["model", "grading", *benchmarks, "average"], rows),
        "",
    ]


def render_selection_report(selection: Mapping[str, Any], plot_name: str | None = "selection.png") -> str:
    """
    The markdown report of a checkpoint selection: validation accuracy per checkpoint and the choice.

    Args:
        selection (`Mapping`): What [`~cgd_trainer.evaluation.select_checkpoint`] writes to `selection.json`.
        plot_name (`str`, *optional*): The accuracy-per-checkpoint plot; `None` for none.

    Returns:
        `str`: The report.
    """
    best = selection["selected"]
    lines = [
        "# Checkpoint selection",
        "",
        f"Validation set: `{selection['validation']['source']}` ({selection['validation']['problems']} problems, "
        f"{selection['validation']['ungradable']} ungradable excluded). Ties go to the earlier step.",
        "",
        f"Selected: **{best['label']}** (`{best['path']}`), validation accuracy {percent(best['accuracy'])}%.",
        "",
    ]
    if selection.get("forced_on_test"):
        lines += [
            "**Warning:** selected on a test benchmark (`force_selection_on_test`): scores on it are biased.",
            "",
        ]
    rows = [
        [
            c["label"],
            "-" if c["step"] is None else c["step"],
            percent(c["accuracy"]),
            c["failed_samples"],
            "✓" if c["label"] == best["label"] else "",
        ]
        for c in selection["checkpoints"]
    ]
    lines += [markdown_table(["checkpoint", "step", "accuracy (%)", "failed samples", "selected"], rows), ""]
    if plot_name:
        lines += [f"![accuracy per checkpoint]({plot_name})", ""]
    return "\n".join(lines)
