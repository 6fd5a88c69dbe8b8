"""Deterministic generator of the small CGD dataset shipped for the offline demo.

Each record is an arithmetic word problem written here, with a worked solution. The student's initial answer either
solves it or makes one real, identifiable mistake (a multiplication slip, a wrong operation, a skipped step); the
critique names that mistake (or confirms the steps) and ends with the verdict line; the refined answer is a complete
correct solution with the final answer in `\\boxed{}`. Nothing is taken from an existing dataset.

Rebuild the shipped file with `python -m cgd_trainer.demo.problems` (same seed, same bytes).
"""

from __future__ import annotations

import argparse
import random
import re
import string
from importlib import resources
from pathlib import Path

from ..sources import dumps_row

DEMO_SEED = 2505
DEMO_SIZE = 256
DEMO_FILE = "demo_cgd.jsonl"
TOY_FILES = {"train": "toy_train.jsonl", "heldout": "toy_heldout.jsonl"}
TOY_HELDOUT_SIZE = 160

NAMES = ["Mia", "Leo", "Ava", "Noah", "Zara", "Omar", "Lena", "Ravi", "Ines", "Tomas", "Yuki", "Ada"]
ITEMS = ["pencils", "stickers", "marbles", "cards", "shells", "stamps", "beads", "coins"]


# Each problem multiplies two numbers (a × b = p), then adds or subtracts a third (c) to reach the answer r. Values
# are drawn in the order given: a list is a choice, a tuple an inclusive integer range.
PROBLEMS = [
    {
        "values": {"name": NAMES, "item": ITEMS, "a": (3, 12), "b": (4, 15), "c": (2, 20)},
        "op": "subtract",
        "question": "{name} buys {a} packs of {item} with {b} {item} in each pack, then gives {c} {item} to a friend. "
        "How many {item} does {name} have left?",
        "steps": [
            "{name} buys {a} packs of {b}, so {a} × {b} = {p} {item}.",
            "After giving away {c}, {p} − {c} = {r} {item} are left.",
        ],
    },
    {
        "values": {"a": [40, 45, 50, 60, 65, 70, 80], "b": (2, 6), "c": (5, 60)},
        "op": "add",
        "question": "A bus drives at {a} km per hour for {b} hours, then {c} km more on a side road. How many "
        "kilometres does it drive in total?",
        "steps": [
            "At {a} km per hour for {b} hours the bus covers {a} × {b} = {p} km.",
            "Adding the side road: {p} + {c} = {r} km.",
        ],
    },
    {
        "values": {"name": NAMES, "a": (5, 25), "b": (3, 10), "c": (4, 30)},
        "op": "subtract",
        "question": "{name} saves {a} dollars every week for {b} weeks and then spends {c} dollars on a book. How "
        "many dollars are left?",
        "steps": ["Savings: {a} × {b} = {p} dollars.", "After the book: {p} − {c} = {r} dollars."],
    },
    {
        "values": {"a": (4, 12), "b": (5, 14), "c": (1, 9)},
        "op": "subtract",
        "question": "A garden has {a} rows with {b} tulips in each row. {c} tulips wilt. How many tulips are still "
        "blooming?",
        "steps": ["There are {a} × {b} = {p} tulips.", "Without the wilted ones: {p} − {c} = {r} tulips."],
    },
]


