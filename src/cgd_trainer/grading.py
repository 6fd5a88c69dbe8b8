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

from .errors import MissingDependency

try:
    from math_verify import LatexExtractionConfig, parse, verify
except ImportError as error:  # an optional dependency: say how to get it
    raise MissingDependency(
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


# --- the answer extraction of the math-evaluation-harness protocol ---------------------------------------------------
#
# The `harness` preset reads answers the way the math-evaluation-harness does, in the copy published with Qwen2.5-Math
# (QwenLM/Qwen2.5-Math, `evaluation/`): `math_eval.py` trims the output and cuts it at its stop words, `run_execute`
# calls `parser.extract_answer` and then cleans its result once more with `parser.strip_string`. The code below is
# ours; it reproduces that behaviour, quirks included (a word such as "as" is removed as a unit, "two" becomes `2`,
# spaces are dropped), because the preset exists to read the same answer the published numbers were computed from.
# Only the grading differs: the cleaned answer goes to math-verify, not to the harness's own equality checker.

# The stop words `math_eval.py` cuts every output at, whatever the prompt type (it adds others for some types).
_HARNESS_STOP_WORDS = ("</s>", "<|im_end|>", "<|endoftext|>")
# The step tag of process-reward-model data ("ки"), deleted before anything is read.
_STEP_TAG = "\u043a\u0438"
# The last-number rule's numbers: an optional sign, digits, an optional point, digits (commas are deleted first).
_HARNESS_NUMBER = re.compile(r"-?\d*\.?\d+")

# The harness's unit words (from MathQA), deleted from answers except on Minerva-Math and carp_en. The harness reads
# each word as a regular expression (`.` matches any character) between a start or non-word character and an end or
# non-word character. Order matters (a deletion can make or break the next match): these words, then the same words
# with an `s` added, the whole list twice.
_UNIT_WORDS = tuple(
    (
        "east|degree|mph|kmph|ft|m sqaure| m east|sq m|deg|mile|q .|monkey|prime|ratio|profit of rs|rd|o|gm|p . m|lb|"
        "tile|per|dm|lt|gain|ab|way|west|a .|b .|c .|d .|e .|f .|g .|h .|t|a|h|no change|men|soldier|pie|bc|excess|"
        "st|inches|noon|percent|by|gal|kmh|c|acre|rise|a . m|th|π r 2|sq|mark|l|toy|coin|sq . m|gallon|° f|profit|"
        "minw|yr|women|feet|am|pm|hr|cu cm|square|v â € ™|are|rupee|rounds|cubic|cc|mtr|s|ohm|number|kmph|day|hour|"
        "minute|min|second|man|woman|sec|cube|mt|sq inch|mp|∏ cm ³|hectare|more|sec|unit|cu . m|cm 2|rs .|rs|kg|g|"
        "month|km|m|cm|mm|apple|liter|loss|yard|pure|year|increase|decrease|d|less|Surface|litre|pi sq m|s .|metre|"
        "meter|inch"
    ).split("|")
)
_UNIT_PATTERNS = tuple(
    re.compile(r"(^|\W)" + word + r"($|\W)") for word in (*_UNIT_WORDS, *(word + "s" for word in _UNIT_WORDS))
)
_TRAILING_TEXT = re.compile(r"\\text\{.*?\}$")

# Number words, read the way the `word2number` package (1.1, which the harness calls) reads them.
_NUMBER_WORDS = {
    **{word: value for value, word in enumerate("zero one two three four five six seven eight nine ten".split())},
    **{word: 11 + i for i, word in enumerate("eleven twelve thirteen fourteen fifteen sixteen".split())},
    **{"seventeen": 17, "eighteen": 18, "nineteen": 19},
    **{word: 20 + 10 * i for i, word in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())},
    **{"hundred": 100, "thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000},
}
_DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _number_group(words: list[str]) -> int:
    """The value of the words before a scale word, as word2number computes it (which is not always arithmetic)."""
    values = [_NUMBER_WORDS[word] for word in words]
    if len(values) == 4:
        return values[0] * values[1] + values[2] + values[3]
    if len(values) == 3:
        return values[0] * values[1] + values[2]
    if len(values) == 2:
        return values[0] * values[1] if 100 in values else values[0] + values[1]
    return values[0]  # an empty group raises IndexError: the text is then kept as it is


def _words_to_number(text: str) -> int | float:
    """
    The number that `word2number.w2n.word_to_num` reads in `text`: a string of digits, or the number words found
    among the other words (all other words are ignored). Raises `ValueError` or `IndexError` where it raises.
    """
    text = text.replace("-", " ").lower()
    if text.isdigit():
        return int(text)
    words = [word for word in text.split() if word in _NUMBER_WORDS or word == "point"]
    if not words:
        raise ValueError("no number words")
    if any(words.count(word) > 1 for word in ("thousand", "million", "billion", "point")):
        raise ValueError("a scale word or `point` twice")
    decimals: list[str] = []
    if "point" in words:
        point = words.index("point")
        words, decimals = words[:point], words[point + 1 :]
    billion, million, thousand = (words.index(w) if w in words else -1 for w in ("billion", "million", "thousand"))
    if (thousand > -1 and (thousand < million or thousand < billion)) or (million > -1 and million < billion):
        raise ValueError("scale words out of order")
    total: int | float = 0
    if len(words) == 1:
        total += _NUMBER_WORDS[words[0]]
    elif words:
        start = 0
        for index, scale in ((billion, 1_000_000_000), (million, 1_000_000), (thousand, 1_000)):
            if index > -1:
                total += _number_group(words[start:index]) * scale
                start = index + 1
        # The words after the first of thousand, million, billion (in that order) that is not the last word; all the
        # words when there is no scale word; nothing otherwise.
        for index in (thousand, million, billion):
            if index > -1 and index != len(words) - 1:
                total += _number_group(words[index + 1 :])
                break
        else:
            if thousand == million == billion == -1:
                total += _number_group(words)
    if decimals:  # digit words after `point`; any other word makes the decimal part 0
        if set(decimals) <= set(_DIGIT_WORDS):
            total += float("0." + "".join(str(_NUMBER_WORDS[word]) for word in decimals))
    return total


def _spelled_number(text: str) -> str:
    """The harness's `convert_word_number`: the whole text becomes the number its number words spell, if any."""
    try:
        return str(_words_to_number(text))
    except (ValueError, IndexError):
        return text


def _braced_fractions(text: str) -> str:
    r"""The harness's `_fix_fracs`: `\frac12` becomes `\frac{1}{2}`, `\frac1{2}` becomes `\frac{1}{2}`."""
    head, *parts = text.split("\\frac")
    pieces = [head]
    for part in parts:
        if part.startswith("{"):
            pieces.append("\\frac" + part)
        elif len(part) < 2:
            return text  # a `\frac` with less than two characters after it: nothing is changed
        elif part[1] == "{":
            pieces.append("\\frac{" + part[0] + "}" + part[1:])
        else:
            pieces.append("\\frac{" + part[0] + "}{" + part[1] + "}" + part[2:])
    return "".join(pieces)


def _slash_fraction(text: str) -> str:
    r"""The harness's `_fix_a_slash_b`: `3/4` (plain integers, or anything with `sqrt`) becomes `\frac{3}{4}`."""
    parts = text.split("/")
    if len(parts) != 2:
        return text
    try:
        numerator, denominator = [part if "sqrt" in part else str(int(part)) for part in parts]
    except ValueError:
        return text
    if f"{numerator}/{denominator}" != text:  # `03/4`, `+3/4` or ` 3/4` are not rewritten
        return text
    return "\\frac{" + numerator + "}{" + denominator + "}"


def harness_clean(answer: str, keep_units: bool = False) -> str:
    r"""
    Normalises an extracted answer as the harness's `strip_string` does.

    In order: line breaks and trailing full stops go; `\!`, `\left`, `\right` go; arrays and `bmatrix` become
    `pmatrix`; `\tfrac`/`\dfrac` become `\frac`, `\neq`/`\leq`/`\geq` become `\ne`/`\le`/`\ge`, `\{`/`\}` become
    braces; a trailing `\text{...}` goes (unless nothing would be left); the unit words go (unless `keep_units`);
    degree marks, dollar signs and `\(`/`\)` go; a text with number words becomes their number; `\text{...}` keeps its
    content; `x=`, `y=`, `z=` (and `\in`, `\to`) go; `\emptyset` becomes `{}`; percent signs go; `.5` becomes `0.5`;
    `inf` becomes `\infty`; every `and` and `\mathbf` goes, and `\mbox{...}`; `j` becomes `i` when there is no `i`;
    `2.0` becomes `2`; a left-hand side of at most two characters goes; `\sqrt2` becomes `\sqrt{2}`; spaces go;
    `\frac12` becomes `\frac{1}{2}` and `3/4` becomes `\frac{3}{4}`.

    Args:
        answer (`str`): The extracted answer.
        keep_units (`bool`): Keep the unit words (the harness does on Minerva-Math and carp_en).

    Returns:
        `str`: The cleaned answer (possibly empty).
    """
    text = str(answer).strip().replace("\n", "").rstrip(".").replace("\\!", "")
    text = re.sub(r"\\begin\{array\}\{.*?\}", r"\\begin{pmatrix}", text)
    text = re.sub(r"\\end\{array\}", r"\\end{pmatrix}", text).replace("bmatrix", "pmatrix")
    for old, new in (("tfrac", "frac"), ("dfrac", "frac"), ("\\neq", "\\ne"), ("\\leq", "\\le"), ("\\geq", "\\ge")):
        text = text.replace(old, new)
    for old, new in (("\\left", ""), ("\\right", ""), ("\\{", "{"), ("\\}", "}")):
        text = text.replace(old, new)
    without_text = _TRAILING_TEXT.sub("", text).strip()
    if without_text:
        text = without_text
    if not keep_units:
        for _ in range(2):
            for pattern in _UNIT_PATTERNS:
                text = pattern.sub(r"\1\2", text) or text  # a removal that would leave nothing is not made
    for mark in ("^{\\circ}", "^\\circ", "\\$", "$", "\\(", "\\)"):
        text = text.replace(mark, "")
    text = _spelled_number(text)
    text = re.sub(r"\\text\{(.*?)\}", r"\1", text)
    for prefix in ("x=", "y=", "z=", "x\\in", "y\\in", "z\\in", "x\\to", "y\\to", "z\\to"):
        text = text.replace(prefix, "")
    text = text.replace("\\emptyset", "{}").replace("(-\\infty,\\infty)", "\\mathbb{R}")
    # `\%` is deleted twice (a deletion can join a backslash and a percent sign), then every `%`.
    text = text.replace("\\%", "").replace("\\%", "").replace("%", "")
    text = text.replace(" .", " 0.").replace("{.", "{0.")
    text = text.replace("infinity", "\\infty")
    if "\\infty" not in text:
        text = text.replace("inf", "\\infty")
    text = text.replace("+\\inity", "\\infty").replace("and", "").replace("\\mathbf", "")
    text = re.sub(r"\\mbox\{.*?\}", "", text)
    if "j" in text and "i" not in text:
        text = text.replace("j", "i")
    text = re.sub(r"(\d+)\.0*([^\d])", r"\1\2", text)
    text = re.sub(r"(\d+)\.0*$", r"\1", text)
    if not text:
        return text
    if text[0] == ".":
        text = "0" + text
    sides = text.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        text = sides[1]
    text = re.sub(r"\\sqrt(\w+)", r"\\sqrt{\1}", text).replace(" ", "")
    return _slash_fraction(_braced_fractions(text))


def _harness_rule(text: str) -> tuple[str, str]:
    """The harness's `extract_answer` rules, first match wins: `(raw answer, rule)`."""
    if "final answer is $" in text and "$. I hope" in text:
        # Minerva's "The final answer is $X$. I hope it is correct.": the first such phrase.
        return text.split("final answer is $", 1)[1].split("$. I hope", 1)[0].strip(), "final_answer"
    if "boxed" in text:
        # After the last "boxed": a braced group (read to the end of the text if it is never closed), else the text up
        # to the next `$`.
        after = text.rsplit("boxed", 1)[1]
        if not after.startswith("{"):
            return after.split("$")[0].strip(), "boxed"
        depth = 0
        for position, char in enumerate(after):
            depth += {"{": 1, "}": -1}.get(char, 0)
            if depth == 0:
                return after[1:position], "boxed"
        return after[1:], "boxed"
    if "he answer is" in text:  # "The answer is" / "the answer is", case-sensitive: everything after the last one
        return text.split("he answer is")[-1].strip(), "answer_is"
    if "final answer is" in text:
        return text.split("final answer is")[-1].strip(), "final_answer_is"
    if "答案是" in text:
        return text.split("答案是")[1].strip().split("\n\n")[0].strip(), "answer_is_zh"
    numbers = _HARNESS_NUMBER.findall(text.replace(",", ""))
    return (numbers[-1] if numbers else ""), "last_number"


def extract_answer_with_fallbacks(text: str | None, keep_units: bool = False) -> tuple[str | None, str | None]:
    r"""
    Reads the answer of a model output the way the math-evaluation-harness does (Qwen2.5-Math's copy: `math_eval.py`,
    `run_execute` and `parser.extract_answer`), for its open-answer data sets (its multiple-choice handling, for
    mmlu_stem, sat_math, aqua and references A-E, is not reproduced).

    The output is trimmed and cut at the first `</s>`, `<|im_end|>` or `<|endoftext|>`; "ки" is deleted. Then the first
    rule that applies gives the raw answer, all rules reading the text as written (case-sensitive):

    1. `final_answer`: the text contains both "final answer is $" and "$. I hope" (Minerva's "The final answer is $X$.
       I hope it is correct."): what follows the first "final answer is $", up to the first "$. I hope";
    2. `boxed`: the text contains "boxed": what follows its last occurrence, a braced group (nested braces allowed; an
       unclosed one runs to the end of the text) or, without a brace, the text up to the next `$`;
    3. `answer_is`: the text contains "he answer is": everything after the last one, to the end of the output;
    4. `final_answer_is`: the text contains "final answer is": everything after the last one;
    5. `answer_is_zh`: the text contains "答案是": the first paragraph after the first one;
    6. `last_number`: the last match of `-?\d*\.?\d+` once every comma is deleted.

    Line breaks (with the spaces after them) are deleted, a leading `:` and a trailing `.` and `/` are dropped, and
    the answer is cleaned by [`harness_clean`] twice (once in `extract_answer`, once in `run_execute`).

    Args:
        text (`str` or `None`): The model output.
        keep_units (`bool`): Keep unit words in the answer (the harness does on Minerva-Math and carp_en).

    Returns:
        `tuple[str | None, str | None]`: The cleaned answer and the rule that gave it; `(None, None)` when the answer
        is empty.

    Example:

    ```python
    >>> extract_answer_with_fallbacks("He pays 3 * 6 = 18 dollars. The answer is 18 dollars.")
    ('18dollars', 'answer_is')
    >>> extract_answer_with_fallbacks("The answer is 18 cm.")
    ('18', 'answer_is')
    ```
    """
    if not text:
        return None, None
    text = text.strip()
    for stop in _HARNESS_STOP_WORDS:
        if stop in text:
            text = text.split(stop)[0].strip()
    if not text or text == "error":  # `run_execute` reads nothing from an empty output or from "error"
        return None, None
    raw, rule = _harness_rule(text.replace(_STEP_TAG, ""))
    raw = re.sub(r"\n\s*", "", raw)
    raw = raw[1:] if raw.startswith(":") else raw
    raw = raw[:-1] if raw.endswith(".") else raw
    raw = raw[:-1] if raw.endswith("/") else raw
    answer = harness_clean(harness_clean(raw, keep_units), keep_units)
    return (answer, rule) if answer else (None, None)


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
