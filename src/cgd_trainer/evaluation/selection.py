"""Checkpoint selection: score every checkpoint of a training run on a held-out validation set and keep the best.

The selection never loads a model itself: [`select_checkpoint`] is handed the function that generates and grades one
model's outputs (the runner's), so that every model of `cgd eval` goes through the same code.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .benchmarks import Benchmark, Problem, benchmark_info, load_problems, resolve_benchmark
from .config import EvalConfig, ModelSpec
from .metrics import score_samples
from .report import percent, plot_checkpoint_accuracy, render_selection_report
from .samples import SampleStore

logger = logging.getLogger(__name__)

# Generates and grades one model's outputs on benchmarks, appending each graded sample to the file: the rows per
# benchmark (see `cgd_trainer.evaluation.runner.generate_and_grade`).
GenerateRows = Callable[[ModelSpec, Mapping[str, Sequence[Problem]], SampleStore], dict[str, list[dict[str, Any]]]]


@dataclass
class Checkpoint:
    """A candidate of checkpoint selection: label, folder and training step (`None`: the final model)."""

    label: str
    path: str
    step: int | None


_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_MODEL_FILES = ("config.json", "adapter_config.json")


def find_checkpoints(training_dir: str | Path, include_final: bool = True) -> list[Checkpoint]:
    """
    Lists the saved models of a training `output_dir`, in training order.

    Args:
        training_dir (`str` or `Path`): The folder holding `checkpoint-<step>` folders.
        include_final (`bool`): Also list the model saved at the top of the folder (as `final`, after every step).

    Returns:
        `list[Checkpoint]`

    Raises:
        `ValueError`: when the folder does not exist or holds no saved model.
    """
    root = Path(training_dir)
    if not root.is_dir():
        raise ValueError(f"`checkpoints_dir` {training_dir} is not a folder.")
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if not (child.is_dir() and match):
            continue
        if not any((child / name).is_file() for name in _MODEL_FILES):
            logger.warning("Skipping %s: it holds no config.json or adapter_config.json.", child)
            continue
        found.append(Checkpoint(child.name, str(child), int(match.group(1))))
    found.sort(key=lambda c: c.step)
    if include_final and any((root / name).is_file() for name in _MODEL_FILES):
        found.append(Checkpoint("final", str(root), None))
    if not found:
        raise ValueError(f"No `checkpoint-<step>` folder or saved model in {training_dir}.")
    return found


def check_selection_set(config: EvalConfig) -> tuple[Benchmark, bool]:
    """
    Checks that checkpoint selection uses a held-out validation set.

    Selecting on a reported benchmark (the paper selected on MATH-500, which it also reports) leaks the test set into
    the choice of checkpoint, so it is refused unless `force_selection_on_test` is set.

    Args:
        config ([`EvalConfig`]): The configuration.

    Returns:
        `tuple[Benchmark, bool]`: The validation benchmark, and whether it is a test set allowed by force.

    Raises:
        `ValueError`: when no validation set is named, or it is a reported or registry test benchmark.
    """
    spec = config.selection_benchmark
    if not spec:
        raise ValueError(
            "Checkpoint selection needs a held-out validation set: set `selection_benchmark` to a local file (e.g. "
            "500 MATH train problems) or a hub split (`owner/name[:config]@split`) that no reported benchmark "
            "contains."
        )
    fields = (config.question_field, config.answer_field, config.id_field, config.split)
    validation = resolve_benchmark(spec, *fields)
    reported = {resolve_benchmark(b, *fields).identity(): b for b in config.benchmarks}
    problem = None
    if validation.identity() in reported:
        problem = (
            f"`selection_benchmark` {spec!r} is also a reported benchmark ({reported[validation.identity()]!r} in "
            "`benchmarks`): selecting a checkpoint on the test set inflates the scores you report."
        )
    elif validation.test:
        problem = (
            f"`selection_benchmark` {spec!r} is the registry test benchmark {validation.name!r}: selecting a "
            "checkpoint on a test set leaks it into the choice."
        )
    if problem is None:
        return validation, False
    if not config.force_selection_on_test:
        raise ValueError(
            f"{problem} Use a held-out file or split instead, or set `force_selection_on_test: true` to do it anyway."
        )
    logger.warning("%s Going on because `force_selection_on_test` is set.", problem)
    return validation, True


def select_checkpoint(config: EvalConfig, generate: GenerateRows) -> dict[str, Any]:
    """
    Scores every checkpoint of `config.checkpoints_dir` on the validation set and picks the best.

    Ties go to the earlier step (the final model counts as the latest). Writes `selection.json`, `selection.md`,
    `selection.png` and `selection_samples.jsonl` to `output_dir`.

    Args:
        config ([`EvalConfig`]): The configuration, with `checkpoints_dir` and `selection_benchmark`.
        generate (`Callable`): Loads one model (a [`ModelSpec`]), generates and grades its outputs on the given
            problems, appends each graded sample to the given file, frees the model, and returns the rows per
            benchmark (what [`~cgd_trainer.evaluation.run_eval`] passes).

    Returns:
        `dict`: What is written to `selection.json`; `selected` holds the chosen checkpoint.
    """
    validation, forced = check_selection_set(config)
    if config.backend == "openai":
        raise ValueError(
            "Checkpoint selection loads every checkpoint itself: use `backend: transformers` or `backend: vllm`."
        )
    candidates = find_checkpoints(config.checkpoints_dir, config.include_final)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    problems = load_problems(validation, config.max_problems)
    if all(p.gold_parsed is None for p in problems):
        raise ValueError(f"No reference answer of the validation set {validation.path} can be parsed.")
    scored = []
    every_row: list[dict[str, Any]] = []
    # A rerun reuses the checkpoints' finished samples (keyed by each checkpoint's weights) and sends only the others.
    with SampleStore(output_dir / "selection_samples.jsonl") as samples:
        for candidate in candidates:
            spec = ModelSpec(candidate.label, candidate.path, config.backend)
            rows = generate(spec, {validation.name: problems}, samples)
            metrics = score_samples(rows[validation.name], config.ks)
            scored.append({**asdict(candidate), **metrics})
            logger.info("%s: validation accuracy %s%%", candidate.label, percent(metrics["accuracy"]))
            every_row += rows[validation.name]
        samples.rewrite(every_row)
    # Highest accuracy; among equals the earliest in training order (the list is in that order).
    best = max(enumerate(scored), key=lambda item: (item[1]["accuracy"] or 0.0, -item[0]))[1]
    selection = {
        "checkpoints_dir": str(config.checkpoints_dir),
        "validation": benchmark_info(validation, problems),
        "forced_on_test": forced,
        "selected": {k: best[k] for k in ("label", "path", "step", "accuracy")},
        "checkpoints": scored,
        "decoding": {"temperature": config.temperature, "num_samples": config.num_samples},
        "failed_samples": sum(row["error"] is not None for row in every_row),
    }
    plot_name = None
    if config.plot:
        plot_checkpoint_accuracy(scored, output_dir / "selection.png", best=best["label"])
        plot_name = "selection.png"
    (output_dir / "selection.json").write_text(json.dumps(selection, indent=2) + "\n", "utf-8")
    (output_dir / "selection.md").write_text(render_selection_report(selection, plot_name), "utf-8")
    return selection
