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
    """
    0 when every record is complete up to the stages this command runs; 3 when requests failed or records are left
    incomplete at one of its stages (a rerun continues). Records that wait only for a stage the command does not run
    (`--stages probe`) are reported, but do not make the status 3: rerunning the same command would not finish them.
    A merge exits 3 when its shards left records incomplete or (with `allow_partial_merge`) a shard was missing; the
    advice then names what to rerun, since running the merge again changes nothing.
    """
    summary = run(argv)
    failed = sum(summary["failed"].values())
    ran = set(summary["stages"])
    incomplete = sum(count for stage, count in summary["incomplete_records"].items() if stage in ran)
    if "merged_shards" in summary and incomplete:
        missing = summary["missing_shards"]
        advice = [f"{incomplete} records are incomplete."]
        if missing:
            advice.append(
                f"Missing shards (merged anyway, `allow_partial_merge`): {', '.join(missing)}; run `cgd generate` "
                "with `--shard` set to each of them, then merge all the folders."
            )
        advice.append(
            "Rerunning this merge alone changes nothing: rerun the incomplete shards' own commands (they continue "
            f"where they stopped), then merge again (exit status {EXIT_INCOMPLETE})."
        )
        logger.warning(" ".join(advice))
        return EXIT_INCOMPLETE
    if failed or incomplete:
        logger.warning(
            f"Work left undone: {failed} failed requests, {incomplete} incomplete records. Run the same command "
            f"again to retry them (exit status {EXIT_INCOMPLETE})."
        )
        return EXIT_INCOMPLETE
    later = sum(summary["incomplete_records"].values())
    if later:
        logger.info(f"{later} records wait for stages this command does not run: {summary['incomplete_records']}.")
    return EXIT_OK
