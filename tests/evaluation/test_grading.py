"""Answer extraction and math-verify grading: the tricky forms, each with a right and a wrong prediction."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from cgd_trainer.grading import extract_answer, grade, parse_gold

# (form, gold, right prediction, wrong prediction)
CASES = [
    ("fraction", r"\frac{3}{4}", r"So the share is \boxed{\frac{3}{4}}.", r"So the share is \boxed{\frac{4}{3}}."),
    ("dfrac", r"\frac{3}{4}", r"\boxed{\dfrac{3}{4}}", r"\boxed{\dfrac{3}{5}}"),
    ("dfrac gold, decimal answer", r"\dfrac{1}{2}", r"\boxed{0.5}", r"\boxed{0.25}"),
    ("negative", "-5", r"Hence $x = -5$, i.e. \boxed{-5}", r"Hence \boxed{5}"),
    ("negative fraction", r"-\frac{1}{2}", r"\boxed{-\dfrac{1}{2}}", r"\boxed{\frac{1}{2}}"),
    ("set, any order", r"\{-1, 2\}", r"\boxed{\{2, -1\}}", r"\boxed{\{-1, 3\}}"),
    ("set without braces", r"\{-1, 2\}", r"\boxed{-1, 2}", r"\boxed{-1}"),
    ("interval", "[1, 5)", r"\boxed{[1,5)}", r"\boxed{(1, 5)}"),
    ("interval to infinity", r"(-\infty, 3]", r"\boxed{(-\infty,3]}", r"\boxed{(-\infty, 3)}"),
    ("percentage", r"25\%", r"\boxed{25\%}", r"\boxed{30\%}"),
    ("percentage without sign", r"25\%", r"\boxed{25}", r"\boxed{2.5}"),
    ("units in gold", r"20\text{ cm}", r"\boxed{20}", r"\boxed{21}"),
    ("units in answer", "20", r"\boxed{20 \text{ cm}}", r"\boxed{22\ \mathrm{cm}}"),
    ("radical", r"3\sqrt{2}", r"\boxed{\sqrt{18}}", r"\boxed{2\sqrt{3}}"),
    ("multiple choice", r"\text{(C)}", r"\boxed{C}", r"\boxed{\text{(D)}}"),
    ("thousands separator", "1,000", r"\boxed{1000}", r"\boxed{100}"),
    (
        "text around the box",
        "144",
        "We multiply 12 by 12.\n\nThe final answer is \\boxed{144}. I hope it is correct, see above.",
        "We multiply 12 by 12.\n\nThe final answer is \\boxed{124}. Please check 144 again.",
    ),
    (
        "several boxes, last wins",
        "7",
        r"First guess \boxed{5}, but after checking: \boxed{7}",
        r"First guess \boxed{7}, but after checking: \boxed{5}",
    ),
    ("nested braces", r"\frac{1}{6}", r"\boxed{\frac{1}{\binom{4}{2}}}", r"\boxed{\frac{1}{\binom{4}{1}}}"),
    ("integer gold", 72, r"\boxed{72}", r"\boxed{27}"),
    ("float gold from a dataset", 27.0, r"\boxed{27}", r"\boxed{27.5}"),
    ("gold given as a solution", r"Adding gives $\boxed{12}$.", r"\boxed{12}", r"\boxed{13}"),
]


@pytest.mark.parametrize("form,gold,right,wrong", CASES, ids=[case[0] for case in CASES])
def test_right_and_wrong(form, gold, right, wrong):
    assert grade(right, gold) is True
    assert grade(wrong, gold) is False


@pytest.mark.parametrize(
    "prediction",
    ["The answer is 144.", "Final answer: 144", "$144$", "", None, r"\boxed{144"],  # no (closed) box: wrong
)
def test_no_box_is_wrong(prediction):
    assert grade(prediction, "144") is False


@pytest.mark.parametrize("gold", ["", None, "garbage{{", "???"])
def test_unparsable_gold_is_none(gold):
    assert parse_gold(gold) is None
    assert grade(r"\boxed{1}", gold) is None


@pytest.mark.parametrize(
    "text,expected",
    [
        (r"so \boxed{\frac{1}{2}} is it", r"\frac{1}{2}"),
        (r"\boxed{1} then \boxed{2} and finally \boxed{ 3 }", "3"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),
        (r"\boxed{\boxed{5}}", r"\boxed{5}"),
        (r"\boxed{a} \fbox{b}", "b"),
        (r"the answer is \boxed 7.", "7"),
        (r"\boxed {x^{2}}", "x^{2}"),
        (r"\boxed{3} and then a cut-off \boxed{4", "3"),
        ("no box here", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_grading_off_the_main_thread():
    # math-verify's signal-based timeouts raise off the main thread unless they are switched off.
    def run_all():
        assert threading.current_thread() is not threading.main_thread()
        return [(grade(right, gold), grade(wrong, gold)) for _, gold, right, wrong in CASES]

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = [pool.submit(run_all) for _ in range(2)]
        for future in results:
            assert future.result() == [(True, False)] * len(CASES)
