"""Deterministic generator of the small CGD dataset shipped for the offline demo.

Each record is an arithmetic word problem written here, with a worked solution. The student's initial answer either
solves it or makes one real, identifiable mistake (a multiplication slip, a wrong operation, a skipped step); the
critique names that mistake (or confirms the steps) and ends with the verdict line; the refined answer is a complete
correct solution with the final answer in `\\boxed{}`. Nothing is taken from an existing dataset.

Rebuild the shipped file with `python -m cgd_trainer.demo_data` (same seed, same bytes).
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from importlib import resources
from pathlib import Path

DEMO_SEED = 2505
DEMO_SIZE = 256
DEMO_FILE = "demo_cgd.jsonl"

NAMES = ["Mia", "Leo", "Ava", "Noah", "Zara", "Omar", "Lena", "Ravi", "Ines", "Tomas", "Yuki", "Ada"]
ITEMS = ["pencils", "stickers", "marbles", "cards", "shells", "stamps", "beads", "coins"]


def _problem_packs(rng: random.Random) -> dict:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    packs, per_pack, given = rng.randint(3, 12), rng.randint(4, 15), rng.randint(2, 20)
    total = packs * per_pack
    return {
        "question": f"{name} buys {packs} packs of {item} with {per_pack} {item} in each pack, then gives {given} "
        f"{item} to a friend. How many {item} does {name} have left?",
        "product": (packs, per_pack, total),
        "steps": [
            f"{name} buys {packs} packs of {per_pack}, so {packs} × {per_pack} = {total} {item}.",
            f"After giving away {given}, {total} − {given} = {total - given} {item} are left.",
        ],
        "answer": total - given,
        "last": ("subtract", total, given),
    }


def _problem_trip(rng: random.Random) -> dict:
    speed, hours, extra = rng.choice([40, 45, 50, 60, 65, 70, 80]), rng.randint(2, 6), rng.randint(5, 60)
    total = speed * hours
    return {
        "question": f"A bus drives at {speed} km per hour for {hours} hours, then {extra} km more on a side road. "
        "How many kilometres does it drive in total?",
        "product": (speed, hours, total),
        "steps": [
            f"At {speed} km per hour for {hours} hours the bus covers {speed} × {hours} = {total} km.",
            f"Adding the side road: {total} + {extra} = {total + extra} km.",
        ],
        "answer": total + extra,
        "last": ("add", total, extra),
    }


def _problem_savings(rng: random.Random) -> dict:
    name = rng.choice(NAMES)
    weekly, weeks, spent = rng.randint(5, 25), rng.randint(3, 10), rng.randint(4, 30)
    total = weekly * weeks
    return {
        "question": f"{name} saves {weekly} dollars every week for {weeks} weeks and then spends {spent} dollars on a "
        "book. How many dollars are left?",
        "product": (weekly, weeks, total),
        "steps": [
            f"Savings: {weekly} × {weeks} = {total} dollars.",
            f"After the book: {total} − {spent} = {total - spent} dollars.",
        ],
        "answer": total - spent,
        "last": ("subtract", total, spent),
    }


def _problem_garden(rng: random.Random) -> dict:
    rows, per_row, dead = rng.randint(4, 12), rng.randint(5, 14), rng.randint(1, 9)
    total = rows * per_row
    return {
        "question": f"A garden has {rows} rows with {per_row} tulips in each row. {dead} tulips wilt. How many tulips "
        "are still blooming?",
        "product": (rows, per_row, total),
        "steps": [
            f"There are {rows} × {per_row} = {total} tulips.",
            f"Without the wilted ones: {total} − {dead} = {total - dead} tulips.",
        ],
        "answer": total - dead,
        "last": ("subtract", total, dead),
    }


PROBLEMS: list[Callable[[random.Random], dict]] = [_problem_packs, _problem_trip, _problem_savings, _problem_garden]


def _flawed_answer(problem: dict, mistake: str) -> tuple[str, str]:
    """The student's answer with one mistake, and the critique that names it."""
    a, b, product = problem["product"]
    op, left, right = problem["last"]
    sign = "−" if op == "subtract" else "+"
    if mistake == "product":
        slip = product + b
        final = slip - right if op == "subtract" else slip + right
        answer = f"First {a} × {b} = {slip}. Then {slip} {sign} {right} = {final}. The answer is {final}."
        critique = (
            f"The plan is right, but the multiplication is wrong: {a} × {b} is {product}, not {slip} (it looks like "
            f"one extra group of {b} was counted). Because of that slip the final result {final} is off by {b}.\n"
            "Conclusion: wrong"
        )
    elif mistake == "operation":
        flipped = left + right if op == "subtract" else left - right
        wrong_sign = "+" if op == "subtract" else "−"
        answer = (
            f"First {a} × {b} = {product}. Then {product} {wrong_sign} {right} = {flipped}. The answer is {flipped}."
        )
        needed = "taken away" if op == "subtract" else "added"
        critique = (
            f"The product {a} × {b} = {product} is correct, but the second step uses the wrong operation: the "
            f"{right} should be {needed}, so the step is {product} {sign} {right}, not {product} {wrong_sign} "
            f"{right}.\nConclusion: wrong"
        )
    else:  # the last step is skipped
        answer = f"We multiply: {a} × {b} = {product}. The answer is {product}."
        critique = (
            f"The multiplication {a} × {b} = {product} is correct, but the answer stops there: the question also "
            f"asks to account for the {right}, which the student never used.\nConclusion: wrong"
        )
    return answer, critique


def _record(index: int, rng: random.Random) -> dict:
    problem = rng.choice(PROBLEMS)(rng)
    # About a third of the student's answers are right, as in real probe data where many drafts pass.
    mistake = rng.choices(["none", "product", "operation", "skip"], weights=[3, 3, 2, 2])[0]
    if mistake == "none":
        initial = " ".join(problem["steps"]) + f" The answer is {problem['answer']}."
        critique = (
            "Each step checks out: the multiplication is right and the second step uses the right operation, so "
            f"{problem['answer']} is correct. The explanation could name the units at each step.\n"
            "Conclusion: right"
        )
    else:
        initial, critique = _flawed_answer(problem, mistake)
    refined = "\n".join(
        [f"Step {i + 1}: {step}" for i, step in enumerate(problem["steps"])]
        + [f"So the answer is \\boxed{{{problem['answer']}}}."]
    )
    return {
        "id": f"demo-{index:04d}",
        "prompt": problem["question"],
        "initial_response": initial,
        "critique": critique,
        "refined_response": refined,
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


def to_jsonl(records: list[dict]) -> str:
    """Serializes records as JSON lines (UTF-8 text, one record per line, keys in a fixed order)."""
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def demo_data_path() -> Path:
    """Path of the demo dataset shipped inside the package."""
    return Path(str(resources.files("cgd_trainer") / "data" / DEMO_FILE))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the demo CGD dataset.")
    parser.add_argument("--out", default=str(Path(__file__).parent / "data" / DEMO_FILE))
    parser.add_argument("-n", type=int, default=DEMO_SIZE)
    parser.add_argument("--seed", type=int, default=DEMO_SEED)
    options = parser.parse_args(argv)
    Path(options.out).parent.mkdir(parents=True, exist_ok=True)
    Path(options.out).write_text(to_jsonl(generate_records(options.n, options.seed)), encoding="utf-8")
    print(f"wrote {options.n} records to {options.out}")


if __name__ == "__main__":
    main()
