"""What the `cgd generate` test files share: a pipeline run with the demo backends by default, a fast-retrying OpenAI
client for loopback servers, and a plain JSONL reader."""

from __future__ import annotations

import json
from pathlib import Path

from cgd_trainer.backends.openai import OpenAIBackend
from cgd_trainer.pipeline import GenerateConfig, Pipeline


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def pipeline_settings(tmp_path: Path, **overrides) -> dict:
    """The demo questions, the demo student and teacher, and short budgets, with `overrides` on top."""
    values = dict(
        dataset_name="builtin:demo",
        id_field="id",
        reference_field="reference_answer",
        output_dir=str(tmp_path / "out"),
        student_backend="demo",
        teacher_backend="demo",
        max_new_tokens=32,
    )
    values.update(overrides)
    return values


def run_pipeline(tmp_path: Path, student=None, teacher=None, **overrides) -> dict:
    """Runs `cgd generate` in process (with backends given as objects where set) and returns its summary."""
    pipeline = Pipeline(GenerateConfig(**pipeline_settings(tmp_path, **overrides)), student=student, teacher=teacher)
    try:
        return pipeline.run()
    finally:
        pipeline.close()


def fast_openai(base_url: str, model: str = "teacher", **options) -> OpenAIBackend:
    """An OpenAI backend with short timeouts and backoffs, for servers on loopback."""
    defaults = dict(base_url=base_url, concurrency=4, max_retries=3, timeout=5.0, backoff_base=0.01, backoff_max=0.05)
    defaults.update(options)
    return OpenAIBackend(model, **defaults)
