"""The demo that learns: the toy task and its held-out split, the digit tokenizer, and `cgd demo` end to end."""

from __future__ import annotations

import json
import re
import sys

import pytest

from cgd_trainer import cli
from cgd_trainer.commands.parser import UsageError
from cgd_trainer.demo import run as demo
from cgd_trainer.demo.problems import (
    TOY_HELDOUT_SIZE,
    TOY_PROBLEMS,
    critique_of,
    draft_answer,
    solve_question,
    to_jsonl,
    toy_data_path,
    toy_questions,
)
from cgd_trainer.demo.teacher import critique_answer
from cgd_trainer.sources import resolve_file


def _key(question: str) -> tuple:
    problem = solve_question(question)
    assert problem is not None, question
    template = next(i for i, spec in enumerate(TOY_PROBLEMS) if spec["op"] == problem["last"][0])
    return (template, *problem["product"][:2], problem["last"][2])


def test_toy_split_is_disjoint_shipped_and_solvable():
    train, heldout = toy_questions("train"), toy_questions("heldout")
    assert len(heldout) == TOY_HELDOUT_SIZE and len(train) > 1000
    train_keys, heldout_keys = {_key(r["prompt"]) for r in train}, {_key(r["prompt"]) for r in heldout}
    # Disjoint by numbers, not only by text: no held-out (problem, a, b, c) is in training under another name.
    assert not train_keys & heldout_keys
    assert len(heldout_keys) == TOY_HELDOUT_SIZE
    for row in train + heldout:
        assert str(solve_question(row["prompt"])["answer"]) == row["reference_answer"]
        assert all(1 <= int(n) <= 9 for n in re.findall(r"\d+", row["prompt"]))
    # The shipped files are these splits, byte for byte, and the builtin names point at them.
    assert toy_data_path("train").read_text(encoding="utf-8") == to_jsonl(train)
    assert toy_data_path("heldout").read_text(encoding="utf-8") == to_jsonl(heldout)
    assert resolve_file("builtin:toy-heldout") == toy_data_path("heldout")


def test_toy_teacher_names_each_mistake_of_an_addition_first_problem():
    problem = solve_question("Mia has 9 beads, finds 6 more, then gives 4 away. How many beads does Mia have now?")
    assert problem["answer"] == 11 and problem["first"] == "add"
    for mistake in ("none", "product", "operation", "skip"):
        draft = draft_answer(problem, mistake)
        # The teacher reads the draft's text and finds the same mistake the student made.
        assert critique_answer(problem, draft) == critique_of(problem, mistake), mistake
    assert "9 + 6 = 16" in draft_answer(problem, "product")
    assert "the addition is wrong: 9 + 6 is 15, not 16" in critique_of(problem, "product")


def test_digit_tokenizer_gives_each_digit_a_token(tmp_path):
    from transformers import AutoTokenizer

    from cgd_trainer.sources import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("builtin:tiny-digits", tmp_path))
    pieces = tokenizer.tokenize("then gives 17 away: 12 + 5 = 17.")
    assert [p for p in pieces if any(ch.isdigit() for ch in p)] == ["1", "7", "1", "2", "5", "1", "7"]
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith(
        "<|im_start|>user"
    )


def test_demo_refuses_unknown_conditions_and_training_flags(monkeypatch):
    with pytest.raises(UsageError, match="unknown condition 'cdg'.*cgd"):
        demo.resolve_conditions(["cdg"])
    assert demo.resolve_conditions(["distilled_sft", "cgd"]) == ["cgd", "distilled_sft"]
    assert len(demo.resolve_conditions(["all"])) == 7
    with pytest.raises(UsageError, match="--max_stepz 3. Did you mean `--max_steps`"):
        demo.parse(["--max_stepz", "3"])
    with pytest.raises(UsageError, match="own recipe"):
        demo.parse(["--config", "tiny/cpu"])
    with pytest.raises(UsageError, match="single_turn"):
        demo.parse(["--cgd_layout", "multi_turn"])
    # Without the evaluation extra, it says so before training anything.
    monkeypatch.setitem(sys.modules, "math_verify", None)
    with pytest.raises(UsageError, match=r"needs math-verify: pip install 'cgd-trainer\[eval\]'"):
        demo.parse([])


@pytest.mark.slow
def test_demo_learns_on_held_out_questions(tmp_path, capsys):
    """The short form of `make demo`: a fixed seed, fewer steps and questions; held-out accuracy must rise."""
    out = tmp_path / "demo"
    # Through the `cgd` command, as `make demo` runs it.
    status = cli.main(
        ["demo", "--output_dir", str(out), "--max_steps", "300", "--eval_problems", "64", "--logging_steps", "100"]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "held-out, question alone (%)" in printed and "| untrained |" in printed
    table = json.loads((out / "comparison.json").read_text())
    alone, in_context = demo.ALONE, demo.IN_CONTEXT
    untrained = table["untrained"]
    # The learning signal CI guards: distilled SFT (the same trainer, question alone at inference) learns the task,
    # and the CGD student learns its refinement mapping on held-out drafts and critiques. A mask off by one, a wrong
    # training set or an inference prompt unlike training's would break one of these.
    assert table["distilled_sft"][alone]["mean"] >= untrained[alone]["mean"] + 0.1
    assert table["cgd"][in_context]["mean"] >= untrained[in_context]["mean"] + 0.1
    assert (out / "comparison.png").stat().st_size > 0
    assert "![held-out accuracy](comparison.png)" in (out / "comparison.md").read_text()
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert {b["name"] for b in summary["benchmarks"]} == {alone, in_context}
    assert all(b["problems"] == 64 for b in summary["benchmarks"])


def test_in_context_benchmark_is_the_prompt_the_cgd_student_is_trained_on(tmp_path):
    """The held-out CGD-context questions, asked as `cgd eval` asks them, are token for token the trained prompt."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from cgd_trainer.sources import read_jsonl, resolve_model
    from cgd_trainer.trainer import prepare_records

    _, _, training_args = demo.parse(["--cgd_instruction", "Fix the answer.", "--output_dir", str(tmp_path / "run")])
    sets, in_context = demo.make_demo_data(tmp_path / "data", training_args)
    assert (sets / "cgd.jsonl").exists() and (sets / "distilled_sft.jsonl").exists()
    questions = list(read_jsonl(in_context))
    assert len(questions) == TOY_HELDOUT_SIZE
    records = list(read_jsonl(tmp_path / "data" / "heldout" / "sets" / "cgd.jsonl"))[:4]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(demo.UNTRAINED, tmp_path))
    prepared, _ = prepare_records(Dataset.from_list(records), tokenizer, training_args)
    for row, question in zip(prepared, questions):
        assert question["question"].startswith("Fix the answer.\n\n### Question\n")
        trained_from = row["labels"].index(next(label for label in row["labels"] if label != -100))
        asked = tokenizer.apply_chat_template(
            [{"role": "user", "content": question["question"]}], add_generation_prompt=True, return_dict=True
        )["input_ids"]
        assert row["input_ids"][:trained_from] == list(asked)
