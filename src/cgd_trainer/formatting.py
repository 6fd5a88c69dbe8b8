"""Default wording, templates and record validation for CGD records.

The layouts follow the paper's structure (an instruction plus labelled question / initial answer / critique sections);
the wording is this library's own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

LAYOUTS = ("single_turn", "multi_turn", "plain")
CHAT_LAYOUTS = ("single_turn", "multi_turn")
TRUNCATION_POLICIES = ("context", "drop", "none")
PLACEHOLDERS = ("instruction", "question", "initial_response", "critique")
MESSAGE_ROLES = ("system", "user", "assistant", "tool")

DEFAULT_INSTRUCTION = (
    "Below are a question, a student's first attempt at it, and a teacher's critique of that attempt. Write a "
    "complete and correct answer to the question: keep what the attempt got right, fix every mistake the critique "
    "points out, and spell out any step that was missing."
)

DEFAULT_TEMPLATE = (
    "{instruction}\n\n"
    "### Question\n{question}\n\n"
    "### Student's initial answer\n{initial_response}\n\n"
    "### Teacher's critique\n{critique}"
)

DEFAULT_CRITIQUE_TEMPLATE = "A teacher reviewed your answer:\n\n{critique}\n\n{instruction}"

# Appended to the plain-text context so that a base model sees where its answer starts.
PLAIN_ANSWER_HEADER = "\n\n### Improved answer\n"

_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


def check_template(template: str | None, name: str, required: Iterable[str]) -> None:
    """
    Checks that a user template holds the placeholders it needs.

    Args:
        template (`str` or `None`):
            The template; `None` means the default and is always valid.
        name (`str`):
            Name of the setting, used in the error message.
        required (`Iterable[str]`):
            Placeholders that must appear.

    Raises:
        `ValueError`: when a required placeholder is missing.
    """
    if template is None:
        return
    if not isinstance(template, str):
        raise ValueError(f"`{name}` must be a string, got {type(template).__name__}.")
    found = set(_PLACEHOLDER_RE.findall(template))
    missing = [key for key in required if key not in found]
    if missing:
        raise ValueError(
            f"`{name}` must contain the placeholders {['{' + key + '}' for key in missing]}; got {template!r}."
        )


def fill_template(template: str, **values: str) -> str:
    """
    Replaces the `{instruction}`, `{question}`, `{initial_response}` and `{critique}` placeholders in one pass.

    Unlike `str.format`, braces elsewhere in the template (e.g. `\\boxed{}`) and placeholders that appear inside the
    inserted values are left alone.

    Args:
        template (`str`): The template.
        **values (`str`): The value of each placeholder.

    Returns:
        `str`: The filled template.
    """
    return _PLACEHOLDER_RE.sub(lambda match: values.get(match[1], match[0]), template)


def record_error(index: int | None, dataset_name: str, field: str, problem: str, fix: str) -> ValueError:
    """Builds the error raised for a bad record, naming the record, the field and the fix."""
    where = f"record {index}" if index is not None else "a record"
    return ValueError(f"CGD {where} of the {dataset_name} dataset, field '{field}': {problem}. {fix}")


def validate_messages(messages: Any, index: int | None, dataset_name: str, field: str) -> None:
    """
    Checks a prompt given as chat messages: a non-empty list of `{role, content}` dicts whose last turn is the user's.

    Raises:
        `ValueError`: naming the record, the field and the message at fault.
    """
    fix = "Give the prompt as a string or as a list of {'role': ..., 'content': str} messages ending with a user turn."
    if len(messages) == 0:
        raise record_error(index, dataset_name, field, "the message list is empty", fix)
    for position, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise record_error(
                index, dataset_name, field, f"message {position} is a {type(message).__name__}, not a dict", fix
            )
        role, content = message.get("role"), message.get("content")
        if role not in MESSAGE_ROLES:
            raise record_error(
                index,
                dataset_name,
                field,
                f"message {position} has role {role!r}, expected one of {MESSAGE_ROLES}",
                fix,
            )
        if not isinstance(content, str):
            raise record_error(
                index, dataset_name, field, f"message {position} has content of type {type(content).__name__}", fix
            )
    if messages[-1].get("role") != "user":
        raise record_error(
            index, dataset_name, field, f"the last message has role {messages[-1].get('role')!r}, not 'user'", fix
        )
    if not messages[-1]["content"].strip():
        raise record_error(index, dataset_name, field, "the last user message is empty", fix)


def validate_record(
    example: Mapping[str, Any], index: int | None, dataset_name: str, fields: Mapping[str, str]
) -> None:
    """
    Checks one CGD record before it is formatted.

    Args:
        example (`Mapping[str, Any]`):
            The raw record.
        index (`int` or `None`):
            Its position in the dataset, used in the error message.
        dataset_name (`str`):
            Name of the dataset (`train`, `eval`, ...), used in the error message.
        fields (`Mapping[str, str]`):
            Column name of each role: keys `prompt`, `initial_response`, `critique`, `refined_response`.

    Raises:
        `ValueError`: naming the record, the field and the fix.
    """
    for role, column in fields.items():
        if column not in example:
            raise record_error(
                index,
                dataset_name,
                column,
                "the column is missing",
                f"Add it, or point `{role}_field` in CGDConfig at the column that holds the {role.replace('_', ' ')}.",
            )
        value = example[column]
        if value is None:
            raise record_error(index, dataset_name, column, "the value is None", "Fill it in or drop the record.")
        if role == "prompt" and isinstance(value, list):
            validate_messages(value, index, dataset_name, column)
            continue
        if not isinstance(value, str):
            expected = "a string or a list of chat messages" if role == "prompt" else "a string"
            raise record_error(
                index,
                dataset_name,
                column,
                f"expected {expected}, got {type(value).__name__}",
                "Convert the column to text before training.",
            )
        if role in ("prompt", "refined_response") and not value.strip():
            raise record_error(
                index,
                dataset_name,
                column,
                "the text is empty",
                "Every record needs a question and a refined answer; drop the record or regenerate it.",
            )
