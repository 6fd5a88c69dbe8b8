"""Reading the input of `cgd build`: generated CGD records, CFT rows or this command's own Alpaca export.

Every reader turns rows into the same records (`id`, `prompt`, `initial_response`, `critique`, `refined_response`,
`verdict`, `reference_answer`) and reports facts about the input; errors name the file, the record and the field.
Files are read by `cgd_trainer.sources.read_rows`, without schema inference: a column that first appears on the last
row is read like any other.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..record_format import record_columns
from ..records import parse_verdict
from ..sources import read_rows, resolve_file
from ..templates import PLACEHOLDERS, SECTIONS_TEMPLATE
from .config import BuildConfig

logger = logging.getLogger(__name__)

# Tried, in this order, after `decontaminate_field` when an evaluation file lacks it.
QUESTION_FALLBACKS = ("question", "prompt")


def _record_error(path: str | Path, index: int, field_name: str, problem: str, fix: str = "") -> ValueError:
    return ValueError(f"{path}, record {index}, field '{field_name}': {problem}. {fix}".rstrip())


def resolve_input(name: str) -> Path:
    """The file behind `input`: a local file, or a built-in dataset such as `builtin:demo` (`sources.resolve_file`)."""
    path = resolve_file(name)
    if path is None:
        raise ValueError(f"The input {name!r} is not a file (nor a built-in dataset such as 'builtin:demo').")
    return path


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
    fields = record_columns(config)
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


# `reader(rows, path, config) -> (records, info)`, one per `input_format`.
Reader = Callable[[Sequence[Mapping[str, Any]], Path, BuildConfig], tuple[list[dict], dict]]
READERS: dict[str, Reader] = {"cgd": records_from_cgd, "cft": records_from_cft, "alpaca": records_from_alpaca}


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
    records, info = READERS[config.input_format](rows, path, config)
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
