"""The outputs of `cgd build` besides the condition files: the Alpaca and `messages` exports, the statistics of
`summary.json`, the dataset card, the table printed at the end, and the upload to the hub."""

from __future__ import annotations

import json
import logging
import math
import statistics
import textwrap
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..record_format import RecordFormat, RecordParts
from ..sources import dumps_row, read_rows
from .builders import CONDITION_BUILDERS, ConditionSet
from .readers import split_sections

logger = logging.getLogger(__name__)

# LLaMA-Factory's `dataset_info.json` column mapping of an Alpaca file.
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}


def alpaca_row(family: str, row: Mapping[str, Any], fmt: RecordFormat) -> dict:
    """
    One row in LLaMA-Factory's Alpaca format: a CGD-family row gets the CGD instruction and the labelled sections as
    `input`; a prompt-completion row gets the user turn as `instruction` and an empty `input`.
    """
    if family == "cgd":
        parts = RecordParts.of(row["prompt"], row["initial_response"], row["critique"])
        return {"instruction": fmt.instruction, "input": fmt.sections(parts), "output": row["refined_response"]}
    return {"instruction": row["prompt"][0]["content"], "input": "", "output": row["completion"][0]["content"]}


def messages_row(prompt: list[dict], target: str) -> dict:
    """One row as `{"messages": [*context, answer]}`, CGD-family contexts as `CGDTrainer` renders them."""
    return {"messages": [*prompt, {"role": "assistant", "content": target}]}


def alpaca_rows(out: ConditionSet, fmt: RecordFormat | None = None) -> list[dict]:
    """The kept rows of a condition built without a sink, in LLaMA-Factory's Alpaca format (see [`alpaca_row`])."""
    return [alpaca_row(out.family, row, fmt or RecordFormat()) for row in out.rows]


def messages_rows(out: ConditionSet) -> list[dict]:
    """The kept rows of a condition built without a sink, as `messages` rows (see [`messages_row`])."""
    return [messages_row(prompt, target) for prompt, target in zip(out.prompts, out.targets)]


class SetWriter:
    """
    Writes one condition's rows as they are built: `<name>.jsonl` (unless `main_file` is off) and, for the export
    formats asked for, `alpaca/<name>.json` (one JSON array, written element by element) and `messages/<name>.jsonl`.
    Shows the rows written as a progress bar.
    """

    def __init__(
        self,
        output_dir: Path,
        out: ConditionSet,
        formats: Sequence[str],
        fmt: RecordFormat,
        total: int | None = None,
        main_file: bool = True,
    ):
        from tqdm.auto import tqdm

        self.out, self.fmt, self.ambiguous = out, fmt, 0
        self.main = open(output_dir / f"{out.name}.jsonl", "w", encoding="utf-8") if main_file else None
        self.alpaca = self.messages = None
        if "alpaca" in formats:
            self.alpaca = open(output_dir / "alpaca" / f"{out.name}.json", "w", encoding="utf-8")
            self.alpaca.write("[")
        if "messages" in formats:
            self.messages = open(output_dir / "messages" / f"{out.name}.jsonl", "w", encoding="utf-8")
        self.progress = tqdm(total=total, desc=f"cgd build: {out.name}", unit=" rows", leave=False)

    def write(self, row: dict, prompt: list[dict], target: str) -> None:
        if self.main is not None:
            self.main.write(dumps_row(row))
        if self.alpaca is not None:
            item = alpaca_row(self.out.family, row, self.fmt)
            # The layout `json.dump(rows, indent=2)` gives, one element at a time.
            self.alpaca.write(("\n" if self.progress.n == 0 else ",\n") + textwrap.indent(_pretty(item), "  "))
            # A question or draft that itself contains a section header cannot be split back unambiguously.
            if self.out.family == "cgd" and split_sections(item["input"]) != (
                row["prompt"],
                row["initial_response"],
                row["critique"],
            ):
                self.ambiguous += 1
        if self.messages is not None:
            self.messages.write(dumps_row(messages_row(prompt, target)))
        self.progress.update()

    def close(self) -> None:
        if self.alpaca is not None:
            self.alpaca.write("\n]\n" if self.progress.n else "]\n")
        for handle in (self.main, self.alpaca, self.messages):
            if handle is not None:
                handle.close()
        self.progress.close()


