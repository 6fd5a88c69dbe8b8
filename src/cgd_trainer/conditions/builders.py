"""The training conditions of `cgd build`: one registered builder per condition, and the verdict-ratio subsets.

A condition is declared once, with [`register_condition`]: its name, its family (CGD columns for `CGDTrainer`, or TRL
prompt-completion rows), what the dataset card says it trains, and what it needs from the input. `CONDITIONS` (in
`config.py`) and the card are read from [`CONDITION_BUILDERS`], so a new condition is one registered builder here
(plus its row in the package docstring's table).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..record_format import RecordFormat, RecordParts, record_format
from .sampling import derangement, largest_ratio_size, parse_ratio, ratio_counts, ratio_name, sample_ratio_subsets

logger = logging.getLogger(__name__)

FAMILIES = ("cgd", "chat")


class ConditionSettings(Protocol):
    """
    The settings the builders read. [`BuildConfig`] provides them; it is declared in `config.py`, which imports this
    module for the list of conditions, so the builders name the settings they use instead of importing it. The
    contexts are rendered by [`~record_format.record_format`], from the record settings
    ([`~record_format.AblationSettings`]) that `BuildConfig` inherits.
    """

    input_format: str
    reference_field: str
    seed: int
    generic_critique: str
    cft_instruction: str
    cgd_layout: str
    ratios: list[str]
    ratio_size: int | None


class RowSink(Protocol):
    """Where a condition's rows go as they are built (see `writers.SetWriter`)."""

    def write(self, row: dict, prompt: list[dict], target: str) -> None: ...

    def close(self) -> None: ...


@dataclass
class ConditionSet:
    """
    One condition as it is built: what was dropped, and the numbers its statistics are computed from. Its rows go to
    `sink` one by one when it has one (`cgd build` writes them to the files at once, so that no condition's rows are
    held in memory); without one they are kept in `rows`, `prompts` and `targets`.
    """

    name: str
    family: str  # "cgd" (CGD columns) or "chat" (prompt-completion)
    sink: RowSink | None = None
    count: int = 0
    rows: list[dict] = field(default_factory=list)
    prompts: list[list[dict]] = field(default_factory=list)  # each row's context, as chat messages
    targets: list[str] = field(default_factory=list)
    # Characters and words of each row's context (its messages joined by blank lines) and target.
    context_lengths: list[tuple[int, int]] = field(default_factory=list)
    target_lengths: list[tuple[int, int]] = field(default_factory=list)
    verdicts: list[str | None] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, row: dict, prompt: list[dict], target: str, verdict: str | None) -> None:
        """Adds one row, with its context as chat messages, its target and its record's verdict."""
        self.count += 1
        context = "\n\n".join(message["content"] for message in prompt)
        self.context_lengths.append((len(context), len(context.split())))
        self.target_lengths.append((len(target), len(target.split())))
        self.verdicts.append(verdict)
        if self.sink is not None:
            self.sink.write(row, prompt, target)
        else:
            self.rows.append(row)
            self.prompts.append(prompt)
            self.targets.append(target)


# Opens the sink of a condition that is about to be built from this many records (`cgd build`: its files).
OpenSink = Callable[[ConditionSet, int], RowSink]


def cgd_context(record: Mapping[str, Any], fmt: RecordFormat | None = None) -> str:
    """
    The student's user turn for a CGD record (`single_turn`), as `CGDTrainer` renders it.

    Args:
        record (`Mapping`): A record with the library's keys (`prompt`, `initial_response`, `critique`).
        fmt ([`~record_format.RecordFormat`], *optional*): The wording; the library's by default.
    """
    return (fmt or RecordFormat()).text("cgd", _parts(record))


def _parts(record: Mapping[str, Any]) -> RecordParts:
    return RecordParts.of(record["prompt"], record["initial_response"], record["critique"])


# `render(kind, record)`: a condition's context as chat messages, rendered as training and `cgd diagnose` render it.
Render = Callable[[str, Mapping[str, Any]], list[dict]]


