"""The scores of `cgd eval`: the unbiased pass@k estimator, per-benchmark accuracy, and format-drift metrics."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..grading import extract_answer
from .protocols import PROTOCOLS


def pass_at_k(n: int, c: int, k: int) -> float:
    """
    The unbiased pass@k estimator (Chen et al., 2021): the probability that at least one of `k` samples drawn without
    replacement from `n`, of which `c` are correct, is correct: `1 - C(n - c, k) / C(n, k)`.

    Args:
        n (`int`): Samples drawn for the problem.
        c (`int`): Correct samples among them.
        k (`int`): Budget, `1 <= k <= n`.

    Returns:
        `float`: The estimate, computed exactly with integers.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got n={n}, c={c}.")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}.")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def score_samples(rows: Sequence[Mapping[str, Any]], ks: Sequence[int] = (1,)) -> dict[str, Any]:
    """
    Accuracy metrics of one model on one benchmark from its graded samples.

    Args:
        rows (`Sequence[Mapping]`): One per sample, with `id`, `sample` (index), `correct` and optionally `error`
            and `correct_<preset>` (the grade under each protocol preset).
        ks (`Sequence[int]`): The k of pass@k; values above the smallest number of samples of a problem are skipped.

    Returns:
        `dict`: `problems`, `samples_per_problem`, `accuracy` (mean over problems of the fraction of correct samples:
        greedy pass@1 when there is one sample), `pass@k` (`{k: value}`, averaged over problems),
        `sample_accuracy_mean` and `sample_accuracy_sd` (accuracy of sample index j over all problems, then mean and
        sample standard deviation across the j), `correct_samples`, `failed_samples`, `failed_problems`, and
        `accuracy_by_protocol` (`{preset: accuracy}` for the presets every row has a `correct_<preset>` for).
    """
    by_problem: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_problem.setdefault(str(row["id"]), []).append(row)
    result: dict[str, Any] = {
        "problems": len(by_problem),
        "samples_per_problem": 0,
        "accuracy": None,
        "pass@k": {},
        "sample_accuracy_mean": None,
        "sample_accuracy_sd": None,
        "correct_samples": sum(bool(row["correct"]) for row in rows),
        "failed_samples": sum(bool(row.get("error")) for row in rows),
        "failed_problems": sum(any(r.get("error") for r in group) for group in by_problem.values()),
        "accuracy_by_protocol": {},
    }
    if not by_problem:
        return result
    for name in PROTOCOLS:  # the same accuracy (mean over problems of the correct fraction) under each preset
        field = f"correct_{name}"
        if all(field in row for row in rows):
            result["accuracy_by_protocol"][name] = statistics.fmean(
                sum(bool(r[field]) for r in group) / len(group) for group in by_problem.values()
            )
    counts = [(len(group), sum(bool(r["correct"]) for r in group)) for group in by_problem.values()]
    n_min = min(n for n, _ in counts)
    result["samples_per_problem"] = n_min if n_min == max(n for n, _ in counts) else [n_min, max(n for n, _ in counts)]
    result["accuracy"] = statistics.fmean(c / n for n, c in counts)
    result["pass@k"] = {
        str(k): statistics.fmean(pass_at_k(n, c, k) for n, c in counts) for k in sorted(set(ks)) if k <= n_min
    }
    # Accuracy of the j-th sample of every problem, for j < n: its spread is the run-to-run noise.
    per_index = []
    for j in range(n_min):
        hits = [
            bool(next((r["correct"] for r in group if int(r.get("sample", 0)) == j), False))
            for group in by_problem.values()
        ]
        per_index.append(statistics.fmean(hits))
    result["sample_accuracy_mean"] = statistics.fmean(per_index)
    result["sample_accuracy_sd"] = statistics.stdev(per_index) if len(per_index) > 1 else 0.0
    return result


# Detectors of critique-style writing in a solver's output. A CGD student only *reads* critiques during training; a
# model that starts *writing* them (as CFT-trained models do) has drifted from the answer format. Each detector is a
# regular expression searched in the output; an output is critique-style when any of them matches.
CRITIQUE_DETECTORS: dict[str, re.Pattern[str]] = {
    # A verdict line as the teachers write them: "Conclusion: right", "**Conclusion:** wrong", "Conclusion: incorrect".
    "verdict_line": re.compile(
        r"^[\s>*#_-]*conclusion[\s*_]*:[\s*_]*(?:right|wrong|correct|incorrect)\b", re.IGNORECASE | re.MULTILINE
    ),
    # A line that opens a critique section: "Critique", "## Critique:", "**Critique of the solution**".
    "critique_header": re.compile(r"^[\s>*#_-]*critique\b", re.IGNORECASE | re.MULTILINE),
    # Talk about somebody else's work: "the student's answer", "the student's solution", "the student's work".
    "student_reference": re.compile(
        r"\bthe student(?:'s|’s)? (?:answer|solution|response|work|attempt|reasoning)\b", re.IGNORECASE
    ),
    # A judgement of an answer: "the answer is correct", "the student's solution is incorrect", "this answer is wrong".
    "answer_judgement": re.compile(
        r"\b(?:the|this|their|student(?:'s|’s)?) (?:final )?(?:answer|solution) is "
        r"(?:correct|incorrect|right|wrong)\b",
        re.IGNORECASE,
    ),
}


def critique_signals(text: str) -> dict[str, bool]:
    """Which critique detectors (see `CRITIQUE_DETECTORS`) match an output."""
    return {name: bool(pattern.search(text)) for name, pattern in CRITIQUE_DETECTORS.items()}


def drift_metrics(outputs: Iterable[str | None]) -> dict[str, Any]:
    r"""
    Format-drift metrics of a set of outputs. Failed generations (`None`) are left out and counted.

    Args:
        outputs (`Iterable[str | None]`): Model outputs.

    Returns:
        `dict`: `outputs` (texts measured), `failed`, `boxed_rate` (outputs with a closed `\boxed{}`),
        `critique_rate` (outputs matching any critique detector), `critique_rates` (per detector), `mean_chars`
        and `mean_words` (whitespace-separated words).
    """
    texts, failed = [], 0
    for text in outputs:
        if text is None:
            failed += 1
        else:
            texts.append(text)
    result: dict[str, Any] = {"outputs": len(texts), "failed": failed}
    if not texts:
        result.update(boxed_rate=None, critique_rate=None, critique_rates={}, mean_chars=None, mean_words=None)
        return result
    signals = [critique_signals(text) for text in texts]
    result["boxed_rate"] = statistics.fmean(extract_answer(text) is not None for text in texts)
    result["critique_rate"] = statistics.fmean(any(s.values()) for s in signals)
    result["critique_rates"] = {name: statistics.fmean(s[name] for s in signals) for name in CRITIQUE_DETECTORS}
    result["mean_chars"] = statistics.fmean(len(text) for text in texts)
    result["mean_words"] = statistics.fmean(len(text.split()) for text in texts)
    return result
