r"""`cgd eval`: the paper's maths evaluation protocol, format-drift metrics and checkpoint selection; `cgd diagnose`.

Protocol (arXiv 2505.11628, see `docs/evaluation.md`): zero-shot, a system instruction asking for step-by-step
reasoning and a final answer in `\boxed{}`, greedy decoding and pass@1 (or sampled pass@k with the unbiased estimator),
answers graded against the reference with `math-verify` (`cgd_trainer.grading`) under a preset (`protocols`): `strict`
reads the last box only, `harness` falls back as the published math-evaluation-harness does. Every finished sample is
kept in `samples.jsonl` under its request key (`samples`), so that a rerun sends only what is missing.

```bash
cgd eval --models Qwen/Qwen2.5-Math-7B cgd=runs/qwen-cgd --benchmarks math500 amc23 --backend vllm
cgd eval --config examples/eval/llama-3.1-8b-instruct.yaml
cgd eval --checkpoints_dir runs/qwen-cgd --selection_benchmark data/heldout.jsonl --benchmarks math500
```

Everything lands in `output_dir`: `samples.jsonl` (one line per output), `summary.json`, `report.md` and
`accuracy.png`; with `checkpoints_dir`, also `selection.json`, `selection.md`, `selection.png` and
`selection_samples.jsonl`.

- `benchmarks`: the registry of benchmarks, how a name resolves, loading problems and writing them to JSONL;
- `protocols`: the grading presets (`strict`, `harness`);
- `samples`: the resumable samples file;
- `config`: [`EvalConfig`] (the backends' shared settings come from `BackendSettings`) and the `models` list;
- `metrics`: pass@k, per-benchmark scores and format-drift metrics;
- `report`: the markdown reports and the plots;
- `selection`: checkpoint selection on a held-out validation set;
- `runner`: prompts, generation and grading, [`evaluate`] and [`run_eval`];
- `diagnose`: `cgd diagnose`, the NLL and entropy of refined answers with and without the critique.

The commands themselves are `cgd_trainer.commands.eval` and `cgd_trainer.commands.diagnose`. Importing this package
costs nothing: its names load on first use, and torch, TRL and `datasets` when a model or a dataset does.
"""

import importlib

# public name -> submodule; imported on first use, so that `cgd eval --help` loads neither math-verify nor
# the runner.
_LAZY = {
    "ALIASES": "benchmarks",
    "Benchmark": "benchmarks",
    "Problem": "benchmarks",
    "REGISTRY": "benchmarks",
    "benchmark_info": "benchmarks",
    "load_problems": "benchmarks",
    "normalize_gold": "benchmarks",
    "resolve_benchmark": "benchmarks",
    "write_problems": "benchmarks",
    "DEFAULT_COMPLETION_TEMPLATE": "config",
    "DEFAULT_SYSTEM_PROMPT": "config",
    "EvalConfig": "config",
    "ModelSpec": "config",
    "backend_options": "config",
    "check_models": "config",
    "parse_models": "config",
    "CRITIQUE_DETECTORS": "metrics",
    "critique_signals": "metrics",
    "drift_metrics": "metrics",
    "pass_at_k": "metrics",
    "score_samples": "metrics",
    "markdown_table": "report",
    "percent": "report",
    "render_report": "report",
    "render_selection_report": "report",
    "build_prompt": "runner",
    "evaluate": "runner",
    "generate_and_grade": "runner",
    "run_eval": "runner",
    "run_model": "runner",
    "Checkpoint": "selection",
    "check_selection_set": "selection",
    "find_checkpoints": "selection",
    "select_checkpoint": "selection",
}

__all__ = [
    "ALIASES",
    "CRITIQUE_DETECTORS",
    "DEFAULT_COMPLETION_TEMPLATE",
    "DEFAULT_SYSTEM_PROMPT",
    "REGISTRY",
    "Benchmark",
    "Checkpoint",
    "EvalConfig",
    "ModelSpec",
    "Problem",
    "backend_options",
    "benchmark_info",
    "build_prompt",
    "check_models",
    "check_selection_set",
    "critique_signals",
    "drift_metrics",
    "evaluate",
    "find_checkpoints",
    "generate_and_grade",
    "load_problems",
    "markdown_table",
    "normalize_gold",
    "parse_models",
    "pass_at_k",
    "percent",
    "render_report",
    "render_selection_report",
    "resolve_benchmark",
    "write_problems",
    "run_eval",
    "run_model",
    "score_samples",
    "select_checkpoint",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
