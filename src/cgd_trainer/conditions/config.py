"""The settings of `cgd build` ([`BuildConfig`]) and the names it accepts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..record_format import AblationSettings
from ..templates import CFT_INSTRUCTION, GENERIC_CRITIQUE
from .builders import CONDITION_BUILDERS
from .sampling import parse_ratio

# Declared by the registered builders, in their build order.
CONDITIONS = tuple(CONDITION_BUILDERS)
# Conditions written in the CGD columns (trained by CGDTrainer); the others are TRL prompt-completion records.
CGD_FAMILY = tuple(name for name, condition in CONDITION_BUILDERS.items() if condition.family == "cgd")
INPUT_FORMATS = ("cgd", "cft", "alpaca")
EXPORT_FORMATS = ("alpaca", "messages")
DEFAULT_RATIOS = ("100/0", "75/25", "50/50", "25/75", "0/100")


@dataclass
class BuildConfig(AblationSettings):
    r"""
    Configuration of `cgd build`. The record's columns and the wording of its contexts are the settings of
    [`~record_format.AblationSettings`], declared once for `cgd build`, `CGDConfig` and `cgd diagnose`: the same
    flags give the contexts that `cgd build` writes, that training renders and that `cgd diagnose` scores.

    Args:
        input (`str`):
            Generated CGD records: a JSONL, JSON or Parquet file, or `builtin:demo` (the records shipped with the
            package).
        input_format (`str`, *optional*, defaults to `"cgd"`):
            `"cgd"` (one record per row, columns named by the `*_field` settings), `"cft"` (Critique Fine-Tuning rows
            `instruction/input/output`, the input holding the question and the student's answer after the markers
            `cft_question_marker` and `cft_answer_marker`, the output the critique) or `"alpaca"` (the Alpaca export
            of a CGD-family condition written by this command).
        output_dir (`str`):
            Folder that receives one `<condition>.jsonl` per condition, the ratio subsets, the exports,
            `summary.json` and `README.md`.
        conditions (`list[str]`, *optional*, defaults to all):
            Conditions to build, among `cgd`, `sft`, `distilled_sft`, `cft`, `no_critique`, `irrelevant_critique`
            and `generic_critique`.
        ratios (`list[str]`, *optional*, defaults to `["100/0", "75/25", "50/50", "25/75", "0/100"]`):
            Right/wrong verdict ratios of the subsets to write, as `"R/W"` percentages with `R + W = 100`. An empty
            list (or `none` on the command line) writes no subset.
        ratio_size (`int`, *optional*):
            Records in each ratio subset. Defaults to the largest size every ratio can be drawn at
            (`min(#right, #wrong)` for the default ratios, which include `100/0` and `0/100`).
        seed (`int`, *optional*, defaults to `42`):
            Seed of the critique derangement and of the ratio sampling.
        generic_critique (`str`, *optional*):
            Critique of the `generic_critique` condition; defaults to the library's content-free wording.
        no_critique_instruction (`str`, *optional*):
            Instruction of the `no_critique` condition; defaults to the library's wording.
        cgd_layout, cgd_instruction, cgd_template, cgd_critique_template (`str`, *optional*):
            The CGD context's layout and wording, as in training: they word the Alpaca and `messages` exports and the
            context statistics of the CGD-family conditions. The rows are chat rows: `multi_turn` lays out the
            `messages` export and the `no_critique` rows in turns (the draft as the model's own turn), any other
            value as one user turn.
        cft_instruction (`str`, *optional*):
            Instruction of the `cft` condition; defaults to the library's wording.
        export (`list[str]`, *optional*, defaults to `[]`):
            Extra formats: `alpaca` (`alpaca/<condition>.json` and `alpaca/dataset_info.json` for LLaMA-Factory)
            and `messages` (`messages/<condition>.jsonl`).
        filter_correct (`bool`, *optional*, defaults to `False`):
            Keep only records whose refined answer matches the reference answer (math-verify); records without a
            reference are dropped and counted.
        decontaminate (`list[str]`, *optional*, defaults to `[]`):
            Evaluation files (JSONL, JSON or Parquet); a record whose question shares a word n-gram with any of their
            questions is dropped.
        decontaminate_field (`str`, *optional*, defaults to `"problem"`):
            Question column of the evaluation files; when it is missing, `question` then `prompt` are tried.
        ngram (`int`, *optional*, defaults to `13`):
            Length in words of the n-grams compared for decontamination.
        id_field, prompt_field, initial_response_field, critique_field, refined_response_field, verdict_field,
        reference_field (`str`):
            Column names of the input records (the condition files use the library's names). Without an id column,
            ids are row numbers; without a verdict column, verdicts are read from the critiques' `Conclusion:` lines.
        cft_question_marker (`str`, *optional*, defaults to `"Question:"`):
            Marker that opens the question in the `input` of CFT rows.
        cft_answer_marker (`str`, *optional*, defaults to `"Solution:"`):
            Marker that opens the student's answer in the `input` of CFT rows.
        push_to_hub (`bool`, *optional*, defaults to `False`):
            Upload every condition (one dataset configuration each), `summary.json` and the card to the hub.
        hub_dataset_id (`str`, *optional*):
            Hub dataset repository for `push_to_hub`.
    """

    input: str | None = field(
        default=None, metadata={"help": "Generated CGD records: a JSONL/JSON/Parquet file or `builtin:demo`."}
    )
    input_format: str = field(
        default="cgd",
        metadata={"help": "Format of the input: cgd, cft or alpaca.", "choices": list(INPUT_FORMATS)},
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Folder for the condition files, summary.json and README.md."}
    )
    conditions: list[str] = field(
        default_factory=lambda: list(CONDITIONS), metadata={"help": f"Conditions to build, among {CONDITIONS}."}
    )
    ratios: list[str] = field(
        default_factory=lambda: list(DEFAULT_RATIOS),
        metadata={"help": "Right/wrong verdict ratios of the subsets, as R/W percentages; `none` for no subset."},
    )
    ratio_size: int | None = field(
        default=None, metadata={"help": "Records per ratio subset (default: the largest size all ratios allow)."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of the critique derangement and of the ratio sampling."})
    generic_critique: str = field(
        default=GENERIC_CRITIQUE, metadata={"help": "Critique text of the generic_critique condition."}
    )
    cft_instruction: str = field(default=CFT_INSTRUCTION, metadata={"help": "Instruction of the cft condition."})
    export: list[str] = field(
        default_factory=list, metadata={"help": f"Extra export formats, among {EXPORT_FORMATS}."}
    )
    filter_correct: bool = field(
        default=False, metadata={"help": "Keep only records whose refined answer matches the reference (math-verify)."}
    )
    decontaminate: list[str] = field(
        default_factory=list,
        metadata={"help": "Evaluation files whose questions must not appear in the training sets."},
    )
    decontaminate_field: str = field(
        default="problem", metadata={"help": "Question column of the evaluation files (then `question`, `prompt`)."}
    )
    ngram: int = field(default=13, metadata={"help": "Word n-gram length for decontamination."})
    id_field: str = field(default="id", metadata={"help": "Column holding the record id (default: row number)."})
    verdict_field: str = field(
        default="verdict", metadata={"help": "Column holding the verdict (right/wrong/null) of the initial answer."}
    )
    reference_field: str = field(
        default="reference_answer", metadata={"help": "Column holding the source dataset's reference answer."}
    )
    cft_question_marker: str = field(
        default="Question:", metadata={"help": "Marker of the question in the `input` of CFT rows."}
    )
    cft_answer_marker: str = field(
        default="Solution:", metadata={"help": "Marker of the student's answer in the `input` of CFT rows."}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the conditions and the card to the hub."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Hub dataset repository for push_to_hub."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.input:
            raise ValueError("Set `input`: a JSONL/JSON/Parquet file of generated CGD records, or `builtin:demo`.")
        if not self.output_dir:
            raise ValueError("Set `output_dir`: the folder that receives the training sets.")
        if self.input_format not in INPUT_FORMATS:
            raise ValueError(f"`input_format` must be one of {list(INPUT_FORMATS)}, got {self.input_format!r}.")
        self.conditions = _as_list(self.conditions)
        self.ratios = [ratio for ratio in _as_list(self.ratios) if ratio.lower() != "none"]
        self.export = _as_list(self.export)
        self.decontaminate = _as_list(self.decontaminate)
        for name, values, allowed in (
            ("conditions", self.conditions, CONDITIONS),
            ("export", self.export, EXPORT_FORMATS),
        ):
            unknown = [value for value in values if value not in allowed]
            if unknown:
                raise ValueError(f"Unknown `{name}` {unknown}; choose among {list(allowed)}.")
            if len(set(values)) != len(values):
                raise ValueError(f"`{name}` lists an entry twice: {values}.")
        parsed = [parse_ratio(ratio) for ratio in self.ratios]
        if len(set(parsed)) != len(parsed):
            raise ValueError(f"`ratios` lists a ratio twice: {self.ratios}.")
        if self.ratio_size is not None and self.ratio_size < 1:
            raise ValueError(f"`ratio_size` must be at least 1, got {self.ratio_size}.")
        if self.ngram < 1:
            raise ValueError(f"`ngram` must be at least 1, got {self.ngram}.")
        if self.push_to_hub and not self.hub_dataset_id:
            raise ValueError("`push_to_hub` needs `hub_dataset_id`, the dataset repository to upload to.")
        if (
            self.cft_question_marker == self.cft_answer_marker
            or not self.cft_question_marker
            or not self.cft_answer_marker
        ):
            raise ValueError("`cft_question_marker` and `cft_answer_marker` must be two different, non-empty strings.")


def _as_list(value: Any) -> list[str]:
    # YAML may give a single string; the command line gives a list. Commas separate entries in either.
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]
