"""`cgd eval --config eval.yaml [flags]`: models or checkpoints on maths benchmarks, with reports and plots."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from . import EXIT_INCOMPLETE, EXIT_OK
from .parser import ConfigParser


def make_parser(prog: str | None = "cgd eval") -> ConfigParser:
    """The `cgd eval` parser: [`EvalConfig`] flags and `--config eval.yaml`."""
    from ..evaluation import EvalConfig

    return ConfigParser((EvalConfig,), prog=prog)


def run(argv: list[str]) -> dict[str, Any]:
    """Runs `cgd eval` and returns `{"summary": ..., "selection": ...}`."""
    (config,) = make_parser().parse_args_and_config(argv)
    from ..evaluation import percent, run_eval

    result = run_eval(config)
    output_dir = Path(config.output_dir)
    if result["selection"] is not None:
        chosen = result["selection"]["selected"]
        print(f"Selected {chosen['label']} ({chosen['path']}): {percent(chosen['accuracy'])}% on the validation set.")
        print(f"Selection report: {output_dir / 'selection.md'}")
    if result["summary"] is not None:
        print(f"Report: {output_dir / 'report.md'}")
    return result


def main(argv: list[str]) -> int:
    """Exit status 0 when every sample was generated, 3 when some failed (a rerun sends only those again)."""
    result = run(argv)
    failed = sum((part or {}).get("failed_samples", 0) for part in (result["summary"], result["selection"]))
    if failed:
        print(
            f"cgd eval: {failed} samples failed (their `error` is in the samples file) and count as wrong in the "
            "report; rerun the same command to send only those again.",
            file=sys.stderr,
        )
        return EXIT_INCOMPLETE
    return EXIT_OK