def _pretty(item: Mapping[str, Any]) -> str:
    return json.dumps(item, ensure_ascii=False, indent=2)


class BuildWriter:
    """
    The files of a build, written condition by condition as each is built (see [`SetWriter`]), and the export
    report with `alpaca/dataset_info.json` once every condition is written.

    Args:
        output_dir (`Path`): The build's folder.
        formats (`Sequence[str]`): Export formats, among `alpaca` and `messages`.
        fmt ([`~record_format.RecordFormat`]): The wording of the Alpaca rows' instruction.
        main_file (`bool`, *optional*, defaults to `True`): Write `<name>.jsonl` too (off for exports alone).
    """

    def __init__(self, output_dir: Path, formats: Sequence[str], fmt: RecordFormat, main_file: bool = True):
        self.output_dir, self.formats, self.fmt, self.main_file = output_dir, list(formats), fmt, main_file
        self.written: list[SetWriter] = []
        for name in self.formats:
            (output_dir / name).mkdir(parents=True, exist_ok=True)

    def open(self, out: ConditionSet, total: int | None = None) -> SetWriter:
        writer = SetWriter(self.output_dir, out, self.formats, self.fmt, total, self.main_file)
        self.written.append(writer)
        return writer

    def exports_report(self) -> dict:
        """Writes `alpaca/dataset_info.json`; returns the files written per format and the ambiguous Alpaca rows."""
        report: dict[str, Any] = {}
        names = [writer.out.name for writer in self.written]
        if "alpaca" in self.formats:
            dataset_info = {name: {"file_name": f"{name}.json", "columns": dict(ALPACA_COLUMNS)} for name in names}
            with open(self.output_dir / "alpaca" / "dataset_info.json", "w", encoding="utf-8") as handle:
                json.dump(dataset_info, handle, ensure_ascii=False, indent=2)
                handle.write("\n")
            ambiguous = {w.out.name: w.ambiguous for w in self.written if w.ambiguous}
            for name, bad in ambiguous.items():
                logger.warning(f"alpaca/{name}.json: {bad} rows contain a section header in their text.")
            report["alpaca"] = {
                "files": [f"alpaca/{name}.json" for name in names] + ["alpaca/dataset_info.json"],
                "not_round_trippable": ambiguous,
            }
        if "messages" in self.formats:
            report["messages"] = {"files": [f"messages/{name}.jsonl" for name in names]}
        return report


def export_sets(
    output_dir: Path, sets: Sequence[ConditionSet], formats: Sequence[str], fmt: RecordFormat | None = None
) -> dict:
    """
    Writes `alpaca/<name>.json` with `alpaca/dataset_info.json`, and/or `messages/<name>.jsonl`, for each set built
    without a sink (`cgd build` writes its exports while it builds, with [`BuildWriter`]).

    Returns:
        `dict`: the files written per format, and for Alpaca the rows whose sections would not parse back.
    """
    writer = BuildWriter(output_dir, formats, fmt or RecordFormat(), main_file=False)
    for out in sets:
        sink = writer.open(out, len(out.rows))
        for row, prompt, target in zip(out.rows, out.prompts, out.targets, strict=True):
            sink.write(row, prompt, target)
        sink.close()
    return writer.exports_report()


def describe(values: Sequence[float]) -> dict[str, float | None]:
    """Mean (2 decimals), median, 95th percentile (nearest rank) and maximum of a list of numbers."""
    if not values:
        return {"mean": None, "median": None, "p95": None, "max": None}
    ordered = sorted(values)
    return {
        "mean": round(statistics.fmean(ordered), 2),
        "median": statistics.median(ordered),
        "p95": ordered[math.ceil(0.95 * len(ordered)) - 1],
        "max": ordered[-1],
    }


