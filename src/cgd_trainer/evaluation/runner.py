"""Running `cgd eval`: prompts, generation and grading, one model at a time, then the summary, report and plots.

This is the one module of `cgd_trainer.evaluation` that builds backends ([`open_backend`]); checkpoint selection is
handed [`run_model`] rather than building its own.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..backends import Backend, Request, local_model, make_backend, request_key
from ..templates import fill
from .benchmarks import Benchmark, Problem, benchmark_info, load_problems, resolve_benchmark
from .config import EvalConfig, ModelSpec, backend_options, parse_models
from .metrics import drift_metrics, score_samples
from .protocols import grade_sample
from .report import percent, plot_benchmark_accuracy, render_report
from .samples import SampleStore
from .selection import select_checkpoint

logger = logging.getLogger(__name__)


# --- prompts and generation ------------------------------------------------------------------------------------------


def build_prompt(question: str, config: EvalConfig, chat: bool) -> list[dict[str, str]] | str:
    """
    The prompt of one problem: chat messages (system instruction + question) or a completion prompt.

    Args:
        question (`str`): The problem.
        config ([`EvalConfig`]): Prompt settings.
        chat (`bool`): Whether the backend sends chat messages (`backend.uses_chat`).

    Returns:
        `list[dict]` or `str`
    """
    instruction = config.instruction
    if not chat:
        return fill(config.completion_template, instruction=instruction, question=question).lstrip()
    if not instruction:
        return [{"role": "user", "content": question}]
    if config.instruction_in_user:
        return [{"role": "user", "content": f"{question}\n\n{instruction}"}]
    return [{"role": "system", "content": instruction}, {"role": "user", "content": question}]


def generate_and_grade(
    backend: Backend,
    label: str,
    problems: Mapping[str, Sequence[Problem]],
    config: EvalConfig,
    samples: SampleStore | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """
    Generates the outputs of one model on several benchmarks and grades them.

    Problems with an unparsable reference are skipped (they are counted by the caller). Problems whose samples are
    all in `samples` already (an earlier, interrupted run) are not sent again; their outputs are graded anew. All other
    benchmarks' problems go out in one call so that batched and concurrent backends stay busy.

    Args:
        backend ([`Backend`]): The model's backend.
        label (`str`): The model's label.
        problems (`Mapping[str, Sequence[Problem]]`): Problems per benchmark.
        config ([`EvalConfig`]): Prompt and decoding settings.
        samples ([`SampleStore`], *optional*): Where each graded sample is appended as it arrives, and finished ones
            are found.

    Returns:
        `dict[str, list[dict]]`: Per benchmark, one row per sample in problem order (see [`score_samples`] for the
        fields).
    """
    from tqdm.auto import tqdm

    chat = backend.uses_chat
    # The preset's stops depend on the prompt form; unset ones become the backend's defaults (the model's end-of-turn
    # and eos ids), so that the keys of stored samples change with them.
    sampling = backend.resolve(config.sampling_for(chat))
    lookup: dict[str, tuple[str, Problem, Any, str]] = {}
    order: dict[tuple[str, str], int] = {}
    requests = []
    rows: dict[str, list[dict[str, Any]]] = {benchmark: [] for benchmark in problems}
    for benchmark, items in problems.items():
        for problem in items:
            if problem.gold_parsed is None:
                continue
            order[benchmark, problem.id] = len(order)
            prompt = build_prompt(problem.question, config, chat)
            request_id = f"{benchmark}/{problem.id}"
            if isinstance(prompt, str):
                request = Request(request_id, prompt=prompt, sampling=sampling)
            else:
                request = Request(request_id, messages=prompt, sampling=sampling)
            key = request_key(backend, request)
            stored = samples.finished(key, sampling.n) if samples is not None else None
            if stored is not None:
                for index, row in enumerate(stored):
                    rows[benchmark].append(
                        _sample_row(
                            label, benchmark, problem, index, prompt, row["output"], None, key, config.protocol
                        )
                    )
                continue
            lookup[request_id] = (benchmark, problem, prompt, key)
            requests.append(request)
    if len(requests) < len(order):
        logger.info(
            "%s: %d of %d problems already done in %s; sending the other %d.",
            label,
            len(order) - len(requests),
            len(order),
            samples.path,
            len(requests),
        )
    progress = tqdm(total=len(requests), desc=f"eval {label}", unit="problem", file=sys.stderr)
    for reply in backend.generate(requests) if requests else ():
        benchmark, problem, prompt, key = lookup[reply.request.id]
        texts: list[str | None] = list(reply.texts) if reply.ok else []
        error = reply.error
        if reply.ok and len(texts) != sampling.n:
            error = f"the backend returned {len(texts)} outputs instead of {sampling.n}"
        texts += [None] * (sampling.n - len(texts))
        for index, text in enumerate(texts[: sampling.n]):
            error_text = error if text is None else None
            row = _sample_row(label, benchmark, problem, index, prompt, text, error_text, key, config.protocol)
            rows[benchmark].append(row)
            if samples is not None:
                samples.append(row)
        progress.update(1)
    progress.close()
    for benchmark, items in rows.items():  # the same order however the replies arrived, or were resumed
        items.sort(key=lambda row: (order[benchmark, row["id"]], row["sample"]))
    return rows


def _sample_row(
    label: str,
    benchmark: str,
    problem: Problem,
    index: int,
    prompt: Any,
    text: str | None,
    error: str | None,
    key: str,
    protocol: str = "strict",
) -> dict[str, Any]:
    """One graded sample: what was asked, what came back, its grade, and the key it is stored under."""
    return {
        "model": label,
        "benchmark": benchmark,
        "id": problem.id,
        "sample": index,
        "prompt": prompt,
        "output": text,
        "gold": problem.gold,
        # `extracted`, `extracted_by` and `correct` under the chosen preset, and `correct_<preset>` under each.
        **grade_sample(text, problem.gold_parsed, protocol, benchmark),
        "error": error,
        "key": key,
    }


# --- one model -------------------------------------------------------------------------------------------------------


def open_backend(spec: ModelSpec, config: EvalConfig) -> Backend:
    """
    Builds the backend of one model: the config's settings with the model's own. A `builtin:` model of a local
    backend becomes its folder: a tiny model built (once) under `<output_dir>/builtin/`, a packaged pretrained one
    converted (once) into the shared cache.

    Args:
        spec ([`ModelSpec`]): The model.
        config ([`EvalConfig`]): The configuration.

    Returns:
        [`Backend`]
    """
    model = local_model(spec.backend, spec.model, Path(config.output_dir) / "builtin")
    return make_backend(spec.backend, model, **backend_options(config, spec.backend, spec.options))


def run_model(
    spec: ModelSpec,
    problems: Mapping[str, Sequence[Problem]],
    config: EvalConfig,
    samples: SampleStore | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """
    Loads one model, generates and grades its outputs on the benchmarks, and frees it.

    Args:
        spec ([`ModelSpec`]): The model.
        problems (`Mapping[str, Sequence[Problem]]`): Problems per benchmark.
        config ([`EvalConfig`]): The configuration.
        samples ([`SampleStore`], *optional*): Where each graded sample is appended, and finished ones are found.

    Returns:
        `tuple[dict, dict]`: The rows per benchmark (see [`generate_and_grade`]) and the model's provenance for the
        summary (`label`, `model`, `backend`, `seconds`).
    """
    backend = open_backend(spec, config)
    try:
        started = time.time()
        rows = generate_and_grade(backend, spec.label, problems, config, samples)
        info = {
            "label": spec.label,
            "model": spec.model,
            "backend": backend.describe(),
            "seconds": round(time.time() - started, 1),
        }
    finally:
        backend.close()  # frees the model (and its GPU memory) before the next one loads
    return rows, info


# --- evaluation ------------------------------------------------------------------------------------------------------


def _load_benchmarks(specs: Sequence[str], config: EvalConfig) -> dict[str, tuple[Benchmark, list[Problem]]]:
    loaded: dict[str, tuple[Benchmark, list[Problem]]] = {}
    for spec in specs:
        benchmark = resolve_benchmark(spec, config.question_field, config.answer_field, config.id_field, config.split)
        if benchmark.name in loaded:
            raise ValueError(f"Two benchmarks are both named {benchmark.name!r}; rename one of the files.")
        problems = load_problems(benchmark, config.max_problems)
        ungradable = [p.id for p in problems if p.gold_parsed is None]
        if ungradable:
            logger.warning(
                "%s: %d of %d reference answers cannot be parsed; those problems are excluded (ids: %s%s).",
                benchmark.name,
                len(ungradable),
                len(problems),
                ", ".join(ungradable[:10]),
                " ..." if len(ungradable) > 10 else "",
            )
        loaded[benchmark.name] = (benchmark, problems)
    return loaded


def evaluate(config: EvalConfig, extra_models: Sequence[ModelSpec] = ()) -> dict[str, Any]:
    """
    Evaluates every model of the config on every benchmark and writes samples, summary, report and plot.

    Args:
        config ([`EvalConfig`]): The configuration.
        extra_models (`Sequence[ModelSpec]`): Models added after those of `config.models` (the selected checkpoint).

    Returns:
        `dict`: The summary written to `summary.json`.
    """
    specs = parse_models(config.models, config.backend) + list(extra_models)
    if not specs:
        raise ValueError("Nothing to evaluate: set `models` (or `checkpoints_dir` for checkpoint selection).")
    if not config.benchmarks:
        raise ValueError("Set `benchmarks`: registry names, local files or hub dataset ids.")
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    loaded = _load_benchmarks(config.benchmarks, config)
    problems = {name: items for name, (_, items) in loaded.items()}

    results: dict[str, dict[str, Any]] = {}
    drift: dict[str, Any] = {}
    drift_per_benchmark: dict[str, dict[str, Any]] = {}
    models_info = []
    every_row: list[dict[str, Any]] = []
    started = time.time()
    # A rerun (after a crash, or with more models) reuses the samples that finished and sends only the others.
    with SampleStore(output_dir / "samples.jsonl") as samples:
        for spec in specs:
            rows, info = run_model(spec, problems, config, samples)
            models_info.append(info)
            results[spec.label] = {name: score_samples(items, config.ks) for name, items in rows.items()}
            drift[spec.label] = drift_metrics(row["output"] for items in rows.values() for row in items)
            drift_per_benchmark[spec.label] = {
                name: drift_metrics(row["output"] for row in items) for name, items in rows.items()
            }
            for name, metrics in results[spec.label].items():
                logger.info("%s on %s: accuracy %s%%", spec.label, name, percent(metrics["accuracy"]))
            every_row += [row for items in rows.values() for row in items]
        samples.rewrite(every_row)  # exactly this run's samples

    average = {}
    for label, per_benchmark in results.items():
        values = [m["accuracy"] for m in per_benchmark.values() if m["accuracy"] is not None]
        average[label] = statistics.fmean(values) if values else None
    summary: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - started, 1),
        "config": config.public_dict(),
        "decoding": {
            "temperature": config.temperature,
            "top_p": config.top_p,
            "seed": config.seed,
            "num_samples": config.num_samples,
            "max_new_tokens": config.max_new_tokens,
            "pass_k": config.ks,
        },
        "models": models_info,
        "benchmarks": [benchmark_info(benchmark, items) for benchmark, items in loaded.values()],
        "results": results,
        "average": average,
        "drift": drift,
        "drift_per_benchmark": drift_per_benchmark,
        "failed_samples": sum(row["error"] is not None for row in every_row),
        "files": {"samples": "samples.jsonl", "report": "report.md"},
    }
    plot_name = None
    if config.plot:
        accuracy = {label: {b: m["accuracy"] for b, m in per.items()} for label, per in results.items()}
        plot_benchmark_accuracy(accuracy, output_dir / "accuracy.png")
        plot_name = "accuracy.png"
        summary["files"]["plot"] = plot_name
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", "utf-8")
    (output_dir / "report.md").write_text(render_report(summary, plot_name), "utf-8")
    logger.info("Wrote %s", output_dir / "report.md")
    return summary


def run_eval(config: EvalConfig) -> dict[str, Any]:
    """
    Runs `cgd eval`: checkpoint selection first when `checkpoints_dir` is set, then the evaluation of `models` (and
    of the selected checkpoint) on `benchmarks`.

    Args:
        config ([`EvalConfig`]): The configuration.

    Returns:
        `dict`: `{"summary": ..., "selection": ...}`, each `None` when that part did not run.
    """

    def generate(
        spec: ModelSpec, problems: Mapping[str, Sequence[Problem]], samples: SampleStore
    ) -> dict[str, list[dict[str, Any]]]:
        return run_model(spec, problems, config, samples)[0]

    selection = summary = None
    extra: list[ModelSpec] = []
    if config.checkpoints_dir:
        selection = select_checkpoint(config, generate)
        chosen = selection["selected"]
        extra.append(ModelSpec(f"selected:{chosen['label']}", chosen["path"], config.backend))
        if not config.evaluate_selected:
            return {"summary": None, "selection": selection}
    summary = evaluate(config, extra_models=extra)
    return {"summary": summary, "selection": selection}
