"""Default prompts of the generation stages, thinking-section removal and verdict parsing.

The structure follows the paper (the student sees the bare question; the teacher critiques from a system instruction
and labelled sections, then refines from the question, the draft and the critique); the wording is this library's own.
Every template can be replaced from the pipeline config. Templates are identified by a short content hash, recorded
in each generated record, so a change of wording is visible in the data.
"""

from __future__ import annotations

import hashlib
import re

# Stage 1, base models without a chat template: a plain completion prompt.
PROBE_COMPLETION_TEMPLATE = "Question: {question}\n\nAnswer:"

CRITIQUE_SYSTEM = (
    "You are an expert in mathematics and science who reviews students' work. Read the question and the student's "
    "answer below. Check every step: point out wrong statements or calculations, steps that are missing, and "
    "explanations that are unclear. Be specific about where each problem is and why it is a problem. Finish with a "
    "final line that is exactly `Conclusion: right` if the student's final answer is correct, or exactly "
    "`Conclusion: wrong` if it is not."
)
CRITIQUE_TEMPLATE = "### Question\n{question}\n\n### Student's answer\n{initial_response}"

REFINE_SYSTEM = (
    "You are an expert in mathematics and science. You are given a question, a student's answer to it and a critique "
    "of that answer. Write an improved answer to the question: complete, correct and clearly explained. Keep the "
    "parts of the student's answer that were right, correct every mistake the critique identifies, and add any step "
    "that was missing. Write the answer itself, not a comment on the student's answer, and put the final result in "
    "\\boxed{}."
)
REFINE_TEMPLATE = "### Question\n{question}\n\n### Student's answer\n{initial_response}\n\n### Critique\n{critique}"

STAGES = ("probe", "critique", "refine")
STAGE_FIELDS = {
    "probe": ("question",),
    "critique": ("question", "initial_response"),
    "refine": ("question", "initial_response", "critique"),
}

_FIELD_RE = re.compile(r"\{(question|initial_response|critique)\}")
_FILL_RE = re.compile(r"\{\{|\}\}|\{(question|initial_response|critique)\}")
# A whole line: optional markdown around `Conclusion:` and the verdict, a trailing period, CFT's `[END]` marker.
_VERDICT_RE = re.compile(
    r"^[\s>#*_`-]*conclusion[\s*_`]*[:：][\s*_`]*(right|wrong)\b[\s*_`.!]*(?:\[end\])?[\s*_`.!]*$", re.IGNORECASE
)


def template_id(*texts: str | None) -> str:
    """A short, stable identifier of a prompt: the first 10 hex digits of the SHA-256 of its parts."""
    digest = hashlib.sha256("\x1f".join(text or "" for text in texts).encode("utf-8")).hexdigest()
    return digest[:10]


def fill(template: str, **values: str) -> str:
    """
    Replaces `{question}`, `{initial_response}` and `{critique}` in one pass.

    Other braces (LaTeX such as `\\boxed{}`) are left alone, so templates need no escaping; `{{` and `}}` in the
    template become single braces for users who write them the `str.format` way. The inserted texts are never changed.
    """

    def replace(match: re.Match) -> str:
        key = match.group(1)
        if key is None:  # a doubled brace of the template itself; the inserted texts are never touched
            return match.group(0)[0]
        if key not in values:
            raise KeyError(f"The template uses {{{key}}}, which this stage does not provide.")
        return values[key]

    return _FILL_RE.sub(replace, template)


def check_placeholders(template: str, name: str, required: tuple[str, ...]) -> None:
    """Raises a `ValueError` naming the setting when a template misses a placeholder its stage needs."""
    found = set(_FIELD_RE.findall(template))
    missing = [key for key in required if key not in found]
    if missing:
        raise ValueError(f"`{name}` must contain {', '.join('{' + m + '}' for m in missing)}; got {template!r}.")


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
