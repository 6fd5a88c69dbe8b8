"""`cgd build`: every training condition of the paper's comparison from one set of generated CGD records.

From records `(question, initial answer, critique, refined answer, verdict, reference answer)` this module writes, one
JSONL file per condition:

| condition | context | target | format |
|---|---|---|---|
| `cgd` | question, initial answer, critique | refined answer | CGD columns (trained by `CGDTrainer`) |
| `irrelevant_critique` | question, initial answer, another record's critique | refined answer | CGD columns |
| `generic_critique` | question, initial answer, a fixed content-free critique | refined answer | CGD columns |
| `no_critique` | question, initial answer | refined answer | TRL prompt-completion |
| `sft` | question | reference answer | TRL prompt-completion |
| `distilled_sft` | question | refined answer | TRL prompt-completion |
| `cft` | question, initial answer | critique | TRL prompt-completion |

plus verdict-ratio subsets (`ratio_75_25.jsonl`: CGD records, 75% with a right and 25% with a wrong initial answer),
optional Alpaca (LLaMA-Factory) and `messages` exports, a `summary.json` and a dataset card (`README.md`). It also
imports CFT-style `instruction/input/output` data and reads its own Alpaca export back.

Run it with `cgd build --input records.jsonl --output_dir sets/` or `cgd build --config build.yaml`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import statistics
import sys
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from datasets import load_dataset
from huggingface_hub import DatasetCard, HfApi
from trl import TrlParser

from .demo import BUILTIN_DATASETS, BUILTIN_PREFIX
from .demo_data import demo_data_path
from .formatting import DEFAULT_INSTRUCTION, DEFAULT_TEMPLATE, PLACEHOLDERS, fill_template
from .prompts import parse_verdict
from .train import LOCAL_FORMATS, load_source

logger = logging.getLogger(__name__)

CONDITIONS = ("cgd", "sft", "distilled_sft", "cft", "no_critique", "irrelevant_critique", "generic_critique")
# Conditions written in the CGD columns (trained by CGDTrainer); the others are TRL prompt-completion records.
CGD_FAMILY = ("cgd", "irrelevant_critique", "generic_critique")
INPUT_FORMATS = ("cgd", "cft", "alpaca")
EXPORT_FORMATS = ("alpaca", "messages")
DEFAULT_RATIOS = ("100/0", "75/25", "50/50", "25/75", "0/100")
QUESTION_FALLBACKS = ("question", "prompt")

GENERIC_CRITIQUE = (
    "Go over the answer once more. Check that each step follows from the one before it, that every calculation is "
    "carried out correctly, and that no step needed to reach the result has been left out. Then state the final "
    "result clearly."
)

NO_CRITIQUE_INSTRUCTION = (
    "Below are a question and a student's first attempt at it. Write a complete and correct answer to the question: "
    "keep what the attempt got right, fix any mistake in it, and spell out any step that was missing."
)

CFT_INSTRUCTION = (
    "Below are a question and a student's answer to it. Review the answer as a teacher would: check every step, "
    "point out each mistake, missing step or unclear explanation, and say how it should be fixed. End with a final "
    "line that reads exactly `Conclusion: right` if the student's final answer is correct, or exactly "
    "`Conclusion: wrong` if it is not."
)

# The labelled sections of the CGD context without the instruction: the Alpaca `input` of the CGD-family conditions.
SECTIONS_TEMPLATE = DEFAULT_TEMPLATE.removeprefix("{instruction}\n\n")
NO_CRITIQUE_TEMPLATE = "{instruction}\n\n### Question\n{question}\n\n### Student's initial answer\n{initial_response}"
CFT_TEMPLATE = "{instruction}\n\n### Question\n{question}\n\n### Student's answer\n{initial_response}"

# What each condition trains, for the dataset card: (context, target).
CONDITION_DESCRIPTIONS = {
    "cgd": ("question, student's initial answer, teacher's critique", "teacher's refined answer"),
    "sft": ("question", "reference answer of the source dataset"),
    "distilled_sft": ("question", "teacher's refined answer"),
    "cft": ("question, student's initial answer", "teacher's critique (Critique Fine-Tuning)"),
    "no_critique": ("question, student's initial answer", "teacher's refined answer"),
    "irrelevant_critique": ("question, student's initial answer, the critique of another question", "refined answer"),
    "generic_critique": ("question, student's initial answer, a fixed content-free critique", "refined answer"),
}

ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output"}

_RATIO = re.compile(r"\s*(\d{1,3})\s*/\s*(\d{1,3})\s*")
_NOT_A_WORD = re.compile(r"[\W_]+")


@dataclass
class BuildConfig:
    r"""
    Configuration of `cgd build`.

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
            Column names of the input records. Without an id column, ids are row numbers; without a verdict column,
            verdicts are read from the critiques' `Conclusion:` lines.
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
    no_critique_instruction: str = field(
        default=NO_CRITIQUE_INSTRUCTION, metadata={"help": "Instruction of the no_critique condition."}
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
    prompt_field: str = field(default="prompt", metadata={"help": "Column holding the question."})
    initial_response_field: str = field(
        default="initial_response", metadata={"help": "Column holding the student's initial answer."}
    )
    critique_field: str = field(default="critique", metadata={"help": "Column holding the teacher's critique."})
    refined_response_field: str = field(
        default="refined_response", metadata={"help": "Column holding the teacher's refined answer."}
    )
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

    def __post_init__(self):
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


# --------------------------------------------------------------------------------------------------------------------
# Verdicts, ratios, derangement and decontamination: the pure building blocks.
# --------------------------------------------------------------------------------------------------------------------


def parse_ratio(text: str) -> tuple[int, int]:
    """
    Parses a right/wrong ratio written `"R/W"` in percent, e.g. `"75/25"`.

    Returns:
        `tuple[int, int]`: the percentages of right and of wrong initial answers.

    Raises:
        `ValueError`: when the text is not two whole percentages that add up to 100.
    """
    match = _RATIO.fullmatch(str(text))
    if not match or int(match[1]) + int(match[2]) != 100:
        raise ValueError(f"Bad ratio {text!r}: write it as 'R/W' in percent with R + W = 100, e.g. '75/25'.")
    return int(match[1]), int(match[2])


def ratio_name(ratio: tuple[int, int]) -> str:
    """File stem of a ratio subset: `(75, 25)` -> `"ratio_75_25"`."""
    return f"ratio_{ratio[0]}_{ratio[1]}"


def ratio_counts(size: int, ratio: tuple[int, int]) -> tuple[int, int]:
    """Right and wrong records of a subset of `size` records: `R%` of `size` rounded half up, and the rest."""
    right = (ratio[0] * size + 50) // 100
    return right, size - right


def largest_ratio_size(ratios: Sequence[tuple[int, int]], available_right: int, available_wrong: int) -> int:
    """The largest subset size at which every ratio can be drawn from the available right and wrong records."""
    size = available_right + available_wrong
    # Both counts grow with the size, so the first size that fits every ratio, going down, is the largest.
    while size > 0:
        counts = [ratio_counts(size, ratio) for ratio in ratios]
        if all(right <= available_right and wrong <= available_wrong for right, wrong in counts):
            return size
        size -= 1
    return 0


def sample_ratio_subsets(
    verdicts: Sequence[str | None], ratios: Sequence[tuple[int, int]], size: int, seed: int
) -> dict[tuple[int, int], list[int]]:
    """
    Draws, for each ratio, `size` records with the ratio's share of right and wrong verdicts.

    The right and the wrong records are shuffled once with the seed and each subset takes the first ones it needs,
    so subsets are nested (the right records of `75/25` are among those of `100/0`): ratios then differ only in the
    mix, not in which questions happened to be drawn. Records without a verdict are never drawn.

    Args:
        verdicts (`Sequence[str | None]`): Verdict of each record.
        ratios (`Sequence[tuple[int, int]]`): Ratios as parsed by [`parse_ratio`].
        size (`int`): Records per subset.
        seed (`int`): Random seed.

    Returns:
        `dict[tuple[int, int], list[int]]`: the record indices of each subset, in input order.

    Raises:
        `ValueError`: when a ratio needs more right or wrong records than there are.
    """
    right = [index for index, verdict in enumerate(verdicts) if verdict == "right"]
    wrong = [index for index, verdict in enumerate(verdicts) if verdict == "wrong"]
    rng = random.Random(seed)
    right, wrong = rng.sample(right, len(right)), rng.sample(wrong, len(wrong))
    subsets = {}
    for ratio in ratios:
        n_right, n_wrong = ratio_counts(size, ratio)
        if n_right > len(right) or n_wrong > len(wrong):
            raise ValueError(
                f"The ratio {ratio[0]}/{ratio[1]} at ratio_size={size} needs {n_right} records with a right and "
                f"{n_wrong} with a wrong verdict, but there are {len(right)} right and {len(wrong)} wrong. Lower "
                f"`ratio_size` (at most {largest_ratio_size(ratios, len(right), len(wrong))} here) or leave it unset."
            )
        subsets[ratio] = sorted(right[:n_right] + wrong[:n_wrong])
    return subsets


def derangement(n: int, seed: int, groups: Sequence[Hashable] | None = None) -> list[int]:
    """
    A seeded permutation without fixed points: record `i` receives the critique of record `sources[i] != i`.

    With `groups` (e.g. the critique texts), it also avoids giving a record a critique of its own group: records are
    laid out group by group (groups and members in seeded random order, the largest group first) and each receives
    from the record as many places further as the largest group is long. When no group holds more than half of the
    records, no record receives from its own group; otherwise the number that must do so (`2 * largest - n`) is the
    minimum possible. Without groups this is a uniformly random single cycle.

    Args:
        n (`int`): Number of records, at least 2.
        seed (`int`): Random seed; the same seed gives the same permutation.
        groups (`Sequence[Hashable]`, *optional*): Group of each record.

    Returns:
        `list[int]`: `sources`, where `sources[i]` is the record whose critique record `i` receives.

    Raises:
        `ValueError`: when `n < 2` or `groups` does not have `n` entries.
    """
    if n < 2:
        raise ValueError(f"A derangement needs at least 2 records, got {n}.")
    keys = list(range(n)) if groups is None else list(groups)
    if len(keys) != n:
        raise ValueError(f"`groups` has {len(keys)} entries for {n} records.")
    members: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        members.setdefault(key, []).append(index)
    rng = random.Random(seed)
    blocks = list(members.values())
    rng.shuffle(blocks)
    for block in blocks:
        rng.shuffle(block)
    largest = max(range(len(blocks)), key=lambda position: len(blocks[position]))
    blocks.insert(0, blocks.pop(largest))
    order = [index for block in blocks for index in block]
    shift = len(blocks[0]) if len(blocks[0]) < n else 1  # one group: every shift collides, any derangement will do
    sources = [0] * n
    for position, index in enumerate(order):
        sources[index] = order[(position + shift) % n]
    return sources


def normalize_text(text: str) -> str:
    """Lower-cases, turns punctuation into spaces and collapses whitespace: the form compared for decontamination."""
    return " ".join(_NOT_A_WORD.sub(" ", text.lower()).split())


def word_ngrams(text: str, n: int) -> set[str]:
    """The word n-grams of a text after [`normalize_text`], each joined by single spaces."""
    words = normalize_text(text).split()
    return {" ".join(words[start : start + n]) for start in range(len(words) - n + 1)}


@dataclass
class Decontaminator:
    """
    Finds training questions that overlap evaluation questions.

    A question of at least `n` words overlaps when it shares a word n-gram with an evaluation question; a shorter one
    when its normalized text equals that of an evaluation question.

    Args:
        n (`int`): n-gram length in words.
    """

    n: int = 13
    ngrams: dict[str, str] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)

    def add(self, questions: Iterable[str], source: str) -> None:
        """Registers evaluation questions from `source` (kept to report which file a match came from)."""
        for question in questions:
            self.texts.setdefault(normalize_text(question), source)
            for gram in word_ngrams(question, self.n):
                self.ngrams.setdefault(gram, source)

    def match(self, question: str) -> str | None:
        """The source of the first evaluation question that overlaps `question`, or `None`."""
        normalized = normalize_text(question)
        if len(normalized.split()) < self.n:
            return self.texts.get(normalized)
        for gram in sorted(word_ngrams(question, self.n)):
            if gram in self.ngrams:
                return self.ngrams[gram]
        return None