def _renderer(config: ConditionSettings) -> Render:
    fmt = record_format(config)
    # The rows are chat rows: `multi_turn` is laid out in turns, every other layout (`auto` included) as one turn.
    layout = "multi_turn" if config.cgd_layout == "multi_turn" else "single_turn"
    return lambda kind, record: fmt.render(kind, _parts(record), layout)


def _cgd_row(record: Mapping[str, Any], with_reference: bool, **overrides: Any) -> dict:
    row = {key: record[key] for key in ("id", "prompt", "initial_response", "critique", "refined_response", "verdict")}
    if with_reference:
        row["reference_answer"] = record["reference_answer"]
    row.update(overrides)
    return row


def _add_cgd(
    out: ConditionSet, record: Mapping[str, Any], render: Render, with_reference: bool, **overrides: Any
) -> None:
    row = _cgd_row(record, with_reference, **overrides)
    out.add(row, render("cgd", row), row["refined_response"], record["verdict"])


def _add_chat(out: ConditionSet, record: Mapping[str, Any], render: Render, kind: str, target: str) -> None:
    """A prompt-completion row: the context of `kind` for the record, and the target."""
    prompt = render(kind, record)
    row = {"id": record["id"], "prompt": prompt, "completion": [{"role": "assistant", "content": target}]}
    out.add(row, prompt, target, record["verdict"])


# --------------------------------------------------------------------------------------------------------------------
# What a condition may need from the input: each check returns why the condition cannot be built, or `None`.
# --------------------------------------------------------------------------------------------------------------------

Need = Callable[[Sequence[dict], ConditionSettings, Mapping[str, Any]], str | None]


def _needs_refined_answers(records: Sequence[dict], config: ConditionSettings, info: Mapping[str, Any]) -> str | None:
    if info["has_refined"]:
        return None
    return (
        f"the input has no refined answers (input_format '{config.input_format}'); generate them from "
        "imported.jsonl with the refine stage of `cgd generate`, then build again"
    )


def _needs_two_records(records: Sequence[dict], config: ConditionSettings, info: Mapping[str, Any]) -> str | None:
    if len(records) >= 2:
        return None
    return f"a critique from another record needs at least 2 records, there are {len(records)}"


def _needs_references(records: Sequence[dict], config: ConditionSettings, info: Mapping[str, Any]) -> str | None:
    if any(record["reference_answer"] is not None for record in records):
        return None
    return f"no record has a reference answer (column '{config.reference_field}')"


NEEDS: dict[str, Need] = {
    "refined_answers": _needs_refined_answers,
    "two_records": _needs_two_records,
    "references": _needs_references,
}

# --------------------------------------------------------------------------------------------------------------------
# The registry.
# --------------------------------------------------------------------------------------------------------------------

# Fills a condition's set from the records: `builder(out, records, config, info)`.
ConditionBuilder = Callable[[ConditionSet, Sequence[dict], ConditionSettings, Mapping[str, Any]], None]


@dataclass(frozen=True)
class Condition:
    """
    One training condition.

    Args:
        name (`str`): The condition's name, also the stem of its file.
        family (`str`): `"cgd"` (CGD columns, trained by `CGDTrainer`) or `"chat"` (TRL prompt-completion).
        context (`str`): What the student sees, in the dataset card's words.
        target (`str`): What the student learns to write, in the dataset card's words.
        needs (`tuple[str, ...]`): Keys of [`NEEDS`], checked in order; the first that fails skips the condition.
        builder (`ConditionBuilder`): Fills the condition's set from the records.
    """

    name: str
    family: str
    context: str
    target: str
    needs: tuple[str, ...]
    builder: ConditionBuilder


CONDITION_BUILDERS: dict[str, Condition] = {}