# The toy task of the demo that learns (`cgd demo`): the same two-step shape with digits 1-9 and an addition first,
# small enough for a model trained from scratch on a CPU to learn. Its (a, b, c) triples are split once into training
# and held-out questions (`toy_questions`).
TOY_VALUES = {"name": NAMES, "item": ITEMS, "a": (1, 9), "b": (1, 9), "c": (1, 9)}
TOY_PROBLEMS = [
    {
        "values": TOY_VALUES,
        "first": "add",
        "op": "subtract",
        "question": "{name} has {a} {item}, finds {b} more, then gives {c} away. How many {item} does {name} have "
        "now?",
        "steps": ["{name} has {a} and finds {b}: {a} + {b} = {p} {item}.", "Giving {c} away: {p} − {c} = {r} {item}."],
    },
    {
        "values": TOY_VALUES,
        "first": "add",
        "op": "add",
        "question": "{name} has {a} {item} and gets {b} more on Monday and {c} more on Tuesday. How many {item} does "
        "{name} have?",
        "steps": ["After Monday: {a} + {b} = {p} {item}.", "After Tuesday: {p} + {c} = {r} {item}."],
    },
]
# The first step's operation: its sign and the word the critiques use for it.
FIRST_STEPS = {"multiply": ("×", "multiplication"), "add": ("+", "addition")}


def _problem(rng: random.Random) -> dict:
    """Draws a problem and its values, and works out its solution."""
    spec = rng.choice(PROBLEMS)
    values = {key: rng.choice(v) if isinstance(v, list) else rng.randint(*v) for key, v in spec["values"].items()}
    return _solve(spec, values)


def _solve(spec: dict, values: dict) -> dict:
    """The question, worked steps and answer of a problem spec with its values."""
    values = dict(values)
    first = spec.get("first", "multiply")
    product = values["a"] * values["b"] if first == "multiply" else values["a"] + values["b"]
    answer = product - values["c"] if spec["op"] == "subtract" else product + values["c"]
    values.update(p=product, r=answer)
    return {
        "question": spec["question"].format(**values),
        "first": first,
        "product": (values["a"], values["b"], product),
        "steps": [step.format(**values) for step in spec["steps"]],
        "answer": answer,
        "last": (spec["op"], product, values["c"]),
    }


def slipped(problem: dict) -> int:
    """The student's typical wrong first result: one group of `b` too many for a product, one too many for a sum."""
    a, b, product = problem["product"]
    return product + b if problem["first"] == "multiply" else product + 1


def _question_pattern(template: str) -> re.Pattern:
    # `{name}` and `{item}` are words, the numbers digits; a placeholder used twice must repeat the same text.
    pattern, seen = "", set()
    for literal, key, _, _ in string.Formatter().parse(template):
        pattern += re.escape(literal)
        if key is None:
            continue
        if key in seen:
            pattern += f"(?P={key})"
        else:
            pattern += f"(?P<{key}>[A-Za-z]+)" if key in ("name", "item") else f"(?P<{key}>\\d+)"
            seen.add(key)
    return re.compile(pattern + "$")


_PATTERNS = [(_question_pattern(spec["question"]), spec) for spec in PROBLEMS + TOY_PROBLEMS]


def solve_question(question: str) -> dict | None:
    """
    Solves a demo question from its text alone (what the offline demo teacher does).

    Returns:
        `dict` or `None`: The worked problem (`question`, `product`, `steps`, `answer`, `last`), or `None` when the
        text is not a demo question.
    """
    for pattern, spec in _PATTERNS:
        match = pattern.match(question.strip())
        if match:
            values = {
                key: value if key in ("name", "item") else int(value) for key, value in match.groupdict().items()
            }
            return _solve(spec, values)
    return None


def draft_answer(problem: dict, mistake: str) -> str:
    """The student's answer: the worked steps (`mistake="none"`) or one with a `product`/`operation`/`skip` error."""
    a, b, product = problem["product"]
    op, left, right = problem["last"]
    sign = "−" if op == "subtract" else "+"
    times, _ = FIRST_STEPS[problem["first"]]
    if mistake == "none":
        return " ".join(problem["steps"]) + f" The answer is {problem['answer']}."
    if mistake == "product":
        slip = slipped(problem)
        final = slip - right if op == "subtract" else slip + right
        return f"First {a} {times} {b} = {slip}. Then {slip} {sign} {right} = {final}. The answer is {final}."
    if mistake == "operation":
        flipped = left + right if op == "subtract" else left - right
        wrong_sign = "+" if op == "subtract" else "−"
        return (
            f"First {a} {times} {b} = {product}. Then {product} {wrong_sign} {right} = {flipped}. The answer is "
            f"{flipped}."
        )
    verb = "We multiply" if problem["first"] == "multiply" else "We add"
    return f"{verb}: {a} {times} {b} = {product}. The answer is {product}."


