"""The demo that learns: the toy task and its held-out split, the digit tokenizer, and `cgd demo` end to end."""

from __future__ import annotations

import json
import re
import sys

import pytest

from cgd_trainer import cli, runs
from cgd_trainer.commands import train as train_command
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
from cgd_trainer.sources import resolve_file, resolve_model


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
    assert resolve_file("builtin:toy") == toy_data_path("train")


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
    with pytest.raises(UsageError, match="unknown condition 'bogus'"):
        demo.resolve_conditions(["all", "bogus"])
    assert demo.resolve_conditions(["distilled_sft", "cgd"]) == ["cgd", "distilled_sft"]
    assert len(demo.resolve_conditions(["all"])) == 7
    with pytest.raises(UsageError, match="--max_stepz 3. Did you mean `--max_steps`"):
        demo.parse(["--max_stepz", "3"])
    # What the demo sets per run cannot be overridden (it would train every condition on one file, or one seed).
    for flags, hint in [
        (["--config", "tiny/cpu"], "--config itself"),
        (["--dataset_name", "x.jsonl"], "choose the sets with --conditions"),
        (["--seed", "7"], "give the seeds with --seeds"),
        (["--model_name_or_path=builtin:tiny-chatml"], "choose the student with --student"),
    ]:
        with pytest.raises(UsageError, match=re.escape(hint)):
            demo.parse(flags)
    for flags, message in [
        (["--seeds", "1", "1"], "each seed once"),
        (["--eval_problems", "0"], "--eval_problems: at least 1"),
        (["--max_new_tokens", "0"], "--max_new_tokens: at least 1"),
        (["--cgd_layout", "multi_turn"], "single_turn"),
        (
            ["--student", "builtin:smollm2"],
            re.escape("--student: unknown student 'builtin:smollm2'. Did you mean `builtin:smollm2-135m-instruct`?"),
        ),
    ]:
        with pytest.raises(UsageError, match=message):
            demo.parse(flags)
    # A user mistake is one line and exit status 2 through the command.
    assert cli.main(["demo", "--seeds", "3", "3"]) == 2
    # Without the evaluation extra, it says so before training anything.
    monkeypatch.setitem(sys.modules, "math_verify", None)
    with pytest.raises(UsageError, match=r"needs math-verify: pip install 'cgd-trainer\[eval\]'"):
        demo.parse([])


def test_eval_recipe_scores_what_cgd_demo_writes():
    """`examples/eval/tiny-cpu.yaml` evaluates the folders `cgd demo` trains into, as the demo evaluates them."""
    from pathlib import Path

    from cgd_trainer.commands import eval as eval_command

    root = Path(__file__).resolve().parents[2]
    (config,) = eval_command.make_parser().parse_args_and_config(
        args=["--config", str(root / "examples" / "eval" / "tiny-cpu.yaml")]
    )
    paths = [entry["model"] for entry in config.models]
    assert paths[0] == demo.UNTRAINED
    assert paths[1:] == [
        f"{demo.DEMO_OUTPUT_DIR}/{c}/seed-{demo.DemoArguments().seeds[0]}" for c in demo.DEMO_CONDITIONS
    ]
    assert config.benchmarks[0] == demo.HELDOUT and config.system_prompt == ""


def _summary(accuracy: dict[str, float], problems: dict[str, int] | None = None) -> dict:
    """A `cgd eval` summary with the given accuracy for every label on every benchmark, and questions scored."""
    problems = problems or {demo.ALONE: 10, demo.RIGHT_DRAFTS: 4, demo.WRONG_DRAFTS: 6}
    results, drift = {}, {}
    for label, value in accuracy.items():
        results[label] = {
            name: {"accuracy": value, "accuracy_by_protocol": {"strict": value, "harness": value + 0.1}}
            for name in demo.COLUMNS
        }
        drift[label] = {demo.ALONE: {"boxed_rate": value, "critique_rate": 0.0}}
    benchmarks = [{"name": name, "problems": problems[name]} for name in demo.COLUMNS]
    return {"results": results, "drift_per_benchmark": drift, "benchmarks": benchmarks, "seconds": 1.0,
            "config": {"protocol": "strict"}}  # fmt: skip


