r"""Answer extraction and grading for maths benchmarks, built on `math-verify`.

The protocol of the paper: the model is asked to put its final answer in `\boxed{}`; the answer is the content of the
*last* box of the output, and it is graded against the reference answer by a numeric and symbolic equality check.

This module follows the pattern of TRL's `accuracy_reward`:

- the prediction is read with a boxed-first `LatexExtractionConfig` (and nothing else: an output without a box is
  wrong, whatever numbers it mentions);
- the reference answer is parsed separately, and a reference that cannot be parsed makes the item *ungradable*
  (`grade` returns `None`) instead of silently wrong;
- `math-verify` enforces its time limits with `signal.alarm`, which only works on the main thread, so off the main
  thread (thread pools, servers) the limits are switched off, as TRL does.

What the checker accepts (through `math-verify` 0.9): `\dfrac`/`\tfrac`/`\frac12`, `0.5` for `\frac{1}{2}`, signed
numbers, sets in any order (`\{3,1,2\}` or `1, 2, 3`), intervals with their brackets (`[2, 5)` is not `(2, 5)`),
percentages (`50\%` equals `50` and `0.5`), units and degrees dropped (`5\text{ cm}` equals `5`), thousands separators
(`1,000`), `x = 2` for `2`, multiple-choice letters (`\text{(C)}` equals `C`).
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

try:
    from math_verify import LatexExtractionConfig, parse, verify
except ImportError as error:  # an optional dependency: say how to get it
    raise ImportError(
        "`cgd_trainer.grading` needs math-verify (>= 0.8): `pip install 'cgd-trainer[eval]'`."
    ) from error

logger = logging.getLogger(__name__)

# Seconds allowed for one parse or one comparison, when running on the main thread.
PARSING_TIMEOUT = 5
VERIFY_TIMEOUT = 5

# `\boxed{...}`, `\boxed {...}` and `\fbox{...}`: the opening of a box whose content is read by brace matching.
_BOX_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
# `\boxed 5`: the brace-less form some models write for a single token.
_BOX_BARE = re.compile(r"\\boxed[ \t]+([^\s${}]+)")


def _timeouts() -> tuple[int | None, int | None]:
    """The parse and verify time limits: signal-based limits only work on the main thread."""
    if threading.current_thread() is threading.main_thread():
        return PARSING_TIMEOUT, VERIFY_TIMEOUT
    return None, None


def _quiet_math_verify() -> None:
    # Without limits math-verify warns once per process that the caller must handle timeouts; we accept that.
    for name in ("math_verify.parser", "math_verify.grader"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """Every closed box of `text` as `(start, end, content)`, nested braces included; unclosed boxes are skipped."""
    boxes = []
    for match in _BOX_OPEN.finditer(text):
        depth, start = 1, match.end()
        for position in range(start, len(text)):
            char = text[position]
            if char == "{" and text[position - 1] != "\\":
                depth += 1
            elif char == "}" and text[position - 1] != "\\":
                depth -= 1
                if depth == 0:
                    boxes.append((match.start(), position + 1, text[start:position]))
                    break
    # A sentence may end right after a brace-less answer: its full stop is not part of it.
    boxes.extend((m.start(), m.end(), m.group(1).rstrip(".,;:")) for m in _BOX_BARE.finditer(text))
    return sorted(boxes)


def extract_answer(text: str | None) -> str | None:
    r"""
    Reads the final answer of a model output: the content of its last `\boxed{}` (or `\fbox{}`).

    Braces inside the box may nest (`\boxed{\frac{1}{2}}` gives `\frac{1}{2}`). A box left unclosed (an output cut
    off by the token limit) does not count. A box nested in another box counts as part of the outer one.

    Args:
        text (`str` or `None`): The model output.

    Returns:
        `str` or `None`: The content of the last box, stripped; `None` when the output has no closed box.
    """
    if not text:
        return None
    boxes = _boxes(text)
    if not boxes:
        return None
    # The last box that is not inside another one: sorted by start, an inner box starts after its outer box.
    outer: list[str] = []
    outer_end = -1
    for start, end, content in boxes:
        if start >= outer_end:
            outer.append(content)
            outer_end = end
    return outer[-1].strip()


def _clean_gold(gold: Any) -> str:
    if gold is None:
        return ""
    if isinstance(gold, float) and gold.is_integer():
        gold = int(gold)
    text = str(gold).strip()
    if "\\boxed" in text or "\\fbox" in text:
        # A worked solution as reference (MATH's `solution` field): its last box is the answer.
        text = extract_answer(text) or ""
    # `$...$` and `\(...\)` around a reference are markup, not part of the answer.
    if len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text.strip("$").strip()
    if text.startswith("\\(") and text.endswith("\\)"):
        text = text[2:-2].strip()
    return text


def parse_gold(gold: Any) -> list | None:
    r"""
    Parses a reference answer.

    The reference is read as LaTeX (`\frac{1}{2}`, `[2, 5)`, `50\%`, `\text{(C)}`); a worked solution with a box is
    reduced to its last box first; numbers (AIME, GSM8K) may be given as `int`. A reference `math-verify` can only
    keep as a raw string (no mathematical reading) counts as unparsable.

    Args:
        gold (`str`, `int` or `float`): The reference answer.

    Returns:
        `list` or `None`: `math-verify`'s parsed form, or `None` when the reference cannot be parsed.
    """
    text = _clean_gold(gold)
    if not text:
        return None
    parsing_timeout, _ = _timeouts()
    if parsing_timeout is None:
        _quiet_math_verify()
    parsed = parse(
        "\\boxed{" + text + "}",
        extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
        fallback_mode="no_fallback",
        parsing_timeout=parsing_timeout,
    )
    return parsed or None


def parse_prediction(answer: str) -> list:
    """
    Parses an extracted answer (the content of a box) with the boxed-first LaTeX reading of TRL's `accuracy_reward`.

    Args:
        answer (`str`): The content of the box.

    Returns:
        `list`: `math-verify`'s parsed form; empty when nothing could be read.
    """
    parsing_timeout, _ = _timeouts()
    if parsing_timeout is None:
        _quiet_math_verify()
    return parse(
        "\\boxed{" + answer + "}",
        extraction_config=[LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False)],
        extraction_mode="first_match",
        parsing_timeout=parsing_timeout,
    )


def grade_parsed(prediction: str | None, gold_parsed: list) -> bool:
    """
    Grades a model output against an already parsed reference (see [`parse_gold`]), to parse each reference once
    when it has many samples.

    Args:
        prediction (`str` or `None`): The whole model output (`None` for a failed generation).
        gold_parsed (`list`): The parsed reference.

    Returns:
        `bool`: Whether the last box of the output equals the reference; `False` without a box.
    """
    return verify_answer(extract_answer(prediction), gold_parsed)


def grade(prediction: str | None, gold: Any) -> bool | None:
    r"""
    Grades a model output against a reference answer.

    Args:
        prediction (`str` or `None`): The model output; its last `\boxed{}` is the answer.
        gold (`str`, `int` or `float`): The reference answer.

    Returns:
        `bool` or `None`: `True` when the answer equals the reference, `False` when it differs or the output has no
        box, `None` when the reference itself cannot be parsed (the item should be excluded and counted).

    Example:

    ```python
    >>> grade(r"so the answer is \boxed{\dfrac{1}{2}}", r"\frac{1}{2}")
    True
    >>> grade("the answer is 7", "7")  # no box
    False
    ```
    """
    gold_parsed = parse_gold(gold)
    if gold_parsed is None:
        return None
    return grade_parsed(prediction, gold_parsed)


# --- the fallback extraction of the math-evaluation-harness protocol -------------------------------------------------
#
# The harness used by Qwen2.5-Math, CFT and CGD reads an answer even when the output has no box, in this order: a
# Minerva-style "final answer is $...$", the last box, "the answer is ...", and the last number of the output. The
# functions below implement that order (our code); the extracted answer is then graded with math-verify like a box.

# "The final answer is $42$. I hope it is correct." (Minerva's few-shot answer format).
_FINAL_ANSWER_DOLLARS = re.compile(r"final answer is\s*\$\$?(.+?)\$", re.IGNORECASE | re.DOTALL)
# "The answer is 42", "the final answer is: 42", "So my answer is 42".
_ANSWER_IS = re.compile(r"\banswer\s+is\b", re.IGNORECASE)
# A math span at the start of an answer phrase: `$...$`, `$$...$$`, `\(...\)`, `\[...\]`.
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
# A number followed only by words, e.g. `18 dollars`: the words are units.
_NUMBER_THEN_WORDS = re.compile(r"(-?\d[\d,]*(?:\.\d+)?)\s+[A-Za-z][A-Za-z\s]*")
# Numbers; thousands separators are removed first.
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# What an answer phrase ends with, outside brackets: a full stop, comma or semicolon before a space, or a line break.
_PHRASE_END = re.compile(r"[.,;](?=\s|$)|\n")


def _answer_phrase(rest: str) -> str | None:
    """The answer written after "the answer is": a math span, or the text up to the end of the sentence."""
    rest = rest.lstrip().lstrip(":").strip()
    span = _MATH_SPAN.match(rest)
    if span:
        return next(group for group in span.groups() if group is not None).strip() or None
    depth, end = 0, len(rest)
    for position, char in enumerate(rest):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth = max(0, depth - 1)
        elif depth == 0 and _PHRASE_END.match(rest, position):
            end = position
            break
    phrase = rest[:end].strip().strip("$").strip()
    units = _NUMBER_THEN_WORDS.fullmatch(phrase)
    if units:
        phrase = units.group(1)
    return phrase or None


def extract_answer_with_fallbacks(text: str | None) -> tuple[str | None, str | None]:
    r"""
    Reads the final answer of a model output the way the math-evaluation-harness protocol does, falling back when
    there is no box.

    The order: a "final answer is $...$" pattern, then the last closed `\boxed{}` (as [`extract_answer`]), then the
    phrase after the last "answer is" (a math span, or the text up to the end of its sentence; a number followed by
    words such as `18 dollars` keeps the number), then the last number of the output (thousands separators removed).

    Args:
        text (`str` or `None`): The model output.

    Returns:
        `tuple[str | None, str | None]`: The answer and the rule that found it (`final_answer`, `boxed`, `answer_is`,
        `last_number`); `(None, None)` when nothing was found.
    """
    if not text:
        return None, None
    finals = _FINAL_ANSWER_DOLLARS.findall(text)
    if finals and finals[-1].strip():
        return finals[-1].strip(), "final_answer"
    boxed = extract_answer(text)
    if boxed:
        return boxed, "boxed"
    phrases = list(_ANSWER_IS.finditer(text))
    if phrases:
        answer = _answer_phrase(text[phrases[-1].end() :])
        if answer:
            return answer, "answer_is"
    numbers = _NUMBER.findall(_THOUSANDS.sub("", text))
    if numbers:
        return numbers[-1], "last_number"
    return None, None


def verify_answer(answer: str | None, gold_parsed: list) -> bool:
    """
    Grades an already extracted answer against an already parsed reference (see [`parse_gold`]) with math-verify.

    Args:
        answer (`str` or `None`): The extracted answer (the content of a box, or what a fallback read).
        gold_parsed (`list`): The parsed reference.

    Returns:
        `bool`: Whether the answer equals the reference; `False` for no answer or one math-verify cannot read.
    """
    if not answer:
        return False
    parsed = parse_prediction(answer)
    if not parsed:
        return False
    _, verify_timeout = _timeouts()
    try:
        # The order matters: math-verify compares asymmetrically (the reference first).
        return bool(verify(gold_parsed, parsed, timeout_seconds=verify_timeout))
    except Exception as error:  # noqa: BLE001 - a checker crash on one odd answer must not end an evaluation
        logger.debug("math-verify failed on %r: %s", answer, error)
        return False
