"""All the wording of the library and the one engine that fills it in.

Three kinds of text are filled from the same placeholders (`{instruction}`, `{question}`, `{initial_response}`,
`{critique}`) by [`fill`]:

- the student's training context (`CGDTrainer`'s layouts) and the contexts of the ablation conditions (`cgd build`)
  and of `cgd diagnose`, which must be the contexts those conditions train on;
- the prompts of the generation stages (`cgd generate`: probe, critique, refine);
- the evaluation prompts (`cgd eval`).

The structure follows the paper (an instruction plus labelled question / initial answer / critique sections); the
wording is this library's own. Every template can be replaced from the configs.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

PLACEHOLDERS = ("instruction", "question", "initial_response", "critique")

# `{{` and `}}` are literal braces (the `str.format` way); any other brace (LaTeX such as `\boxed{}`) is left alone.
_FILL_RE = re.compile(r"\{\{|\}\}|\{(" + "|".join(PLACEHOLDERS) + r")\}")
_PLACEHOLDER_RE = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


def fill(template: str, **values: str) -> str:
    """
    Replaces the placeholders of a template in one pass.

    Unlike `str.format`, braces other than the four placeholders (e.g. `\\boxed{}`) need no escaping, and placeholders
    that appear inside the inserted values are never touched. `{{` and `}}` become single braces.

    Args:
        template (`str`): The template.
        **values (`str`): The value of each placeholder the template may use.

    Returns:
        `str`: The filled template.

    Raises:
        `KeyError`: when the template uses a placeholder that is not given (checked at configuration time by
            [`check_template`]).
    """

    def replace(match: re.Match) -> str:
        key = match.group(1)
        if key is None:  # a doubled brace of the template itself
            return match.group(0)[0]
        if key not in values:
            raise KeyError(f"The template uses {{{key}}}, which is not available here (available: {sorted(values)}).")
        return values[key]

    return _FILL_RE.sub(replace, template)


def check_template(
    template: str | None, name: str, required: Iterable[str], allowed: Iterable[str] | None = None
) -> None:
    """
    Checks that a user template holds the placeholders it needs, and only those it can be given.

    Args:
        template (`str` or `None`): The template; `None` means the default and is always valid.
        name (`str`): Name of the setting, used in the error message.
        required (`Iterable[str]`): Placeholders that must appear.
        allowed (`Iterable[str]`, *optional*): Placeholders that may appear; defaults to `required`.

    Raises:
        `ValueError`: naming the setting and the missing or unavailable placeholders.
    """
    if template is None:
        return
    if not isinstance(template, str):
        raise ValueError(f"`{name}` must be a string, got {type(template).__name__}.")
    required = tuple(required)
    allowed = set(required if allowed is None else allowed) | set(required)
    found = set(_PLACEHOLDER_RE.findall(template.replace("{{", "").replace("}}", "")))
    missing = [key for key in required if key not in found]
    if missing:
        raise ValueError(
            f"`{name}` must contain the placeholders {['{' + key + '}' for key in missing]}; got {template!r}."
        )
    extra = sorted(found - allowed)
    if extra:
        raise ValueError(
            f"`{name}` uses {', '.join('{' + e + '}' for e in extra)}, which it is not given; it may use "
            f"{', '.join('{' + a + '}' for a in sorted(allowed))} (write {{{{ and }}}} for literal braces)."
        )


def template_id(*texts: str | None) -> str:
    """A short, stable identifier of a prompt: the first 10 hex digits of the SHA-256 of its parts."""
    digest = hashlib.sha256("\x1f".join(text or "" for text in texts).encode("utf-8")).hexdigest()
    return digest[:10]


# ---------------------------------------------------------------------------------------------------------------------
# Training: the student's CGD context (CGDTrainer, CritiqueCollator).
# ---------------------------------------------------------------------------------------------------------------------

LAYOUTS = ("single_turn", "multi_turn", "plain")
CHAT_LAYOUTS = ("single_turn", "multi_turn")
TRUNCATION_POLICIES = ("context", "drop", "none")

DEFAULT_INSTRUCTION = (
    "Below are a question, a student's first attempt at it, and a teacher's critique of that attempt. Write a "
    "complete and correct answer to the question: keep what the attempt got right, fix every mistake the critique "
    "points out, and spell out any step that was missing."
)

# The labelled sections of a CGD context, without the instruction (also the Alpaca `input` of `cgd build`).
SECTIONS_TEMPLATE = (
    "### Question\n{question}\n\n"
    "### Student's initial answer\n{initial_response}\n\n"
    "### Teacher's critique\n{critique}"
)
DEFAULT_TEMPLATE = "{instruction}\n\n" + SECTIONS_TEMPLATE

DEFAULT_CRITIQUE_TEMPLATE = "A teacher reviewed your answer:\n\n{critique}\n\n{instruction}"

# Appended to the plain-text context so that a base model sees where its answer starts.
PLAIN_ANSWER_HEADER = "\n\n### Improved answer\n"

# ---------------------------------------------------------------------------------------------------------------------
# Conditions (`cgd build`) and their contexts in `cgd diagnose`.
# ---------------------------------------------------------------------------------------------------------------------

GENERIC_CRITIQUE = (
    "Go over the answer once more. Check that each step follows from the one before it, that every calculation is "
    "carried out correctly, and that no step needed to reach the result has been left out. Then state the final "
    "result clearly."
)

# `no_critique`: the question and the draft only. `cgd diagnose` scores its "question + initial answer" context with
# exactly this wording, so that what it measures is the condition that is trained.
NO_CRITIQUE_INSTRUCTION = (
    "Below are a question and a student's first attempt at it. Write a complete and correct answer to the question: "
    "keep what the attempt got right, fix any mistake in it, and spell out any step that was missing."
)
NO_CRITIQUE_TEMPLATE = "{instruction}\n\n### Question\n{question}\n\n### Student's initial answer\n{initial_response}"
# The last turn of the `multi_turn` layout without a critique: the draft is the model's own previous turn.
NO_CRITIQUE_FOLLOW_UP = (
    "Write a complete and correct answer to the question: keep what your attempt got right, fix any mistake in it, "
    "and spell out any step that was missing."
)

CFT_INSTRUCTION = (
    "Below are a question and a student's answer to it. Review the answer as a teacher would: check every step, "
    "point out each mistake, missing step or unclear explanation, and say how it should be fixed. End with a final "
    "line that reads exactly `Conclusion: right` if the student's final answer is correct, or exactly "
    "`Conclusion: wrong` if it is not."
)
CFT_TEMPLATE = "{instruction}\n\n### Question\n{question}\n\n### Student's answer\n{initial_response}"

# `cgd diagnose`'s question-only context.
QUESTION_INSTRUCTION = (
    "Below is a question. Write a complete and correct answer to it, spelling out every step of the reasoning."
)
QUESTION_TEMPLATE = "{instruction}\n\n### Question\n{question}"

# ---------------------------------------------------------------------------------------------------------------------
# Generation stages (`cgd generate`): the student sees the bare question; the teacher critiques, then refines.
# ---------------------------------------------------------------------------------------------------------------------

# (The stages themselves, with what each reads and writes, are `cgd_trainer.pipeline.stages`.)

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


def completion_stops(template: str) -> tuple[str, ...]:
    """
    Default stop strings of a completion prompt: a new line that starts the way the template starts (`\nQuestion:`
    for `Question: {question}\n\nAnswer:`), which is how a base model begins the next question after its answer.

    Returns:
        `tuple[str, ...]`: One stop string, or none when the template starts with a placeholder.
    """
    head = _PLACEHOLDER_RE.split(template, maxsplit=1)[0].strip()
    return (f"\n{head}",) if head else ()


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation (`cgd eval`).
# ---------------------------------------------------------------------------------------------------------------------

# The system instruction of the protocol (the paper's idea, this library's wording).
EVAL_SYSTEM_PROMPT = (
    "Work through the problem one step at a time, showing your reasoning. Finish with the final answer written "
    "inside \\boxed{}."
)
# The prompt for a base model without a chat template.
EVAL_COMPLETION_TEMPLATE = "{instruction}\n\nProblem:\n{question}\n\nSolution:\n"