def test_comparison_reports_mean_and_sd_over_seeds_with_a_plot(tmp_path):
    labels = {"untrained": 0.0, demo.run_label("cgd", 0): 0.2, demo.run_label("cgd", 1): 0.4}
    summary = _summary(labels)
    table = demo.aggregate(summary, ["cgd"], [0, 1])
    assert table["cgd"][demo.ALONE]["mean"] == pytest.approx(0.3)
    assert table["cgd"][demo.ALONE]["sd"] == pytest.approx(0.1414, abs=1e-4)
    assert table["cgd"][demo.ANY_NUMBER]["mean"] == pytest.approx(0.4)
    assert table["untrained"][demo.ALONE]["sd"] is None
    args = demo.DemoArguments(output_dir=str(tmp_path), conditions=["cgd"], seeds=[0, 1])
    text = demo.write_report(table, summary, args, {"cgd (seed 0)": 1.0})
    assert "| cgd | 30.0 ± 14.1 | 30.0 ± 14.1 | 30.0 ± 14.1 | 40.0 ± 14.1 |" in text
    assert "docs/demo.md" in text  # a newcomer reading only the printed table is told where its meaning is
    assert "(4 with a right draft, 6 with a wrong one)" in text
    assert (tmp_path / "comparison.png").stat().st_size > 0
    assert json.loads((tmp_path / "comparison.json").read_text())["cgd"][demo.ALONE]["values"] == [0.2, 0.4]


def test_report_counts_what_each_column_scored_under_eval_problems(tmp_path):
    """`--eval_problems 32` keeps the first 32 of each benchmark: 32 + 32 in the CGD context are not a split of 32."""
    alone, right, wrong = demo.ALONE, demo.RIGHT_DRAFTS, demo.WRONG_DRAFTS
    labels = {"untrained": 0.0, demo.run_label("cgd", 0): 0.5}
    summary = _summary(labels, {alone: 32, right: 32, wrong: 32})
    args = demo.DemoArguments(output_dir=str(tmp_path), conditions=["cgd"], seeds=[0], eval_problems=32)
    table = demo.aggregate(summary, ["cgd"], [0])
    text = demo.write_report(table, summary, args, {}, drafted={right: 49, wrong: 111})
    assert "with a right draft" not in text  # the old header: "32 held-out questions (...; 32 with a right draft ...)"
    assert (
        "Scored on the toy task's 160 held-out questions, none of them in training, at most 32 per column "
        "(`--eval_problems 32`): 32 asked alone (the first 32 of 160), and in the CGD context 32 whose draft was "
        "right (the first 32 of 49) and 32 whose draft was wrong (the first 32 of 111), so the two CGD-context "
        "columns are not a split of the first column's questions."
    ) in text

    # A benchmark shorter than the cap is scored whole, and says so; SmolLM2 drafts only the first 96 questions.
    text = demo.scored_questions({alone: 32, right: 12, wrong: 32}, {right: 12, wrong: 84}, 32)
    assert text.startswith("Scored on the first 96 of the toy task's 160 held-out questions")
    assert "32 asked alone (the first 32 of 96)" in text and "12 whose draft was right (all of them)" in text
    # A cap no benchmark reaches cuts nothing: the columns split the held-out questions, as without one.
    for cap in (None, 96, 200):
        counts = {alone: 96, right: 12, wrong: 84}
        assert demo.scored_questions(counts, {right: 12, wrong: 84}, cap) == (
            "Scored on the first 96 of the toy task's 160 held-out questions, none of them in training "
            "(12 with a right draft, 84 with a wrong one)"
        )
    # Without the benchmarks' sizes, a count at the cap is reported as a cut one.
    text = demo.scored_questions({alone: 32, right: 32, wrong: 32}, None, 32)
    assert "32 whose draft was wrong (the first 32)" in text and "with a wrong one" not in text


