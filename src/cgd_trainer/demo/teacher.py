"""The offline student and teacher of the demo task, so that `probe → critique → refine → train` runs with no network.

The demo questions are the arithmetic word problems of `cgd_trainer.demo.problems`. The teacher solves a question from
its text, reads the student's answer (any text: a real model's output included), finds the mistake and writes the
critique and the refined answer; the student writes a draft that is right or holds one typical mistake, chosen from a
hash of the question so that reruns give the same draft. Questions outside the demo task fail with a clear error (and
land in the pipeline's failure file), as a real teacher's failures would.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator, Sequence

from ..backends.base import Backend, Reply, Request
from .problems import FIRST_STEPS, critique_of, draft_answer, pick_mistake, refined_answer, solve_question

_NUMBER_RE = re.compile(r"-?\d+")
# A first step as written: "a × b = p" (or "a + b = p" for the toy task's addition).
_FIRST_STEP_RE = re.compile(r"(\d+)\s*[×x*·+]\s*(\d+)\s*=\s*(-?\d+)")


def critique_answer(problem: dict, answer: str) -> str:
    """
    Critiques any answer to a demo problem: compares its final number with the solution and names the mistake.

    Args:
        problem (`dict`): The worked problem from `solve_question`.
        answer (`str`): The student's answer.

    Returns:
        `str`: The critique, ending with `Conclusion: right` or `Conclusion: wrong`.
    """
    a, b, product = problem["product"]
    op, _, right = problem["last"]
    times, step = FIRST_STEPS[problem["first"]]
    numbers = [int(n) for n in _NUMBER_RE.findall(answer)]
    if not numbers:
        return (
            "The answer never reaches a final number, so it does not answer the question. The work needs the "
            f"{step} {a} {times} {b} first and then the {right}.\nConclusion: wrong"
        )
    final = numbers[-1]
    if final == problem["answer"]:
        return critique_of(problem, "none")
    for left_factor, right_factor, stated in _FIRST_STEP_RE.findall(answer):
        if {int(left_factor), int(right_factor)} == {a, b} and int(stated) != product:
            return critique_of(problem, "product", slip=int(stated), final=final)
    flipped = product + right if op == "subtract" else product - right
    if final == flipped:
        return critique_of(problem, "operation")
    if final == product:
        return critique_of(problem, "skip")
    return (
        f"The final answer {final} is not right. The question needs {a} {times} {b} = {product} and then the {right} "
        f"{'taken away' if op == 'subtract' else 'added'}, which the answer does not do correctly.\nConclusion: wrong"
    )


class DemoBackend(Backend):
    """
    A programmatic backend for the demo task. It answers each request from `request.meta` — the `stage` (`probe`,
    `critique` or `refine`) and the raw fields (`question`, `initial_response`) — not from the rendered prompt.

    Args:
        model (`str`): A name recorded in provenance (`cgd-demo`).
    """

    name = "demo"

    def __init__(self, model: str = "cgd-demo", prompt_format: str = "auto", **_: object) -> None:
        super().__init__(model, prompt_format)

    def _answer(self, request: Request) -> str:
        stage = request.meta.get("stage")
        question = request.meta.get("question", "")
        problem = solve_question(question)
        if problem is None:
            raise ValueError(f"the demo backend only knows the demo task's questions, not {question[:80]!r}")
        if stage == "probe":
            seed = int(hashlib.sha256(question.encode("utf-8")).hexdigest()[:16], 16)
            return draft_answer(problem, pick_mistake(random.Random(seed)))
        if stage == "critique":
            return critique_answer(problem, request.meta.get("initial_response", ""))
        if stage == "refine":
            return refined_answer(problem)
        raise ValueError(f"the demo backend answers the probe, critique and refine stages, not {stage!r}")

    def generate(self, requests: Sequence[Request]) -> Iterator[Reply]:
        for request in requests:
            try:
                text = self._answer(request)
            except ValueError as error:
                yield Reply(request, error=f"ValueError: {error}")
                continue
            yield Reply(request, texts=[text] * request.sampling.n)