# --------------------------------------------------------------------------------------------------------------------
# Reading.
# --------------------------------------------------------------------------------------------------------------------


def _record_error(path: str | Path, index: int, field_name: str, problem: str, fix: str = "") -> ValueError:
    return ValueError(f"{path}, record {index}, field '{field_name}': {problem}. {fix}".rstrip())


def resolve_input(name: str) -> Path:
    """The file behind `input`: `builtin:demo` is the demo records shipped with the package."""
    if name.startswith(BUILTIN_PREFIX):
        if name not in BUILTIN_DATASETS:
            raise ValueError(f"Unknown built-in dataset {name!r}; the built-in datasets are {BUILTIN_DATASETS}.")
        return demo_data_path()
    path = Path(name)
    if not path.is_file():
        raise ValueError(f"The input {name!r} is not a file (nor a built-in dataset such as 'builtin:demo').")
    return path


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """
    Reads a JSONL, JSON (a list of objects) or Parquet file with `datasets`.

    Returns:
        `list[dict]`: the rows; every row has every column (missing values are `None`).
    """
    path = Path(path)
    if path.suffix.lower() not in LOCAL_FORMATS:
        raise ValueError(f"Cannot tell the format of {path}; use one of {sorted(LOCAL_FORMATS)}.")
    if not path.is_file():
        raise ValueError(f"{path} is not a file.")
    return load_source(str(path))["train"].to_list()