def demo_records(out, verdict: str) -> list[dict]:
    """The held-out CGD records a `cgd demo` run generated, whose draft had the given verdict."""
    from cgd_trainer.sources import read_jsonl

    return [r for r in read_jsonl(out / "data" / "heldout" / "sets" / "cgd.jsonl") if r["verdict"] == verdict]


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
    assert "| question alone (%) |" in printed and "| untrained |" in printed
    table = json.loads((out / "comparison.json").read_text())
    untrained = table["untrained"]
    # What CI guards, with margins that hold on any CPU. Held-out accuracy of a from-scratch toy is a coin toss across
    # floating-point paths (CGD's wrong-draft score was 17.2% here and 7.8% on an AVX-512 machine, at 300 steps), so
    # the learning is read from the mean NLL per token of the held-out refined answers (wrong drafts), which averages
    # over every token: the CGD student must be at home in the CGD context and distilled SFT after the bare question,
    # each far better there than the untrained model and than the other student. A wrong training set (the sets
    # swapped, or one set for both) breaks the cross comparisons; a context unlike the trained one breaks the
    # student's own (the mask itself is golden-checked in test_masking.py). Measured over seeds 42, 0 and 1 (and 1 or
    # 2 threads, which gave identical numbers): the four ratios asserted below were at most 0.07, 0.21, 0.03 and 0.12.
    _, _, training_args = demo.parse(["--output_dir", str(out / "unused")])
    heldout = demo_records(out, "wrong")[:64]
    nll = {
        "untrained": demo.refined_answer_nll(resolve_model(demo.UNTRAINED, out / "untrained"), heldout, training_args),
        **{c: demo.refined_answer_nll(out / c / "seed-42", heldout, training_args) for c in demo.DEMO_CONDITIONS},
    }
    cgd, sft, base = nll["cgd"], nll["distilled_sft"], nll["untrained"]
    assert cgd["cgd_context"] < 0.25 * base["cgd_context"], nll
    assert cgd["cgd_context"] < 0.5 * sft["cgd_context"], nll
    assert sft["question_alone"] < 0.25 * base["question_alone"], nll
    assert sft["question_alone"] < 0.5 * cgd["question_alone"], nll
    # Through generation and grading, checks that hold on any CPU: distilled SFT answers the bare question in the
    # trained format (every answer boxed in every run measured), and each student gets some held-out answers right
    # in its own context, which the untrained model never does.
    assert table["distilled_sft"]["boxed_rate"]["mean"] >= 0.9
    assert table["distilled_sft"][demo.ALONE]["mean"] > untrained[demo.ALONE]["mean"] == 0.0
    assert table["cgd"][demo.WRONG_DRAFTS]["mean"] > untrained[demo.WRONG_DRAFTS]["mean"] == 0.0
    assert (out / "comparison.png").stat().st_size > 0
    assert "![held-out accuracy](comparison.png)" in (out / "comparison.md").read_text()
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert {b["name"] for b in summary["benchmarks"]} == set(demo.COLUMNS)
    assert all(b["problems"] <= 64 for b in summary["benchmarks"])