def critique_of(problem: dict, mistake: str, slip: int | None = None, final: int | None = None) -> str:
    """
    The teacher's critique of an answer with the given mistake, ending with the verdict line.

    Args:
        problem (`dict`): The worked problem.
        mistake (`str`): `none`, `product`, `operation` or `skip`.
        slip (`int`, *optional*): The wrong product the student wrote (`product` mistakes; default: one group too
            many).
        final (`int`, *optional*): The student's final number (`product` mistakes).
    """
    a, b, product = problem["product"]
    op, left, right = problem["last"]
    sign = "−" if op == "subtract" else "+"
    times, step = FIRST_STEPS[problem["first"]]
    if mistake == "none":
        return (
            f"Each step checks out: the {step} is right and the second step uses the right operation, so "
            f"{problem['answer']} is correct. The explanation could name the units at each step.\n"
            "Conclusion: right"
        )
    if mistake == "product":
        slip = slipped(problem) if slip is None else slip
        final = (slip - right if op == "subtract" else slip + right) if final is None else final
        extra_group = problem["first"] == "multiply" and slip == product + b
        guess = f" (it looks like one extra group of {b} was counted)" if extra_group else ""
        return (
            f"The plan is right, but the {step} is wrong: {a} {times} {b} is {product}, not {slip}{guess}. "
            f"Because of that slip the final result {final} is off by {abs(final - problem['answer'])}.\n"
            "Conclusion: wrong"
        )
    if mistake == "operation":
        result = "product" if problem["first"] == "multiply" else "sum"
        wrong_sign = "+" if op == "subtract" else "−"
        needed = "taken away" if op == "subtract" else "added"
        return (
            f"The {result} {a} {times} {b} = {product} is correct, but the second step uses the wrong operation: the "
            f"{right} should be {needed}, so the step is {product} {sign} {right}, not {product} {wrong_sign} "
            f"{right}.\nConclusion: wrong"
        )
    return (
        f"The {step} {a} {times} {b} = {product} is correct, but the answer stops there: the question also "
        f"asks to account for the {right}, which the student never used.\nConclusion: wrong"
    )


def refined_answer(problem: dict) -> str:
    """A complete worked solution with the final answer in `\\boxed{}`."""
    return "\n".join(
        [f"Step {i + 1}: {step}" for i, step in enumerate(problem["steps"])]
        + [f"So the answer is \\boxed{{{problem['answer']}}}."]
    )


def pick_mistake(rng: random.Random) -> str:
    # About a third of the student's answers are right, as in real probe data where many drafts pass.
    return rng.choices(["none", "product", "operation", "skip"], weights=[3, 3, 2, 2])[0]


def _record(index: int, rng: random.Random) -> dict:
    problem = _problem(rng)
    mistake = pick_mistake(rng)
    return {
        "id": f"demo-{index:04d}",
        "prompt": problem["question"],
        "initial_response": draft_answer(problem, mistake),
        "critique": critique_of(problem, mistake),
        "refined_response": refined_answer(problem),
        "verdict": "right" if mistake == "none" else "wrong",
        "reference_answer": str(problem["answer"]),
    }


def generate_records(n: int = DEMO_SIZE, seed: int = DEMO_SEED) -> list[dict]:
    """
    Generates `n` demo CGD records.

    Args:
        n (`int`, *optional*, defaults to 256): Number of records.
        seed (`int`, *optional*, defaults to 2505): Random seed; the same seed gives the same records.

    Returns:
        `list[dict]`: Records with `id`, `prompt`, `initial_response`, `critique`, `refined_response`, `verdict`
        and `reference_answer`.
    """
    rng = random.Random(seed)
    return [_record(index, rng) for index in range(n)]


