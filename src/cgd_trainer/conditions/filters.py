"""The filters of `cgd build`: decontamination against evaluation questions, and the optional correctness filter."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..errors import MissingDependency
from .readers import read_questions

logger = logging.getLogger(__name__)

_NOT_A_WORD = re.compile(r"[\W_]+")


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
            from ..grading import grade
        except ImportError as error:
            raise MissingDependency(
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
