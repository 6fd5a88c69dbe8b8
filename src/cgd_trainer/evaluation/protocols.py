r"""The protocol presets of `cgd eval`: how the prompt is worded, where outputs stop and how answers are read.

Two presets, chosen with `protocol` (see `docs/evaluation.md`):

- `strict` (the default): this library's instruction, the content of the last closed `\boxed{}` graded with
  math-verify, nothing read from an output without a box.
- `harness`: the protocol of the math-evaluation-harness behind the published Qwen2.5-Math, CFT and CGD numbers: its
  one-line step-by-step/boxed instruction, answers read and cleaned exactly as its `extract_answer` does (Minerva's
  "final answer is $...$. I hope", else the last "boxed", else everything after "the answer is", else the last
  number; then its `strip_string`, see `cgd_trainer.grading.extract_answer_with_fallbacks`). The extracted answer is
  graded with math-verify, not with the harness's own equality checker.

Under both, a completion prompt (a model without a chat template) stops where the model starts a new problem, so that
a base model's made-up next problem, and its box, never reach the grading.
Every sample is graded under every preset (`correct_strict`, `correct_harness` in `samples.jsonl`); `correct` is the
chosen preset's. This module is imported by the config, so math-verify is only imported when something is graded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..templates import EVAL_SYSTEM_PROMPT

# The harnesses' standard instruction (their `*-math-cot` prompt types), kept verbatim: scores depend on the exact
# string.
HARNESS_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


# The data sets on which the harness keeps unit words in answers (its `STRIP_EXCEPTIONS`), by our benchmark names
# (aliases are resolved first): Minerva-Math, and carp_en (not in our registry, matched by name).
HARNESS_KEEPS_UNITS = frozenset({"minerva", "carp_en"})


def _boxed_only(text: str | None, benchmark: str | None = None) -> tuple[str | None, str | None]:
    from ..grading import extract_answer

    answer = extract_answer(text)
    return answer, ("boxed" if answer else None)


def _with_fallbacks(text: str | None, benchmark: str | None = None) -> tuple[str | None, str | None]:
    from ..grading import extract_answer_with_fallbacks

    return extract_answer_with_fallbacks(text, keep_units=harness_keeps_units(benchmark))


def harness_keeps_units(benchmark: str | None) -> bool:
    """
    Whether the harness keeps unit words in the answers of `benchmark` (Minerva-Math: `minerva` and its aliases).

    Args:
        benchmark (`str` or `None`): The benchmark's name (`None`: unknown, units are removed).
    """
    if not benchmark:
        return False
    from .benchmarks import ALIASES

    name = benchmark.lower()
    return ALIASES.get(name, name) in HARNESS_KEEPS_UNITS


@dataclass(frozen=True)
class Protocol:
    """
    One protocol preset.

    Args:
        name (`str`): The value of `protocol`.
        instruction (`str`): The instruction used when `system_prompt` is not set.
        extract (`Callable`): Reads `(answer, rule)` from an output and the benchmark's name (`(None, None)` when
            nothing is found).
        answers (`str`): How answers are read and graded, for the report.
        comparable_with (`str`): Which published numbers this preset's scores can be compared with.
    """

    name: str
    instruction: str
    extract: Callable[[str | None, str | None], tuple[str | None, str | None]]
    answers: str
    comparable_with: str


PROTOCOLS: dict[str, Protocol] = {
    "strict": Protocol(
        name="strict",
        instruction=EVAL_SYSTEM_PROMPT,
        extract=_boxed_only,
        answers="the last closed `\\boxed{}` of the output, graded with math-verify; an output without a box is wrong",
        comparable_with="other `cgd eval` runs with `protocol: strict`; lower than the published numbers on models "
        "that do not always box their answer",
    ),
    "harness": Protocol(
        name="harness",
        instruction=HARNESS_INSTRUCTION,
        extract=_with_fallbacks,
        answers='read as the math-evaluation-harness reads them: "final answer is $...$. I hope", else the last '
        '"boxed", else everything after "the answer is", else the last number, cleaned by its `strip_string`; '
        "graded with math-verify",
        comparable_with="the published Qwen2.5-Math, CFT and CGD tables, made with the math-evaluation-harness; the "
        "checker differs: math-verify here, the harness's own equality checker there",
    ),
}


def get_protocol(name: str) -> Protocol:
    """
    The preset named `name`.

    Raises:
        `ValueError`: for an unknown name, listing the presets.
    """
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"`protocol` must be one of {', '.join(PROTOCOLS)}, got {name!r}.") from None


def new_problem_stops(completion_template: str) -> tuple[str, ...]:
    r"""
    The stop strings of a completion prompt under a preset that stops at a new problem: a new line starting with the
    last line written before `{question}` (`\nProblem:` for `...\n\nProblem:\n{question}\n\nSolution:\n`), which is
    how a base model starts the next problem after its answer.

    Args:
        completion_template (`str`): The template, with `{question}`.

    Returns:
        `tuple[str, ...]`: One stop string, or none when nothing but a placeholder or blank space comes before
        `{question}` on its line.
    """
    head = completion_template.split("{question}", 1)[0]
    head = re.split(r"\{[a-z_]+\}", head)[-1]  # the literal text right before the question
    lines = [line.strip() for line in head.splitlines() if line.strip()]
    return (f"\n{lines[-1]}",) if lines else ()


def grade_sample(text: str | None, gold_parsed: list, protocol: str, benchmark: str | None = None) -> dict[str, Any]:
    """
    Grades one output under every preset.

    Args:
        text (`str` or `None`): The output (`None` for a failed generation: wrong under every preset).
        gold_parsed (`list`): The parsed reference (`cgd_trainer.grading.parse_gold`).
        protocol (`str`): The chosen preset, whose reading fills `extracted`, `extracted_by` and `correct`.
        benchmark (`str`, *optional*): The benchmark's name: under `harness`, Minerva-Math's answers keep their
            units, as in the harness (see [`harness_keeps_units`]); without it units are removed.

    Returns:
        `dict`: `extracted`, `extracted_by` (the rule that found it), `correct`, and `correct_<preset>` for every
        preset.
    """
    from ..grading import verify_answer

    fields: dict[str, Any] = {}
    verdicts: dict[str | None, bool] = {}  # the same answer read by two presets is verified once
    for name, preset in PROTOCOLS.items():
        answer, rule = preset.extract(text, benchmark) if text is not None else (None, None)
        if answer not in verdicts:
            verdicts[answer] = verify_answer(answer, gold_parsed)
        fields[f"correct_{name}"] = verdicts[answer]
        if name == protocol:
            fields.update(extracted=answer, extracted_by=rule, correct=verdicts[answer])
    return {key: fields[key] for key in ("extracted", "extracted_by", "correct", *(f"correct_{n}" for n in PROTOCOLS))}