def toy_questions(split: str, seed: int = DEMO_SEED) -> list[dict]:
    """
    The toy task's questions of one split, with their reference answers.

    Every (problem, a, b, c) of `TOY_PROBLEMS` with a non-negative answer is one key; a seeded shuffle puts
    `TOY_HELDOUT_SIZE` keys in the held-out split and the rest in the training split, so no held-out question (not
    even with another name or item) occurs in training. Names and items are drawn per question.

    Args:
        split (`str`): `"train"` or `"heldout"`.
        seed (`int`, *optional*, defaults to 2505): The seed of the split and of the names and items.

    Returns:
        `list[dict]`: Rows with `id`, `prompt` and `reference_answer`, in a fixed order.
    """
    if split not in TOY_FILES:
        raise ValueError(f"`split` must be one of {sorted(TOY_FILES)}, got {split!r}.")

    def span(spec: dict, key: str) -> range:
        low, high = spec["values"][key]
        return range(low, high + 1)

    keys = [
        (index, a, b, c)
        for index, spec in enumerate(TOY_PROBLEMS)
        for a in span(spec, "a")
        for b in span(spec, "b")
        for c in span(spec, "c")
        if spec["op"] == "add" or c <= a + b
    ]
    rng = random.Random(seed)
    rng.shuffle(keys)
    chosen = keys[:TOY_HELDOUT_SIZE] if split == "heldout" else keys[TOY_HELDOUT_SIZE:]
    rows = []
    for number, (index, a, b, c) in enumerate(chosen):
        spec = TOY_PROBLEMS[index]
        values = {"name": rng.choice(NAMES), "item": rng.choice(ITEMS), "a": a, "b": b, "c": c}
        problem = _solve(spec, values)
        answer = str(problem["answer"])
        rows.append({"id": f"toy-{split}-{number:04d}", "prompt": problem["question"], "reference_answer": answer})
    return rows


def toy_key(question: str) -> tuple[str, int, int, int] | None:
    """
    The numbers behind a toy question: its shape (the operation of the second step) and (a, b, c); `None` for a
    question that is not the toy task's. Two questions with the same key differ only in name and item.
    """
    problem = solve_question(question)
    if problem is None or problem["first"] != "add":
        return None
    (a, b, _), (op, _, c) = problem["product"], problem["last"]
    return op, a, b, c


def toy_data_path(split: str = "train") -> Path:
    """Path of a toy split shipped inside the package (`builtin:toy`, `builtin:toy-heldout`)."""
    return Path(str(resources.files("cgd_trainer.demo") / "data" / TOY_FILES[split]))


def toy_heldout_path() -> Path:
    """Path of the toy task's held-out questions (`builtin:toy-heldout`)."""
    return toy_data_path("heldout")


def to_jsonl(records: list[dict]) -> str:
    """Serializes records as JSON lines (UTF-8 text, one record per line, keys in a fixed order)."""
    return "".join(dumps_row(record) for record in records)


def demo_data_path() -> Path:
    """Path of the demo dataset shipped inside the package."""
    return Path(str(resources.files("cgd_trainer.demo") / "data" / DEMO_FILE))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the demo CGD dataset.")
    parser.add_argument("--out", default=str(Path(__file__).parent / "data" / DEMO_FILE))
    parser.add_argument("-n", type=int, default=DEMO_SIZE)
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    options = parser.parse_args(argv)
    Path(options.out).parent.mkdir(parents=True, exist_ok=True)
    Path(options.out).write_text(to_jsonl(generate_records(options.n, options.seed)), encoding="utf-8")
    print(f"wrote {options.n} records to {options.out}")
    for split, name in TOY_FILES.items():
        path = Path(options.out).parent / name
        rows = toy_questions(split)
        path.write_text(to_jsonl(rows), encoding="utf-8")
        print(f"wrote {len(rows)} {split} questions of the toy task to {path}")


if __name__ == "__main__":
    main()
