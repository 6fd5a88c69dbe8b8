"""CGD records: validation with errors that name the record, the field and the fix; verdicts; thinking sections.

Shared by every stage: the trainer validates records before formatting them, `cgd generate` and `cgd build` parse the
critiques' verdict lines, and both the generation pipeline and evaluation strip reasoning models' thinking.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MESSAGE_ROLES = ("system", "user", "assistant", "tool")

# A whole line: optional markdown around `Conclusion:` and the verdict, a trailing period, CFT's `[END]` marker.
_VERDICT_RE = re.compile(
    r"^[\s>#*_`-]*conclusion[\s*_`]*[:：][\s*_`]*(right|wrong)\b[\s*_`.!]*(?:\[end\])?[\s*_`.!]*$", re.IGNORECASE
)


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


def strip_thinking(text: str, open_tag: str = "<think>", close_tag: str = "</think>") -> str:
    """
    Removes reasoning models' thinking sections.

    Everything up to the last closing tag goes (templates such as Qwen3's put the opening tag in the prompt, so the
    output may hold only the closing one); an opening tag that is never closed means the output stopped while
    thinking, and nothing usable is left.

    Returns:
        `str`: The answer without thinking, stripped of surrounding whitespace; empty if none is left.
    """
    if close_tag and close_tag in text:
        text = text.rsplit(close_tag, 1)[1]
    elif open_tag and open_tag in text:
        return ""  # cut off while thinking: whatever came before the tag is not an answer either
    return text.strip()


def parse_verdict(text: str | None) -> str | None:
    """
    The verdict of a critique: `"right"` or `"wrong"` from its last `Conclusion: right|wrong` line, else `None`.

    Case is ignored; markdown emphasis (`**Conclusion:** wrong`), a trailing period and CFT's `[END]` marker are
    tolerated. A line where other words follow the verdict (`Conclusion: right, but ...`) does not count.
    """
    if not text:
        return None
    for line in reversed(text.splitlines()):
        match = _VERDICT_RE.match(line.strip())
        if match:
            return match.group(1).lower()
    return None