def register_condition(
    name: str, family: str, context: str, target: str, needs: Sequence[str] = ("refined_answers",)
) -> Callable[[ConditionBuilder], ConditionBuilder]:
    """
    Registers the decorated function as the builder of a condition (the registration order is the build order).

    Args:
        name (`str`): The condition's name.
        family (`str`): `"cgd"` or `"chat"`.
        context (`str`): What the student sees, for the dataset card.
        target (`str`): What the student learns to write, for the dataset card.
        needs (`Sequence[str]`, *optional*, defaults to `("refined_answers",)`): What the condition needs from the
            input, among the keys of [`NEEDS`].
    """
    if family not in FAMILIES:
        raise ValueError(f"Condition {name!r}: `family` must be one of {FAMILIES}, got {family!r}.")
    unknown = [need for need in needs if need not in NEEDS]
    if unknown:
        raise ValueError(f"Condition {name!r}: unknown needs {unknown}; choose among {list(NEEDS)}.")

    def register(builder: ConditionBuilder) -> ConditionBuilder:
        if name in CONDITION_BUILDERS:
            raise ValueError(f"The condition {name!r} is registered twice.")
        CONDITION_BUILDERS[name] = Condition(name, family, context, target, tuple(needs), builder)
        return builder

    return register


@register_condition(
    "cgd", "cgd", context="question, student's initial answer, teacher's critique", target="teacher's refined answer"
)
def _build_cgd(out: ConditionSet, records: Sequence[dict], config: ConditionSettings, info: Mapping[str, Any]) -> None:
    render = _renderer(config)
    for record in records:
        _add_cgd(out, record, render, info["has_reference"])


@register_condition(
    "sft", "chat", context="question", target="reference answer of the source dataset", needs=("references",)
)
def _build_sft(out: ConditionSet, records: Sequence[dict], config: ConditionSettings, info: Mapping[str, Any]) -> None:
    render = _renderer(config)
    for record in records:
        if record["reference_answer"] is None:
            out.dropped["no_reference"] = out.dropped.get("no_reference", 0) + 1
            continue
        _add_chat(out, record, render, "question_alone", record["reference_answer"])


@register_condition("distilled_sft", "chat", context="question", target="teacher's refined answer")
def _build_distilled_sft(
    out: ConditionSet, records: Sequence[dict], config: ConditionSettings, info: Mapping[str, Any]
) -> None:
    render = _renderer(config)
    for record in records:
        _add_chat(out, record, render, "question_alone", record["refined_response"])


@register_condition(
    "cft",
    "chat",
    context="question, student's initial answer",
    target="teacher's critique (Critique Fine-Tuning)",
    needs=(),
)
def _build_cft(out: ConditionSet, records: Sequence[dict], config: ConditionSettings, info: Mapping[str, Any]) -> None:
    render = _renderer(config)
    for record in records:
        if not record["critique"].strip():
            out.dropped["empty_critique"] = out.dropped.get("empty_critique", 0) + 1
            continue
        _add_chat(out, record, render, "cft", record["critique"])


@register_condition(
    "no_critique", "chat", context="question, student's initial answer", target="teacher's refined answer"
)
def _build_no_critique(
    out: ConditionSet, records: Sequence[dict], config: ConditionSettings, info: Mapping[str, Any]
) -> None:
    render = _renderer(config)
    for record in records:
        _add_chat(out, record, render, "no_critique", record["refined_response"])


@register_condition(
    "irrelevant_critique",
    "cgd",
    context="question, student's initial answer, the critique of another question",
    target="refined answer",
    needs=("refined_answers", "two_records"),
)
def _build_irrelevant_critique(
    out: ConditionSet, records: Sequence[dict], config: ConditionSettings, info: Mapping[str, Any]
) -> None:
    render = _renderer(config)
    critiques = [record["critique"] for record in records]
    # Grouped by text, so that a record never gets a copy of its own critique when another text is available.
    sources = derangement(len(records), config.seed, groups=critiques)
    for record, source in zip(records, sources):
        _add_cgd(
            out,
            record,
            render,
            info["has_reference"],
            critique=critiques[source],
            critique_source_id=records[source]["id"],
        )
    same = sum(critiques[source] == critique for source, critique in zip(sources, critiques))
    out.extra["same_critique_text"] = same
    if same:
        logger.warning(
            f"irrelevant_critique: {same} records received a critique with the same text as their own; over half "
            "of the records share that text, so this is the fewest possible."
        )