def length_stats(lengths: Sequence[tuple[int, int]]) -> dict[str, dict[str, float | None]]:
    """[`describe`] of texts' lengths, given as `(characters, whitespace-separated words)` pairs."""
    return {"chars": describe([chars for chars, _ in lengths]), "words": describe([words for _, words in lengths])}


def verdict_counts(verdicts: Iterable[str | None]) -> dict[str, Any]:
    """Right, wrong and missing verdicts, and the share of right among the records that have one."""
    counts = Counter(verdicts)
    judged = counts["right"] + counts["wrong"]
    return {
        "right": counts["right"],
        "wrong": counts["wrong"],
        "none": counts[None],
        "right_share": round(counts["right"] / judged, 4) if judged else None,
    }


def condition_summary(out: ConditionSet) -> dict[str, Any]:
    """The `summary.json` entry of one condition."""
    if out.skipped:
        return {"skipped": out.skipped}
    return {
        "file": f"{out.name}.jsonl",
        "format": "cgd columns" if out.family == "cgd" else "prompt-completion",
        "records": out.count,
        "dropped": dict(out.dropped),
        "verdicts": verdict_counts(out.verdicts),
        "lengths": {"context": length_stats(out.context_lengths), "target": length_stats(out.target_lengths)},
        **out.extra,
    }


def _front_matter(data_files: Mapping[str, str]) -> str:
    lines = ["---", "configs:"]
    default = "cgd" if "cgd" in data_files else next(iter(data_files), None)
    for name, path in data_files.items():
        lines += [f"- config_name: {name}", "  data_files:", "  - split: train", f"    path: {path}"]
        if name == default:
            lines.append("  default: true")
    lines += ["tags:", "- cgd-trainer", "- critique-guided-distillation", "---", ""]
    return "\n".join(lines)