def test_in_context_benchmark_is_the_prompt_the_cgd_student_is_trained_on(tmp_path):
    """The held-out CGD-context questions, asked as `cgd eval` asks them, are token for token the trained prompt."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from cgd_trainer.sources import read_jsonl, resolve_model
    from cgd_trainer.trainer import prepare_records

    _, _, training_args = demo.parse(["--cgd_instruction", "Fix the answer.", "--output_dir", str(tmp_path / "run")])
    sets, benchmarks = demo.make_demo_data(tmp_path / "data", training_args)
    assert (sets / "cgd.jsonl").exists() and (sets / "distilled_sft.jsonl").exists()
    records = list(read_jsonl(tmp_path / "data" / "heldout" / "sets" / "cgd.jsonl"))
    right, wrong = (list(read_jsonl(benchmarks[name])) for name in (demo.RIGHT_DRAFTS, demo.WRONG_DRAFTS))
    assert len(right) + len(wrong) == len(records) == TOY_HELDOUT_SIZE
    verdicts = {record["id"]: record["verdict"] for record in records}
    assert {verdicts[row["id"]] for row in right} == {"right"} and {verdicts[row["id"]] for row in wrong} == {"wrong"}
    questions = [next(row for row in right + wrong if row["id"] == record["id"]) for record in records[:4]]
    records = records[:4]
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(demo.UNTRAINED, tmp_path))
    prepared, _ = prepare_records(Dataset.from_list(records), tokenizer, training_args)
    for row, question in zip(prepared, questions):
        assert question["question"].startswith("Fix the answer.\n\n### Question\n")
        trained_from = row["labels"].index(next(label for label in row["labels"] if label != -100))
        asked = tokenizer.apply_chat_template(
            [{"role": "user", "content": question["question"]}], add_generation_prompt=True, return_dict=True
        )["input_ids"]
        assert row["input_ids"][:trained_from] == list(asked)


def test_demo_rerun_keeps_finished_runs_and_retrains_changed_ones(tmp_path, capsys):
    """A rerun of `cgd demo` reuses a run that finished with the same settings; other settings or --retrain train."""
    out = tmp_path / "demo"
    argv = ["demo", "--output_dir", str(out), "--conditions", "distilled_sft", "--seeds", "3", "--max_steps", "4"]
    argv += ["--eval_problems", "2", "--max_new_tokens", "4", "--logging_steps", "4"]
    run_dir = out / "distilled_sft" / "seed-3"
    assert cli.main(argv) == 0
    weights = next(run_dir.glob("*.safetensors"))
    trained = weights.stat().st_mtime_ns
    # One record of the run, the one `cgd train` keeps: its arguments (with the data's sha256) and that it finished.
    finished = runs.saved_run(run_dir)
    assert finished["finished"] and finished["arguments"]["max_steps"] == 4 and finished["seconds"] > 0
    assert len(finished["arguments"]["dataset_sha256"]) == 64 and not (run_dir / "demo_run.json").exists()
    capsys.readouterr()

    assert cli.main(argv) == 0
    assert f"reusing {run_dir}" in capsys.readouterr().out
    assert weights.stat().st_mtime_ns == trained
    # The report counts what each column scored, out of the benchmark files `cgd demo` wrote.
    assert "2 asked alone (the first 2 of 160)" in (out / "comparison.md").read_text()

    # Another training setting, other data, or an unfinished run (it crashed) is not reused.
    data = out / "data" / "sets" / "distilled_sft.jsonl"

    def arguments(*flags: str) -> dict:
        recipe = str(demo.toy_recipe_path())
        common = ["--config", recipe, "--dataset_name", str(data), "--output_dir", str(run_dir), "--seed", "3"]
        script_args, training_args, model_args, *_ = train_command.parse([*common, *flags], prog="cgd demo")
        return runs.run_arguments(script_args, training_args, model_args)

    same = arguments("--max_steps", "4", "--logging_steps", "4")
    assert runs.finished_run(run_dir, same)["seconds"] == finished["seconds"]
    assert runs.finished_run(run_dir, arguments("--max_steps", "5", "--logging_steps", "4")) is None
    assert runs.finished_run(run_dir, {**same, "seed": 4}) is None
    assert runs.finished_run(run_dir, {**same, "dataset_sha256": "0" * 64}) is None
    # Any setting that changes what is learned, not only the recipe's usual ones; and a run of another version.
    assert (
        runs.finished_run(run_dir, arguments("--max_steps", "4", "--logging_steps", "4", "--max_grad_norm", "0.5"))
        is None
    )
    record = runs.saved_run(run_dir)
    (run_dir / runs.RUN_FILE).write_text(json.dumps({**record, "cgd_trainer": "0.0.1"}))
    assert runs.finished_run(run_dir, same) is None
    (run_dir / runs.RUN_FILE).write_text(json.dumps(record))

    assert cli.main([*argv, "--retrain", "true"]) == 0
    assert "reusing" not in capsys.readouterr().out
    assert weights.stat().st_mtime_ns > trained
    runs.write_run_file(run_dir, same, finished=False)
    assert runs.finished_run(run_dir, same) is None