def _text(value: Any, path: Path, index: int, column: str, fix: str, allow_empty: bool = True) -> str:
    if value is None:
        raise _record_error(path, index, column, "the value is missing (null)", fix)
    if not isinstance(value, str):
        raise _record_error(path, index, column, f"expected a string, got {type(value).__name__}", fix)
    if not allow_empty and not value.strip():
        raise _record_error(path, index, column, "the text is empty", fix)
    return value


def _verdict(value: Any, path: Path, index: int, column: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str) and value.strip().lower() in ("right", "wrong"):
        return value.strip().lower()
    raise _record_error(path, index, column, f"expected 'right', 'wrong' or null, got {value!r}")


def _reference(value: Any, path: Path, index: int, column: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise _record_error(path, index, column, f"expected a string or a number, got {type(value).__name__}")
    return value if value.strip() else None


def _ids(rows: Sequence[Mapping[str, Any]], path: Path, column: str) -> list[str]:
    if not rows or column not in rows[0]:
        return [str(index) for index in range(len(rows))]
    ids, seen = [], {}
    for index, row in enumerate(rows):
        if row[column] is None:
            raise _record_error(path, index, column, "the id is null", "Give every record an id, or drop the column.")
        record_id = str(row[column])
        if record_id in seen:
            raise _record_error(
                path, index, column, f"the id {record_id!r} is also the id of record {seen[record_id]}"
            )
        seen[record_id] = index
        ids.append(record_id)
    return ids


def records_from_cgd(rows: Sequence[Mapping[str, Any]], path: Path, config: BuildConfig) -> tuple[list[dict], dict]:
    """
    Validates generated CGD rows and renames their columns to the library's names.

    Returns:
        `tuple[list[dict], dict]`: records with keys `id`, `prompt`, `initial_response`, `critique`,
        `refined_response`, `verdict` and `reference_answer`, and facts about the input (`has_reference`,
        `verdict_source`).

    Raises:
        `ValueError`: naming the record, the file and the field of the first bad value.
    """
    fields = {
        "prompt": config.prompt_field,
        "initial_response": config.initial_response_field,
        "critique": config.critique_field,
        "refined_response": config.refined_response_field,
    }
    columns = set(rows[0])
    for role, column in fields.items():
        if column not in columns:
            raise _record_error(
                path,
                0,
                column,
                f"the column is missing (the columns are {sorted(columns)})",
                f"Point `{role}_field` at the column that holds the {role.replace('_', ' ')}.",
            )
    has_verdict = config.verdict_field in columns
    has_reference = config.reference_field in columns
    ids = _ids(rows, path, config.id_field)
    records = []
    for index, row in enumerate(rows):
        record = {"id": ids[index]}
        for role, column in fields.items():
            fix = {
                "prompt": "`cgd build` needs every question as text; fix or drop the record.",
                "refined_response": "Regenerate the refined answer (`cgd generate`) or drop the record.",
            }.get(role, "Fix or drop the record.")
            allow_empty = role not in ("prompt", "refined_response")
            record[role] = _text(row[column], path, index, column, fix, allow_empty=allow_empty)
        record["verdict"] = (
            _verdict(row[config.verdict_field], path, index, config.verdict_field)
            if has_verdict
            else parse_verdict(record["critique"])
        )
        record["reference_answer"] = (
            _reference(row[config.reference_field], path, index, config.reference_field) if has_reference else None
        )
        records.append(record)
    used = {*fields.values(), config.id_field, config.verdict_field, config.reference_field}
    info = {"has_reference": has_reference, "has_refined": True, "used_columns": used}
    info["verdict_source"] = f"column '{config.verdict_field}'" if has_verdict else "parsed from the critiques"
    if not has_verdict:
        logger.warning(f"{path} has no '{config.verdict_field}' column; verdicts are read from the critiques.")
    return records, info


def split_cft_input(
    text: str, question_marker: str = "Question:", answer_marker: str = "Solution:"
) -> tuple[str, str]:
    """
    Splits the `input` of a CFT row into the question and the student's answer.

    Args:
        text (`str`): The input, e.g. `"Question:\\n...\\nSolution:\\n..."`.
        question_marker (`str`): Marker that opens the question.
        answer_marker (`str`): Marker that opens the answer (its first occurrence after the question marker).

    Returns:
        `tuple[str, str]`: the question and the answer, stripped.

    Raises:
        `ValueError`: when a marker is missing, text precedes the question marker, or a part is empty (the message
        names the problem; callers add the record and the file).
    """
    start = text.find(question_marker)
    if start < 0:
        raise ValueError(f"the question marker {question_marker!r} is missing")
    if text[:start].strip():
        raise ValueError(f"text comes before the question marker {question_marker!r}")
    middle = text.find(answer_marker, start + len(question_marker))
    if middle < 0:
        raise ValueError(f"the answer marker {answer_marker!r} is missing after the question")
    question = text[start + len(question_marker) : middle].strip()
    answer = text[middle + len(answer_marker) :].strip()
    if not question:
        raise ValueError("the question is empty")
    if not answer:
        raise ValueError("the student's answer is empty")
    return question, answer


def _require_columns(rows: Sequence[Mapping[str, Any]], path: Path, columns: Sequence[str], fix: str) -> None:
    for column in columns:
        if column not in rows[0]:
            raise _record_error(path, 0, column, f"the column is missing (the columns are {sorted(rows[0])})", fix)


def records_from_cft(rows: Sequence[Mapping[str, Any]], path: Path, config: BuildConfig) -> tuple[list[dict], dict]:
    """
    Imports Critique Fine-Tuning rows (`instruction`, `input` = question and student's answer, `output` = critique).

    Returns:
        `tuple[list[dict], dict]`: records without a refined answer (`refined_response` is `None`) and with the
        verdict read from the critique, and facts about the input.
    """
    fix = "Expected CFT rows with `instruction`, `input` (question and student's answer) and `output` (critique)."
    _require_columns(rows, path, ("input", "output"), fix)
    ids = _ids(rows, path, config.id_field)
    records = []
    markers_fix = "Set `cft_question_marker` and `cft_answer_marker` to the markers this data uses."
    for index, row in enumerate(rows):
        text = _text(row["input"], path, index, "input", markers_fix)
        try:
            question, answer = split_cft_input(text, config.cft_question_marker, config.cft_answer_marker)
        except ValueError as error:
            raise _record_error(path, index, "input", str(error), markers_fix) from None
        critique = _text(row["output"], path, index, "output", "Fix or drop the record.", allow_empty=False).strip()
        records.append(
            {
                "id": ids[index],
                "prompt": question,
                "initial_response": answer,
                "critique": critique,
                "refined_response": None,
                "verdict": parse_verdict(critique),
                "reference_answer": None,
            }
        )
    info = {"has_reference": False, "has_refined": False, "verdict_source": "parsed from the critiques"}
    return records, {**info, "used_columns": {config.id_field, "input", "output"}}


def _template_parts(template: str) -> list[str]:
    # The literal text between placeholders: ["### Question\n", "\n\n### Student's initial answer\n", ...].
    return re.split(r"\{(?:" + "|".join(PLACEHOLDERS) + r")\}", template)


def split_sections(text: str) -> tuple[str, str, str] | None:
    """
    Recovers the question, the initial answer and the critique from the labelled sections of an Alpaca `input`.

    Returns:
        `tuple[str, str, str]` or `None`: the three parts, or `None` when the text is not laid out in the sections.
    """
    head, after_question, after_initial, tail = _template_parts(SECTIONS_TEMPLATE)
    if not text.startswith(head) or not text.endswith(tail):
        return None
    body = text[len(head) : len(text) - len(tail)]
    first = body.find(after_question)
    if first < 0:
        return None
    second = body.find(after_initial, first + len(after_question))
    if second < 0:
        return None
    return body[:first], body[first + len(after_question) : second], body[second + len(after_initial) :]


def records_from_alpaca(rows: Sequence[Mapping[str, Any]], path: Path, config: BuildConfig) -> tuple[list[dict], dict]:
    """
    Reads back the Alpaca export of a CGD-family condition (`instruction`, `input` = labelled sections, `output` =
    refined answer).

    Returns:
        `tuple[list[dict], dict]`: records with ids from the row numbers, verdicts read from the critiques and no
        reference answer, and facts about the input.
    """
    fix = "Only the Alpaca files of the cgd, irrelevant_critique and generic_critique conditions (and ratio subsets) "
    fix += "hold a CGD record."
    _require_columns(rows, path, ("instruction", "input", "output"), fix)
    ids = _ids(rows, path, config.id_field)
    records = []
    for index, row in enumerate(rows):
        parts = split_sections(_text(row["input"], path, index, "input", fix))
        if parts is None:
            raise _record_error(path, index, "input", "the text is not laid out in the labelled CGD sections", fix)
        question, initial, critique = parts
        refined = _text(row["output"], path, index, "output", "Fix or drop the record.", allow_empty=False)
        records.append(
            {
                "id": ids[index],
                "prompt": question,
                "initial_response": initial,
                "critique": critique,
                "refined_response": refined,
                "verdict": parse_verdict(critique),
                "reference_answer": None,
            }
        )
    info = {"has_reference": False, "has_refined": True, "verdict_source": "parsed from the critiques"}
    return records, {**info, "used_columns": {config.id_field, "input", "output"}}


def load_records(config: BuildConfig) -> tuple[list[dict], dict]:
    """
    Reads and validates the input of a build.

    Returns:
        `tuple[list[dict], dict]`: the records (keys `id`, `prompt`, `initial_response`, `critique`,
        `refined_response`, `verdict`, `reference_answer`) and facts about the input (`path`, `has_reference`,
        `has_refined`, `verdict_source`, `ignored_columns`).
    """
    path = resolve_input(config.input)
    rows = read_rows(path)
    if not rows:
        raise ValueError(f"{path} holds no records.")
    reader = {"cgd": records_from_cgd, "cft": records_from_cft, "alpaca": records_from_alpaca}[config.input_format]
    records, info = reader(rows, path, config)
    info["path"] = str(path)
    # Columns such as `provenance` or CFT's fixed instruction are not part of any training set; say so.
    info["ignored_columns"] = sorted(set(rows[0]) - info.pop("used_columns"))
    if info["ignored_columns"]:
        logger.info(f"Columns of {path} not carried to the training sets: {info['ignored_columns']}.")
    return records, info


def read_questions(path: str | Path, column: str = "problem") -> tuple[list[str], str]:
    """
    Reads the questions of an evaluation file for decontamination.

    Args:
        path (`str` or `Path`): JSONL, JSON or Parquet file.
        column (`str`): Question column; when it is missing, `question` then `prompt` are tried.

    Returns:
        `tuple[list[str], str]`: the questions and the column they came from. A chat-message prompt contributes the
        text of its user turns.
    """
    rows = read_rows(path)
    if not rows:
        return [], column
    candidates = [column, *(name for name in QUESTION_FALLBACKS if name != column)]
    found = next((name for name in candidates if name in rows[0]), None)
    if found is None:
        raise ValueError(
            f"{path}: no question column among {candidates} (the columns are {sorted(rows[0])}). "
            "Set `decontaminate_field` to the column holding the questions."
        )
    questions = []
    for index, row in enumerate(rows):
        value = row[found]
        if isinstance(value, list):
            value = "\n".join(m["content"] for m in value if isinstance(m, Mapping) and m.get("role") == "user")
        if not isinstance(value, str):
            raise _record_error(path, index, found, f"expected the question as text, got {type(value).__name__}")
        questions.append(value)
    return questions, found


# --------------------------------------------------------------------------------------------------------------------
# Filters.
# --------------------------------------------------------------------------------------------------------------------


def decontaminate_records(
    records: Sequence[dict], files: Sequence[str], n: int = 13, column: str = "problem"
) -> tuple[list[dict], dict]:
    """
    Drops the records whose question overlaps a question of the evaluation files (see [`Decontaminator`]).

    Returns:
        `tuple[list[dict], dict]`: the kept records and a report (`ngram`, questions per file, `dropped`,
        `dropped_ids`, drops per file).
    """
    checker = Decontaminator(n)
    questions_per_file = {}
    for path in files:
        questions, found = read_questions(path, column)
        checker.add(questions, str(path))
        questions_per_file[str(path)] = {"questions": len(questions), "column": found}
    kept, dropped_ids, by_file = [], [], Counter()
    for record in records:
        source = checker.match(record["prompt"])
        if source is None:
            kept.append(record)
        else:
            dropped_ids.append(record["id"])
            by_file[source] += 1
    if dropped_ids:
        logger.warning(f"Decontamination dropped {len(dropped_ids)} records sharing a {n}-gram with evaluation data.")
    report = {
        "ngram": n,
        "files": questions_per_file,
        "dropped": len(dropped_ids),
        "dropped_by_file": {str(path): by_file[str(path)] for path in files},
        "dropped_ids": dropped_ids,
    }
    return kept, report


def filter_correct_records(
    records: Sequence[dict], grade: Callable[[str, str], bool | None] | None = None
) -> tuple[list[dict], dict]:
    """
    Keeps the records whose refined answer matches the reference answer.

    Args:
        records (`Sequence[dict]`): The records.
        grade (`Callable[[str, str], bool | None]`, *optional*): `grade(prediction, gold)`: `True` when they match,
            `False` when not, `None` when the gold cannot be parsed. Defaults to `cgd_trainer.grading.grade`
            (math-verify).

    Returns:
        `tuple[list[dict], dict]`: the kept records and the drops by reason (`no_reference`, `incorrect`,
        `unparsable_reference`).
    """
    if grade is None:
        # Imported here: math-verify is an optional dependency (the `eval` extra), needed only by this filter.
        try:
            from .grading import grade
        except ImportError as error:
            raise ImportError(
                "`filter_correct` grades refined answers with math-verify (`cgd_trainer.grading`); install it with "
                "`pip install 'cgd-trainer[eval]'`."
            ) from error
    kept, dropped = [], Counter()
    for record in records:
        reference = record["reference_answer"]
        if reference is None:
            dropped["no_reference"] += 1
            continue
        verdict = grade(record["refined_response"], reference)
        if verdict is True:
            kept.append(record)
        else:
            dropped["unparsable_reference" if verdict is None else "incorrect"] += 1
    drops = {reason: dropped[reason] for reason in ("no_reference", "incorrect", "unparsable_reference")}
    if sum(drops.values()):
        logger.warning(f"The correctness filter dropped {sum(drops.values())} records: {drops}.")
    return kept, {"kept": len(kept), "dropped": drops}


# --------------------------------------------------------------------------------------------------------------------
# Conditions.
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ConditionSet:
    """The records of one condition, what was dropped, and the texts its statistics are computed from."""

    name: str
    family: str  # "cgd" (CGD columns) or "chat" (prompt-completion)
    rows: list[dict] = field(default_factory=list)
    contexts: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    verdicts: list[str | None] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def cgd_context(record: Mapping[str, Any]) -> str:
    """The student's user turn for a CGD record, as `CGDTrainer` lays it out by default (`single_turn`)."""
    return fill_template(
        DEFAULT_TEMPLATE,
        instruction=DEFAULT_INSTRUCTION,
        question=record["prompt"],
        initial_response=record["initial_response"],
        critique=record["critique"],
    )


def _cgd_row(record: Mapping[str, Any], with_reference: bool, **overrides: Any) -> dict:
    row = {key: record[key] for key in ("id", "prompt", "initial_response", "critique", "refined_response", "verdict")}
    if with_reference:
        row["reference_answer"] = record["reference_answer"]
    row.update(overrides)
    return row


def _chat_row(record_id: str, user: str, target: str) -> dict:
    return {
        "id": record_id,
        "prompt": [{"role": "user", "content": user}],
        "completion": [{"role": "assistant", "content": target}],
    }


def _add_cgd(out: ConditionSet, record: Mapping[str, Any], with_reference: bool, **overrides: Any) -> None:
    row = _cgd_row(record, with_reference, **overrides)
    out.rows.append(row)
    out.contexts.append(cgd_context(row))
    out.targets.append(row["refined_response"])
    out.verdicts.append(record["verdict"])


def _add_chat(out: ConditionSet, record: Mapping[str, Any], user: str, target: str) -> None:
    out.rows.append(_chat_row(record["id"], user, target))
    out.contexts.append(user)
    out.targets.append(target)
    out.verdicts.append(record["verdict"])


def make_condition(name: str, records: Sequence[dict], config: BuildConfig, info: Mapping[str, Any]) -> ConditionSet:
    """
    Builds one condition from the (filtered) records. Every row keeps its record's id and, for the CGD-family
    conditions, its verdict: in `irrelevant_critique` that is still the verdict on the record's own initial answer,
    whatever the borrowed critique concludes.

    Args:
        name (`str`): One of `CONDITIONS`.
        records (`Sequence[dict]`): Records as returned by [`load_records`].
        config ([`BuildConfig`]): The build settings (seed, generic critique, instructions).
        info (`Mapping[str, Any]`): Facts about the input (`has_reference`, `has_refined`).

    Returns:
        [`ConditionSet`]: the rows to write, or `skipped` with the reason.
    """
    family = "cgd" if name in CGD_FAMILY else "chat"
    out = ConditionSet(name, family)
    with_reference = info["has_reference"]
    if name not in ("cft", "sft") and not info["has_refined"]:
        out.skipped = (
            f"the input has no refined answers (input_format '{config.input_format}'); generate them from "
            "imported.jsonl with the refine stage of `cgd generate`, then build again"
        )
        return out
    if name == "cgd":
        for record in records:
            _add_cgd(out, record, with_reference)
    elif name == "generic_critique":
        for record in records:
            _add_cgd(out, record, with_reference, critique=config.generic_critique)
    elif name == "irrelevant_critique":
        if len(records) < 2:
            out.skipped = f"a critique from another record needs at least 2 records, there are {len(records)}"
            return out
        critiques = [record["critique"] for record in records]
        sources = derangement(len(records), config.seed, groups=critiques)
        for record, source in zip(records, sources):
            _add_cgd(
                out,
                record,
                with_reference,
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
    elif name == "no_critique":
        for record in records:
            user = fill_template(
                NO_CRITIQUE_TEMPLATE,
                instruction=config.no_critique_instruction,
                question=record["prompt"],
                initial_response=record["initial_response"],
            )
            _add_chat(out, record, user, record["refined_response"])
    elif name == "distilled_sft":
        for record in records:
            _add_chat(out, record, record["prompt"], record["refined_response"])
    elif name == "sft":
        if not any(record["reference_answer"] is not None for record in records):
            out.skipped = f"no record has a reference answer (column '{config.reference_field}')"
            return out
        for record in records:
            if record["reference_answer"] is None:
                out.dropped["no_reference"] = out.dropped.get("no_reference", 0) + 1
                continue
            _add_chat(out, record, record["prompt"], record["reference_answer"])
    elif name == "cft":
        for record in records:
            if not record["critique"].strip():
                out.dropped["empty_critique"] = out.dropped.get("empty_critique", 0) + 1
                continue
            user = fill_template(
                CFT_TEMPLATE,
                instruction=config.cft_instruction,
                question=record["prompt"],
                initial_response=record["initial_response"],
            )
            _add_chat(out, record, user, record["critique"])
    else:
        raise ValueError(f"Unknown condition {name!r}; choose among {list(CONDITIONS)}.")
    for reason, count in out.dropped.items():
        logger.warning(f"{name}: dropped {count} records ({reason.replace('_', ' ')}).")
    return out


def make_ratio_subsets(
    records: Sequence[dict], config: BuildConfig, info: Mapping[str, Any]
) -> tuple[list[ConditionSet], dict]:
    """
    Builds the verdict-ratio subsets (CGD columns) of `config.ratios`.

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
    subsets = sample_ratio_subsets(verdicts, ratios, size, config.seed)
    sets = []
    for ratio, indices in subsets.items():
        out = ConditionSet(ratio_name(ratio), "cgd")
        for index in indices:
            _add_cgd(out, records[index], info["has_reference"])
        right, wrong = ratio_counts(size, ratio)
        out.extra = {"ratio": f"{ratio[0]}/{ratio[1]}", "right": right, "wrong": wrong}
        sets.append(out)
    return sets, {**report, "size": size}


# --------------------------------------------------------------------------------------------------------------------
# Writing, exports, statistics and the card.
# --------------------------------------------------------------------------------------------------------------------


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """
    Writes rows as UTF-8 JSON lines.

    `json` rather than `Dataset.to_json`, whose pandas writer escapes every `/` as `\\/`: the files stay readable and
    byte-stable, and `datasets.load_dataset("json", ...)` reads them all the same.
    """
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def alpaca_rows(out: ConditionSet) -> list[dict]:
    """
    The condition in LLaMA-Factory's Alpaca format: CGD-family rows get the CGD instruction and the labelled sections
    as `input`; prompt-completion rows get the user turn as `instruction` and an empty `input`.
    """
    if out.family == "cgd":
        return [
            {
                "instruction": DEFAULT_INSTRUCTION,
                "input": fill_template(
                    SECTIONS_TEMPLATE,
                    question=row["prompt"],
                    initial_response=row["initial_response"],
                    critique=row["critique"],
                ),
                "output": row["refined_response"],
            }
            for row in out.rows
        ]
    return [
        {"instruction": row["prompt"][0]["content"], "input": "", "output": row["completion"][0]["content"]}
        for row in out.rows
    ]


def messages_rows(out: ConditionSet) -> list[dict]:
    """The condition as `{"messages": [user, assistant]}` rows (CGD-family rows laid out as `CGDTrainer` does)."""
    return [
        {"messages": [{"role": "user", "content": context}, {"role": "assistant", "content": target}]}
        for context, target in zip(out.contexts, out.targets)
    ]


def export_sets(output_dir: Path, sets: Sequence[ConditionSet], formats: Sequence[str]) -> dict:
    """
    Writes `alpaca/<name>.json` with `alpaca/dataset_info.json`, and/or `messages/<name>.jsonl`, for each set.

    Returns:
        `dict`: the files written per format, and for Alpaca the rows whose sections would not parse back.
    """
    report: dict[str, Any] = {}
    if "alpaca" in formats:
        folder = output_dir / "alpaca"
        folder.mkdir(parents=True, exist_ok=True)
        dataset_info, ambiguous = {}, {}
        for out in sets:
            rows = alpaca_rows(out)
            with open(folder / f"{out.name}.json", "w", encoding="utf-8") as handle:
                json.dump(rows, handle, ensure_ascii=False, indent=2)
                handle.write("\n")
            dataset_info[out.name] = {"file_name": f"{out.name}.json", "columns": dict(ALPACA_COLUMNS)}
            if out.family == "cgd":
                # A question or draft that itself contains a section header cannot be split back unambiguously.
                bad = sum(
                    split_sections(row["input"]) != (source["prompt"], source["initial_response"], source["critique"])
                    for row, source in zip(rows, out.rows)
                )
                if bad:
                    ambiguous[out.name] = bad
                    logger.warning(f"alpaca/{out.name}.json: {bad} rows contain a section header in their text.")
        with open(folder / "dataset_info.json", "w", encoding="utf-8") as handle:
            json.dump(dataset_info, handle, ensure_ascii=False, indent=2)
            handle.write("\n")
        report["alpaca"] = {
            "files": [f"alpaca/{out.name}.json" for out in sets] + ["alpaca/dataset_info.json"],
            "not_round_trippable": ambiguous,
        }
    if "messages" in formats:
        folder = output_dir / "messages"
        folder.mkdir(parents=True, exist_ok=True)
        for out in sets:
            write_jsonl(folder / f"{out.name}.jsonl", messages_rows(out))
        report["messages"] = {"files": [f"messages/{out.name}.jsonl" for out in sets]}
    return report


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


def length_stats(texts: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """[`describe`] of the lengths of texts in characters and in whitespace-separated words."""
    return {"chars": describe([len(text) for text in texts]), "words": describe([len(text.split()) for text in texts])}


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
        "records": len(out.rows),
        "dropped": dict(out.dropped),
        "verdicts": verdict_counts(out.verdicts),
        "lengths": {"context": length_stats(out.contexts), "target": length_stats(out.targets)},
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
        if name in CONDITION_DESCRIPTIONS:
            context, target = CONDITION_DESCRIPTIONS[name]
        else:
            context, target = CONDITION_DESCRIPTIONS["cgd"]
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
    output_dir = Path(output_dir)
    written = [name for name, entry in summary["conditions"].items() if "skipped" not in entry]
    for name in written:
        dataset = load_dataset("json", data_files=str(output_dir / f"{name}.jsonl"), split="train")
        dataset.push_to_hub(repo_id, config_name=name, split="train")
    HfApi().upload_file(
        path_or_fileobj=str(output_dir / "summary.json"),
        path_in_repo="summary.json",
        repo_id=repo_id,
        repo_type="dataset",
    )
    card = render_card(summary, data_files={name: f"{name}/train-*" for name in written})
    DatasetCard(card).push_to_hub(repo_id, repo_type="dataset")


# --------------------------------------------------------------------------------------------------------------------
# The build.
# --------------------------------------------------------------------------------------------------------------------


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

    sets = [make_condition(name, records, config, info) for name in config.conditions]
    ratio_sets, summary["ratios"] = make_ratio_subsets(records, config, info)
    sets += ratio_sets
    written = []
    for out in sets:
        if out.skipped:
            logger.warning(f"{out.name}: not built, {out.skipped}.")
            continue
        write_jsonl(output_dir / f"{out.name}.jsonl", out.rows)
        written.append(out)
    if not info["has_refined"]:
        # CFT imports: the records, ready for the refine stage of the generation pipeline.
        columns = ("id", "prompt", "initial_response", "critique", "verdict")
        write_jsonl(output_dir / "imported.jsonl", ({key: r[key] for key in columns} for r in records))
        summary["imported"] = {"file": "imported.jsonl", "records": len(records)}
    summary["conditions"] = {out.name: condition_summary(out) for out in sets}
    summary["exports"] = export_sets(output_dir, written, config.export) if config.export else {}
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


def make_parser(prog: str | None = "cgd build"):
    """The `cgd build` parser: [`BuildConfig`] flags and `--config build.yaml`."""
    return TrlParser((BuildConfig,), prog=prog)


def cli_main(argv: list[str] | None = None) -> dict[str, Any]:
    """`cgd build [--config build.yaml] [flags]`: builds the training sets and prints a short table."""
    argv = list(sys.argv[1:] if argv is None else argv)
    (config,) = make_parser().parse_args_and_config(argv)
    summary = build(config)
    print(format_table(summary))
    return summary