def render_card(summary: Mapping[str, Any], data_files: Mapping[str, str] | None = None) -> str:
    """
    The dataset card (`README.md`) of a build: YAML front matter with one configuration per written file, then what
    each condition trains and the summary table.

    Args:
        summary (`Mapping[str, Any]`): The build summary.
        data_files (`Mapping[str, str]`, *optional*): Data file of each configuration; defaults to the local
            `<name>.jsonl` files (on the hub, `push_to_hub` lays them out as `<name>/train-*`).

    Returns:
        `str`: The card text.
    """
    written = {name: entry for name, entry in summary["conditions"].items() if "skipped" not in entry}
    if data_files is None:
        data_files = {name: entry["file"] for name, entry in written.items()}
    source = summary["input"]
    lines = [
        _front_matter(data_files),
        "# CGD training sets",
        "",
        "Training sets for Critique-Guided Distillation (CGD, [arXiv 2505.11628](https://arxiv.org/abs/2505.11628)) "
        "and the baselines it is compared with, built by `cgd build` (cgd-trainer) from "
        f"`{Path(source['path']).name}`: {source['records']} records read, {summary['records_after_filters']} "
        "after filtering. Every configuration holds the same questions with a different context and target.",
        "",
        "## Conditions",
        "",
        "| configuration | context | target |",
        "|---|---|---|",
    ]
    for name in written:
        if name in CONDITION_BUILDERS:
            context, target = CONDITION_BUILDERS[name].context, CONDITION_BUILDERS[name].target
        else:  # a ratio subset: CGD records with a chosen mix of verdicts
            context, target = CONDITION_BUILDERS["cgd"].context, CONDITION_BUILDERS["cgd"].target
            target += f" ({written[name]['ratio']} right/wrong initial answers)"
        lines.append(f"| {name} | {context} | {target} |")
    lines += [
        "",
        "The `cgd`, `irrelevant_critique`, `generic_critique` and `ratio_*` configurations hold CGD records "
        "(`prompt`, `initial_response`, `critique`, `refined_response`) that `CGDTrainer` trains directly; the others "
        "are TRL conversational prompt-completion records for `SFTTrainer`. At inference the student sees the "
        "question alone.",
        "",
        "## Summary",
        "",
        "| configuration | records | dropped | right | wrong | no verdict | context words (mean) | "
        "target words (mean) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in written.items():
        verdicts, lengths = entry["verdicts"], entry["lengths"]
        lines.append(
            f"| {name} | {entry['records']} | {sum(entry['dropped'].values())} | {verdicts['right']} | "
            f"{verdicts['wrong']} | {verdicts['none']} | {lengths['context']['words']['mean']} | "
            f"{lengths['target']['words']['mean']} |"
        )
    skipped = {name: entry["skipped"] for name, entry in summary["conditions"].items() if "skipped" in entry}
    if skipped:
        lines += ["", "Not built: " + "; ".join(f"`{name}` ({reason})" for name, reason in skipped.items()) + "."]
    filters = summary["filters"]
    lines += ["", "## Filtering", ""]
    if "decontamination" in filters:
        report = filters["decontamination"]
        lines.append(
            f"- Decontamination: {report['dropped']} records dropped for sharing a {report['ngram']}-word sequence "
            f"with the questions of {', '.join(f'`{Path(p).name}`' for p in report['files'])}."
        )
    else:
        lines.append("- Decontamination: not run.")
    if "filter_correct" in filters:
        dropped = filters["filter_correct"]["dropped"]
        reasons = ", ".join(f"{reason.replace('_', ' ')}: {count}" for reason, count in dropped.items())
        lines.append(
            f"- Correctness filter (math-verify, refined answer against the reference): {sum(dropped.values())} "
            f"records dropped ({reasons})."
        )
    else:
        lines.append("- Correctness filter: not run (as in the paper, critiques and refinements are not filtered).")
    lines += ["", "`summary.json` holds the full statistics (lengths, drops, verdicts) and the build settings.", ""]
    return "\n".join(lines)


def format_table(summary: Mapping[str, Any]) -> str:
    """The short table printed at the end of a build."""
    lines = [
        f"cgd build: {summary['input']['records']} records read, {summary['records_after_filters']} after filters "
        f"-> {summary['output_dir']}",
        f"  {'condition':<20} {'records':>8} {'dropped':>8} {'right':>6} {'wrong':>6} {'none':>5}",
    ]
    for name, entry in summary["conditions"].items():
        if "skipped" in entry:
            lines.append(f"  {name:<20} skipped: {entry['skipped']}")
            continue
        verdicts = entry["verdicts"]
        lines.append(
            f"  {name:<20} {entry['records']:>8} {sum(entry['dropped'].values()):>8} {verdicts['right']:>6} "
            f"{verdicts['wrong']:>6} {verdicts['none']:>5}"
        )
    return "\n".join(lines)


def push_dataset_to_hub(output_dir: str | Path, summary: Mapping[str, Any], repo_id: str) -> None:
    """
    Uploads every written configuration (`Dataset.push_to_hub(repo_id, config_name=name)`), `summary.json` and the
    dataset card, whose configurations point at the `<name>/train-*` files `datasets` writes on the hub.
    """
    # Imported here: `cgd build` without `push_to_hub` must not pay for `datasets` and `huggingface_hub`.
    from datasets import Dataset
    from huggingface_hub import DatasetCard, HfApi

    output_dir = Path(output_dir)
    written = [name for name, entry in summary["conditions"].items() if "skipped" not in entry]
    for name in written:
        # Typed from every row, not from the first block: a column that is null at first (e.g. a reference answer
        # known only for later records) would otherwise fail to cast.
        dataset = Dataset.from_list(read_rows(output_dir / f"{name}.jsonl"))
        dataset.push_to_hub(repo_id, config_name=name, split="train")
    HfApi().upload_file(
        path_or_fileobj=str(output_dir / "summary.json"),
        path_in_repo="summary.json",
        repo_id=repo_id,
        repo_type="dataset",
    )
    card = render_card(summary, data_files={name: f"{name}/train-*" for name in written})
    DatasetCard(card).push_to_hub(repo_id, repo_type="dataset")