@register_condition(
    "generic_critique",
    "cgd",
    context="question, student's initial answer, a fixed content-free critique",
    target="refined answer",
)
def _build_generic_critique(
    out: ConditionSet, records: Sequence[dict], config: ConditionSettings, info: Mapping[str, Any]
) -> None:
    render = _renderer(config)
    for record in records:
        _add_cgd(out, record, render, info["has_reference"], critique=config.generic_critique)


def make_condition(
    name: str,
    records: Sequence[dict],
    config: ConditionSettings,
    info: Mapping[str, Any],
    open_sink: OpenSink | None = None,
) -> ConditionSet:
    """
    Builds one condition from the (filtered) records. Every row keeps its record's id and, for the CGD-family
    conditions, its verdict: in `irrelevant_critique` that is still the verdict on the record's own initial answer,
    whatever the borrowed critique concludes.

    Args:
        name (`str`): One of `CONDITIONS`.
        records (`Sequence[dict]`): Records as returned by [`load_records`].
        config ([`BuildConfig`]): The build settings (seed, generic critique, instructions).
        info (`Mapping[str, Any]`): Facts about the input (`has_reference`, `has_refined`).
        open_sink (`OpenSink`, *optional*): Opens where the rows go once the condition is known to be built, and
            closes it after the last row; without it the rows are kept in the set.

    Returns:
        [`ConditionSet`]: the condition's statistics (and rows, without a sink), or `skipped` with the reason.
    """
    condition = CONDITION_BUILDERS.get(name)
    if condition is None:
        raise ValueError(f"Unknown condition {name!r}; choose among {list(CONDITION_BUILDERS)}.")
    out = ConditionSet(name, condition.family)
    for need in condition.needs:
        reason = NEEDS[need](records, config, info)
        if reason is not None:
            out.skipped = reason
            return out
    if open_sink is not None:
        out.sink = open_sink(out, len(records))
    try:
        condition.builder(out, records, config, info)
    finally:
        if out.sink is not None:
            out.sink.close()
    for reason, count in out.dropped.items():
        logger.warning(f"{name}: dropped {count} records ({reason.replace('_', ' ')}).")
    return out


def make_ratio_subsets(
    records: Sequence[dict], config: ConditionSettings, info: Mapping[str, Any], open_sink: OpenSink | None = None
) -> tuple[list[ConditionSet], dict]:
    """
    Builds the verdict-ratio subsets (CGD columns) of `config.ratios`, each into its sink when `open_sink` is given
    (see [`make_condition`]).

    Returns:
        `tuple[list[ConditionSet], dict]`: one set per ratio, and a report (`size`, available right/wrong records,
        records without a verdict, or `skipped` with the reason).
    """
    ratios = [parse_ratio(ratio) for ratio in config.ratios]
    if not ratios:
        return [], {"skipped": "no ratio requested"}
    if not info["has_refined"]:
        return [], {"skipped": "the input has no refined answers"}
    verdicts = [record["verdict"] for record in records]
    counts = Counter(verdicts)
    report = {"right": counts["right"], "wrong": counts["wrong"], "no_verdict": counts[None]}
    if counts[None]:
        logger.warning(f"Ratio subsets: {counts[None]} records without a verdict are left out of every subset.")
    size = config.ratio_size
    if size is None:
        size = largest_ratio_size(ratios, counts["right"], counts["wrong"])
        if size == 0:
            reason = f"the ratios {config.ratios} cannot be drawn from {counts['right']} right and "
            reason += f"{counts['wrong']} wrong records"
            logger.warning(f"Ratio subsets skipped: {reason}.")
            return [], {**report, "skipped": reason}
    render = _renderer(config)
    subsets = sample_ratio_subsets(verdicts, ratios, size, config.seed)
    sets = []
    for ratio, indices in subsets.items():
        out = ConditionSet(ratio_name(ratio), "cgd")
        if open_sink is not None:
            out.sink = open_sink(out, len(indices))
        try:
            for index in indices:
                _add_cgd(out, records[index], render, info["has_reference"])
        finally:
            if out.sink is not None:
                out.sink.close()
        right, wrong = ratio_counts(size, ratio)
        out.extra = {"ratio": f"{ratio[0]}/{ratio[1]}", "right": right, "wrong": wrong}
        sets.append(out)
    return sets, {**report, "size": size}
