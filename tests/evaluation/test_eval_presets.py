r"""`cgd eval` protocol presets: `strict` (last box, math-verify) and `harness` (the published math-evaluation-harness
protocol: its instruction, fallbacks when there is no box, completion prompts stopped at a new problem), both gradings
on every sample and side by side in the report, and the Qwen2.5-Math recipe inside the model's window."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cgd_trainer.backends.base import fit_budget
from cgd_trainer.commands import eval as eval_command
from cgd_trainer.commands.eval import run as cli_main
from cgd_trainer.evaluation import EvalConfig
from cgd_trainer.evaluation import runner as ev
from cgd_trainer.evaluation.metrics import score_samples
from cgd_trainer.evaluation.protocols import (
    HARNESS_INSTRUCTION,
    PROTOCOLS,
    grade_sample,
    harness_keeps_units,
    new_problem_stops,
)
from cgd_trainer.grading import extract_answer_with_fallbacks, parse_gold
from cgd_trainer.templates import EVAL_SYSTEM_PROMPT
from servers import ScriptedServer

ROOT = Path(__file__).resolve().parents[2]
MINI = str(Path(__file__).parents[1] / "fixtures" / "mini_math.jsonl")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text("utf-8").splitlines() if line.strip()]


# --- answer extraction -----------------------------------------------------------------------------------------------

GSM8K_STYLE = (
    "Natalia sold 48 / 2 = 24 clips in May.\n"
    "Natalia sold 48 + 24 = 72 clips altogether in April and May.\n"
    "The answer is 72."
)


@pytest.mark.parametrize(
    ("output", "answer", "rule"),
    [
        # Minerva's format comes first, even before a box written earlier.
        (
            r"so \boxed{3}. Final Answer: The final answer is $\frac{1}{2}$. I hope it is correct.",
            r"\frac{1}{2}",
            "final_answer",
        ),
        # A box wins over "the answer is" and over later numbers.
        (r"The answer is 4? No: 2 + 3 = \boxed{5}, checked 2 times.", "5", "boxed"),
        (GSM8K_STYLE, "72", "answer_is"),
        # After "the answer is": the rest of the output, cleaned the harness's way (spaces and "$" dropped). The
        # harness removes only the unit words of its list ("cm", not "dollars"), so "18 dollars" stays whole.
        (
            r"So the answer is $\frac{3}{4}$, since 6 of 8 slices were eaten.",
            r"\frac{3}{4},since6of8sliceswereeaten",
            "answer_is",
        ),
        ("He pays 3 * 6 = 18 dollars. The answer is: 18 dollars.", "18dollars", "answer_is"),
        # "the final answer is" is not "the answer is": its own rule, the rest of the output ("as" is a unit word).
        ("Checking both ends, the final answer is [1, 5), as 2 <= x + 1 < 6.", "[1,5),2<=x+1<6", "final_answer_is"),
        # A box cut off by the token limit is read to the end of the output; without a box, the last number (every
        # comma deleted).
        (r"Total: 1,072 marbles, so \boxed{1", "1", "boxed"),
        ("Adding them up gives 1,072 marbles in total", "1072", "last_number"),
        ("I cannot solve this.", None, None),
    ],
)
def test_harness_extraction_order(output, answer, rule):
    assert extract_answer_with_fallbacks(output) == (answer, rule)


# Each expected reading below is what the harness's own code gives (QwenLM/Qwen2.5-Math, `evaluation/math_eval.py`
# then `parser.extract_answer` and `parser.strip_string`, run on these strings).


def test_minerva_rule_needs_the_i_hope_tail():
    # Without "$. I hope", "final answer is $...$" is not the Minerva rule: a later box wins...
    assert extract_answer_with_fallbacks("The final answer is $7$.\n\nWait: 3 + 5 = \\boxed{8}") == ("8", "boxed")
    # ...and without a box the phrase is read by the plain "final answer is" rule (the rest of the output).
    assert extract_answer_with_fallbacks(r"The final answer is $\frac{1}{2}$.") == (r"\frac{1}{2}", "final_answer_is")
    # With the tail: the first such phrase, case-sensitive.
    two = "The final answer is $2$. I hope it is correct.\nThe final answer is $3$. I hope it is correct."
    assert extract_answer_with_fallbacks(two) == ("2", "final_answer")
    assert extract_answer_with_fallbacks("The Final Answer Is $3$. I hope it is correct.") == ("3", "last_number")


def test_answer_is_takes_the_rest_of_the_output():
    # Everything after the last "the answer is", to the end, cleaned: "9." loses its point, the spaces go.
    assert extract_answer_with_fallbacks("the answer is 9. That took 2 steps.") == ("9Thattook2steps", "answer_is")
    # A text with number words becomes the number they spell ("two" here), as word2number reads it.
    assert extract_answer_with_fallbacks("the answer is 9. That took two steps.") == ("2", "answer_is")
    gold = parse_gold("9")
    assert grade_sample("the answer is 9. That took 2 steps.", gold, "harness")["correct"] is False
    assert grade_sample("the answer is 9.", gold, "harness")["correct"] is True


def test_units_outside_the_harness_list_are_kept():
    assert extract_answer_with_fallbacks("the answer is 18 dollars.") == ("18dollars", "answer_is")
    assert grade_sample("the answer is 18 dollars.", parse_gold("18"), "harness")["correct"] is False
    # "cm" is in the harness's unit list, except on Minerva-Math, where the harness keeps every unit word.
    assert extract_answer_with_fallbacks("the answer is 18 cm.") == ("18", "answer_is")
    assert extract_answer_with_fallbacks("the answer is 18 cm.", keep_units=True) == ("18cm", "answer_is")
    for benchmark, extracted in (("minerva", "18cm"), ("minerva_math", "18cm"), ("gsm8k", "18"), (None, "18")):
        row = grade_sample("the answer is 18 cm.", parse_gold("18"), "harness", benchmark=benchmark)
        assert row["extracted"] == extracted, benchmark
    assert harness_keeps_units("Minerva-Math") and not harness_keeps_units("math500")


@pytest.mark.parametrize(
    ("output", "answer", "rule"),
    [
        # The text after the *last* "boxed", whatever it is part of: the inner box of a nested one, an unclosed group
        # (to the end), a brace-less answer up to the next `$`, or the word "boxed" in prose. `\fbox` is not a box.
        (r"\boxed{\boxed{5}}", "5", "boxed"),
        (r"so \boxed{\frac{1}{2", r"\frac{1}{2", "boxed"),
        (r"$\boxed 7 then 8$ ok", "7then8", "boxed"),
        ("I boxed it: 4 apples", "it:4", "boxed"),
        (r"\fbox{3} and 4", "4", "last_number"),
        # "he answer is" is case-sensitive and needs "he": "my answer is" or "ANSWER IS" fall through to the last
        # number.
        ("So my answer is 5, not 4.", "4", "last_number"),
        ("THE ANSWER IS 5, not 4.", "4", "last_number"),
        # The last number is read once every comma is deleted, not only thousands separators.
        ("The roots are 3,4", "34", "last_number"),
        # The output is cut at the harness's stop words, and the step tag "ки" is deleted.
        ("The answer is 5 ки<|im_end|>The answer is 7", "5", "answer_is"),
        ("所以答案是 5\n\n下一题 7", "5", "answer_is_zh"),
        # strip_string also cleans boxed answers: `\dfrac`, `x = `, `\%`, `^\circ`, units in `\text{}`, spaces; and
        # its quirks: "a" is a unit word, "and" is deleted everywhere.
        (r"\boxed{\dfrac{1}{2}}", r"\frac{1}{2}", "boxed"),
        (r"\boxed{x = 5}", "5", "boxed"),
        (r"\boxed{25\%}", "25", "boxed"),
        (r"\boxed{90^\circ}", "90", "boxed"),
        (r"\boxed{20 \text{ cm}}", "20", "boxed"),
        (r"\boxed{\{1, 2\}}", "{1,2}", "boxed"),
        (r"\boxed{2.50}", "2.50", "boxed"),
        (r"\boxed{2.00}", "2", "boxed"),
        (r"\boxed{3/4}", r"\frac{3}{4}", "boxed"),
        (r"\boxed{\frac12}", r"\frac{1}{2}", "boxed"),
        (r"\boxed{a^2 + b^2}", "^2+b^2", "boxed"),
        (r"\boxed{1 \text{ and } 2}", "12", "boxed"),
        (r"\boxed{}", None, None),
    ],
)
def test_harness_extraction_matches_the_harness(output, answer, rule):
    assert extract_answer_with_fallbacks(output) == (answer, rule)


def test_gsm8k_answer_without_box_is_right_under_harness_and_wrong_under_strict():
    gold = parse_gold("72")
    harness = grade_sample(GSM8K_STYLE, gold, "harness")
    assert harness["correct"] is True and harness["extracted"] == "72" and harness["extracted_by"] == "answer_is"
    strict = grade_sample(GSM8K_STYLE, gold, "strict")
    assert strict["correct"] is False and strict["extracted"] is None and strict["extracted_by"] is None
    # Every sample carries both gradings, whichever preset is reported.
    assert harness["correct_strict"] is strict["correct_strict"] is False
    assert harness["correct_harness"] is strict["correct_harness"] is True
    # A failed generation is wrong under every preset.
    assert grade_sample(None, gold, "harness") == {
        "extracted": None,
        "extracted_by": None,
        "correct": False,
        **{f"correct_{name}": False for name in PROTOCOLS},
    }


def test_score_samples_gives_the_accuracy_under_each_preset():
    gold = parse_gold("72")
    outputs = {"a": [GSM8K_STYLE, r"\boxed{72}"], "b": ["no idea", r"The answer is 7. \boxed{72}"]}
    rows = [
        {"id": pid, "sample": j, "error": None, **grade_sample(text, gold, "harness")}
        for pid, texts in outputs.items()
        for j, text in enumerate(texts)
    ]
    scores = score_samples(rows, ks=[1, 2])
    assert scores["accuracy"] == pytest.approx((2 / 2 + 1 / 2) / 2)
    assert scores["accuracy_by_protocol"] == pytest.approx({"harness": 0.75, "strict": (1 / 2 + 1 / 2) / 2})
    assert scores["pass@k"]["2"] == 1.0
    # Rows from before the presets (no `correct_<preset>`) still score, without a per-preset accuracy.
    assert score_samples([{"id": "a", "sample": 0, "correct": True}])["accuracy_by_protocol"] == {}


# --- preset defaults and overrides -----------------------------------------------------------------------------------


def test_preset_defaults_and_explicit_overrides():
    question = "What is 1 + 1?"
    strict = EvalConfig()
    assert strict.protocol == "strict" and strict.instruction == EVAL_SYSTEM_PROMPT
    harness = EvalConfig(protocol="harness")
    # The harnesses' instruction verbatim, as a system turn for chat models.
    assert HARNESS_INSTRUCTION == "Please reason step by step, and put your final answer within \\boxed{}."
    assert ev.build_prompt(question, harness, chat=True) == [
        {"role": "system", "content": HARNESS_INSTRUCTION},
        {"role": "user", "content": question},
    ]
    assert ev.build_prompt(question, harness, chat=False).startswith(HARNESS_INSTRUCTION + "\n\nProblem:\n")
    # Greedy pass@1 with the backend's stop ids (a local model's end-of-turn and eos tokens); completion prompts also
    # stop where the model starts a new problem.
    chat, completion = harness.sampling_for(chat=True), harness.sampling_for(chat=False)
    assert (chat.temperature, chat.n, chat.stop, chat.stop_token_ids) == (0.0, 1, None, None)
    assert completion.stop == ("\nProblem:",) and completion.stop_token_ids is None
    # The default preset stops completion prompts at a new problem too (it once sent none, and a base model's made-up
    # next problem was graded by its box); chat prompts get no stop strings.
    assert strict.sampling_for(chat=False).stop == ("\nProblem:",) and strict.sampling == strict.sampling_for(
        chat=True
    )

    # Explicit settings win over the preset's defaults.
    own = EvalConfig(protocol="harness", system_prompt="Solve it.", stop=[], stop_token_ids=[151645, 151643])
    assert own.instruction == "Solve it." and EvalConfig(protocol="harness", system_prompt="").instruction == ""
    assert own.sampling_for(chat=False).stop == () and own.sampling_for(chat=True).stop_token_ids == (151645, 151643)
    assert EvalConfig(protocol="harness", stop=["\n\n\n"]).sampling_for(chat=False).stop == ("\n\n\n",)
    assert new_problem_stops("Q: {question}\nA:") == ("\nQ:",)
    assert new_problem_stops("{instruction}\n\n{question}") == ()  # nothing to recognise a new problem by
    assert new_problem_stops("{instruction}\n\n### Question\n{question}\n\n### Answer\n") == ("\n### Question",)

    with pytest.raises(ValueError, match=r"`protocol` must be one of strict, harness, got 'harnes'"):
        EvalConfig(protocol="harnes")
    (parsed,) = eval_command.make_parser().parse_args_and_config(
        args=["--protocol", "harness", "--stop_token_ids", "128009", "--models", "m"]
    )
    assert parsed.protocol == "harness" and parsed.sampling.stop_token_ids == (128009,)


# --- a base model that goes on to write another problem --------------------------------------------------------------

RUNAWAY = "3x = 5 - 20 = -15, so x = \\boxed{-5}.\n\nProblem:\nWhat is 2 + 2?\n\nSolution:\n2 + 2 = \\boxed{4}."


def test_base_model_writing_another_problem(tmp_path):
    problems = tmp_path / "one.jsonl"
    problems.write_text('{"id": "neg", "problem": "Solve for x: 3x + 20 = 5.", "answer": "-5"}\n', "utf-8")
    with ScriptedServer(reply=lambda messages: RUNAWAY, model="base") as server:
        common = ["--models", "base", "--backend", "openai", "--base_url", server.base_url]
        common += ["--prompt_format", "completion", "--benchmarks", str(problems), "--plot", "false"]
        # Under either preset the prompt's problem header stops the output, so the made-up problem's box is never
        # read.
        for protocol in ("harness", "strict"):
            out = tmp_path / protocol
            summary = cli_main([*common, "--protocol", protocol, "--output_dir", str(out)])["summary"]
            assert server.bodies[-1]["stop"] == ["\nProblem:"]
            (row,) = read_jsonl(out / "samples.jsonl")
            assert row["output"] == "3x = 5 - 20 = -15, so x = \\boxed{-5}.\n"
            assert (row["extracted"], row["correct"], row["correct_strict"]) == ("-5", True, True)
            assert summary["results"]["base"]["one"]["accuracy"] == 1.0

        # Without stops (`stop: []` turns them off) the whole output comes back and the answer read is the *last*
        # box: the made-up problem's, graded wrong under both presets.
        for protocol, extra in (("strict", "stop: []\n"), ("harness", "stop: []\n")):
            out = tmp_path / f"{protocol}-no-stop"
            config = tmp_path / f"{protocol}.yaml"
            config.write_text(f"protocol: {protocol}\n{extra}", "utf-8")
            cli_main(["--config", str(config), *common, "--output_dir", str(out)])
            assert "stop" not in server.bodies[-1]
            (row,) = read_jsonl(out / "samples.jsonl")
            assert row["output"] == RUNAWAY and row["extracted"] == "4"
            assert row["correct"] is row["correct_strict"] is row["correct_harness"] is False


def test_stop_token_ids_reach_the_server(tmp_path):
    with ScriptedServer(reply=lambda messages: "The answer is 2.", model="qwen") as server:
        cli_main(
            ["--models", "qwen", "--backend", "openai", "--base_url", server.base_url, "--benchmarks", MINI]
            + ["--max_problems", "1", "--protocol", "harness", "--stop_token_ids", "151645", "151643"]
            + ["--plot", "false", "--output_dir", str(tmp_path)]
        )
        (body,) = server.bodies
        assert body["stop_token_ids"] == [151645, 151643] and "stop" not in body  # chat: no stop strings
        assert body["messages"][0] == {"role": "system", "content": HARNESS_INSTRUCTION}


# --- end to end: the report names the preset and shows both gradings -------------------------------------------------

SCRIPT = {  # mini_math problem -> output; GSM8K-style outputs without a box
    "frac": r"6 of 8 slices: \boxed{\dfrac{3}{4}}",  # boxed: right under both
    "neg": "3x = -15, so x = -5. The answer is -5.",  # no box: right under harness only
    "interval": "Final Answer: The final answer is $[1, 5)$. I hope it is correct.",  # right under harness only
    "int": "12 * 12 = 144",  # last number: right under harness only
    "percent": r"10 / 40 = \boxed{30\%}",  # wrong under both
}


# The fixture's question -> id, read once for the scripted server's replies.
MINI_IDS = {json.loads(line)["problem"]: json.loads(line)["id"] for line in Path(MINI).read_text("utf-8").splitlines()}


def _scripted_reply(messages):
    return SCRIPT.get(MINI_IDS.get(messages[-1]["content"], ""), "I do not know.")


def test_cgd_eval_report_names_the_preset_and_shows_both_gradings(tmp_path):
    with ScriptedServer(reply=_scripted_reply, model="student") as server:
        config = tmp_path / "eval.yaml"
        config.write_text(
            f"models: [student]\nbackend: openai\nbase_url: {server.base_url}\nbenchmarks: [{MINI}]\n"
            f"protocol: harness\nplot: false\noutput_dir: {tmp_path / 'out'}\n",
            "utf-8",
        )
        summary = cli_main(["--config", str(config)])["summary"]
    assert summary["config"]["protocol"] == "harness"
    scores = summary["results"]["student"]["mini_math"]
    assert scores["accuracy"] == pytest.approx(4 / 8)
    assert scores["accuracy_by_protocol"] == pytest.approx({"strict": 1 / 8, "harness": 4 / 8})
    rows = {row["id"]: row for row in read_jsonl(tmp_path / "out" / "samples.jsonl")}
    assert rows["neg"]["extracted_by"] == "answer_is" and rows["neg"]["correct_strict"] is False
    assert rows["interval"]["extracted_by"] == "final_answer" and rows["int"]["extracted_by"] == "last_number"
    assert all(row["correct"] is row["correct_harness"] for row in rows.values())

    report = (tmp_path / "out" / "report.md").read_text("utf-8")
    assert "Protocol: **harness**" in report and "Qwen2.5-Math, CFT and CGD" in report
    assert "| student | 50.0 | 50.0 |" in report  # the reported (harness) accuracy
    assert "## Gradings side by side" in report
    assert (
        "| student | strict | 12.5 | 12.5 |" in report and "| student | harness (reported) | 50.0 | 50.0 |" in report
    )


def test_cgd_eval_on_the_tiny_offline_model_names_the_preset(tiny_dirs, tmp_path):
    # The offline CPU setup of examples/eval/tiny-cpu.yaml, with the demo's tiny ChatML model (random weights).
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"models: [{{model: {tiny_dirs['chatml']}, label: tiny}}]\nbackend: transformers\nbenchmarks: [{MINI}]\n"
        f"max_problems: 3\nmax_new_tokens: 8\nprotocol: harness\noutput_dir: {tmp_path / 'out'}\n",
        "utf-8",
    )
    summary = cli_main(["--config", str(config)])["summary"]
    assert summary["config"]["protocol"] == "harness"
    by_preset = summary["results"]["tiny"]["mini_math"]["accuracy_by_protocol"]
    assert set(by_preset) == {"strict", "harness"}
    assert summary["results"]["tiny"]["mini_math"]["accuracy"] == by_preset["harness"]
    rows = read_jsonl(tmp_path / "out" / "samples.jsonl")
    assert len(rows) == 3 and all(row["prompt"][0]["content"] == HARNESS_INSTRUCTION for row in rows)
    assert all({"correct_strict", "correct_harness", "extracted_by"} <= set(row) for row in rows)
    report = (tmp_path / "out" / "report.md").read_text("utf-8")
    assert "Protocol: **harness**" in report and "| tiny | harness (reported) |" in report
    assert "| tiny | strict |" in report


# --- the Qwen2.5-Math recipes fit the model's 4,096-position window --------------------------------------------------

QWEN_MATH_WINDOW = 4096  # Qwen2.5-Math-7B's max_position_embeddings


@pytest.mark.parametrize("name", ["qwen2.5-math-7b.yaml", "aime-pass-at-k.yaml"])
def test_qwen_math_recipes_stay_inside_the_window(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    recipe = ROOT / "examples" / "eval" / name
    assert "VLLM_ALLOW_LONG_MAX_MODEL_LEN" not in recipe.read_text("utf-8")
    (config,) = eval_command.make_parser().parse_args_and_config(args=["--config", str(recipe)])
    assert config.protocol == "harness" and config.max_model_len == QWEN_MATH_WINDOW
    # The vLLM backend gives each request the budget that fits the engine's max_model_len: prompt + new tokens never
    # pass the window, whatever the prompt's length.
    for prompt_tokens in (60, 400, 2000, 4000):
        budget, error = fit_budget(config.max_new_tokens, prompt_tokens, config.max_model_len)
        assert error is None and prompt_tokens + budget <= QWEN_MATH_WINDOW


@pytest.mark.parametrize("name", ["llama-3.1-8b-instruct.yaml", "served.yaml", "select-checkpoint.yaml"])
def test_paper_recipes_use_the_harness_preset(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    (config,) = eval_command.make_parser().parse_args_and_config(
        args=["--config", str(ROOT / "examples" / "eval" / name)]
    )
    assert config.protocol == "harness" and config.instruction == HARNESS_INSTRUCTION


def test_cgd_eval_grades_minerva_with_its_unit_words_kept():
    # The runner passes each benchmark's name to the grading, so `minerva` keeps units as the harness does.
    from cgd_trainer.evaluation.benchmarks import Problem

    problem = Problem(id="p0", question="How long?", gold="18", gold_parsed=parse_gold("18"))
    rows = {
        name: ev._sample_row("m", name, problem, 0, "How long?", "the answer is 18 cm.", None, "k", "harness")
        for name in ("minerva", "gsm8k")
    }
    assert rows["minerva"]["extracted"] == "18cm" and rows["gsm8k"]["extracted"] == "18"
