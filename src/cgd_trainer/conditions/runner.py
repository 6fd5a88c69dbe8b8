"""`build(config)`: reads the records, filters them, and writes every condition, the ratio subsets and the exports,
then `summary.json` and the dataset card."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..record_format import record_format
from ..sources import write_jsonl
from .builders import make_condition, make_ratio_subsets
from .config import CONDITIONS, BuildConfig
from .filters import decontaminate_records, filter_correct_records
from .readers import load_records
from .writers import BuildWriter, condition_summary, push_dataset_to_hub, render_card, verdict_counts

logger = logging.getLogger(__name__)


def _stale_files(output_dir: Path, written: set[str]) -> list[str]:
    names = {f"{name}.jsonl" for name in CONDITIONS} | {path.name for path in output_dir.glob("ratio_*.jsonl")}
    return sorted(name for name in names if (output_dir / name).exists() and name not in written)


def build(config: BuildConfig) -> dict[str, Any]:
    """
    Builds the training sets: reads and validates the records, decontaminates and filters them, writes every
    condition, the ratio subsets and the exports, then `summary.json` and `README.md`, and pushes to the hub if asked.

    Args:
        config ([`BuildConfig`]): The build settings.

    Returns:
        `dict`: The summary (also written to `summary.json`).
    """
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    records, info = load_records(config)
    summary: dict[str, Any] = {
        "input": {
            "path": info["path"],
            "format": config.input_format,
            "records": len(records),
            "verdicts": verdict_counts(record["verdict"] for record in records),
            "verdict_source": info["verdict_source"],
            "with_reference": sum(record["reference_answer"] is not None for record in records),
            "ignored_columns": info["ignored_columns"],
        },
        "filters": {},
    }
    if config.decontaminate:
        records, report = decontaminate_records(
            records, config.decontaminate, config.ngram, config.decontaminate_field
        )
        summary["filters"]["decontamination"] = report
    if config.filter_correct:
        if not info["has_refined"]:
            raise ValueError("`filter_correct` grades refined answers, and this input has none.")
        records, report = filter_correct_records(records)
        summary["filters"]["filter_correct"] = report
    summary["records_after_filters"] = len(records)
    if not records:
        raise ValueError(f"No record of {info['path']} is left after filtering: {summary['filters']}.")

    # Each condition is written while it is built, so that only the records are held in memory, not every set's rows.
    writer = BuildWriter(output_dir, config.export, record_format(config))
    sets = [make_condition(name, records, config, info, writer.open) for name in config.conditions]
    ratio_sets, summary["ratios"] = make_ratio_subsets(records, config, info, writer.open)
    sets += ratio_sets
    for out in sets:
        if out.skipped:
            logger.warning(f"{out.name}: not built, {out.skipped}.")
    written = [out for out in sets if not out.skipped]
    if not info["has_refined"]:
        # CFT imports: the records, ready for the refine stage of the generation pipeline.
        columns = ("id", "prompt", "initial_response", "critique", "verdict")
        write_jsonl(output_dir / "imported.jsonl", ({key: r[key] for key in columns} for r in records))
        summary["imported"] = {"file": "imported.jsonl", "records": len(records)}
    summary["conditions"] = {out.name: condition_summary(out) for out in sets}
    summary["exports"] = writer.exports_report() if config.export else {}
    summary["output_dir"] = str(output_dir)
    summary["config"] = asdict(config)

    stale = _stale_files(output_dir, {f"{out.name}.jsonl" for out in written})
    if stale:
        logger.warning(f"{output_dir} holds files from an earlier build that this one did not write: {stale}.")
    with open(output_dir / "summary.json", "w", encoding="utf-8") as handle:
        json.dump(summary, handle, ensure_ascii=False, indent=2)
        handle.write("\n")
    (output_dir / "README.md").write_text(render_card(summary), encoding="utf-8")
    if config.push_to_hub:
        push_dataset_to_hub(output_dir, summary, config.hub_dataset_id)
    return summary
