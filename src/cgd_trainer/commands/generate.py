"""`cgd generate --config pipeline.yaml [flags]`: probe (student) → critique → refine (teacher), resumable."""

from __future__ import annotations

import logging
from typing import Any

from . import EXIT_INCOMPLETE, EXIT_OK
from .parser import ConfigParser

logger = logging.getLogger(__name__)


def make_parser(prog: str | None = "cgd generate") -> ConfigParser:
    """The `cgd generate` parser: [`GenerateConfig`] flags and `--config pipeline.yaml`."""
    from ..pipeline import GenerateConfig

    return ConfigParser((GenerateConfig,), prog=prog)


def run(argv: list[str]) -> dict[str, Any]:
    """Runs the pipeline and returns its summary (also written to `summary.json`)."""
    (config,) = make_parser().parse_args_and_config(argv)
    from ..pipeline import Pipeline

    pipeline = Pipeline(config)
    try:
        return pipeline.run()
    finally:
        pipeline.close()


def main(argv: list[str]) -> int:
    """0 when every record is complete; 3 when requests failed or records are incomplete (a rerun continues)."""
    summary = run(argv)
    failed = sum(summary["failed"].values())
    incomplete = sum(summary["incomplete_records"].values())
    if failed or incomplete:
        logger.warning(
            f"Work left undone: {failed} failed requests, {incomplete} incomplete records. Run the same command "
            f"again to retry them (exit status {EXIT_INCOMPLETE})."
        )
        return EXIT_INCOMPLETE
    return EXIT_OK
