"""`cgd build`: every condition, the derangement, ratio subsets, filters, import/export, summary, card and CLI."""

import json
import re
from pathlib import Path

import pytest
import yaml
from datasets import load_dataset
from huggingface_hub import DatasetCard

from cgd_trainer.commands.build import run as cli_main
from cgd_trainer.conditions import (
    CONDITIONS,
    BuildConfig,
    Decontaminator,
    build,
    derangement,
    filter_correct_records,
    largest_ratio_size,
    normalize_text,
    parse_ratio,
    ratio_counts,
    render_card,
    sample_ratio_subsets,
    split_cft_input,
    word_ngrams,
)
from cgd_trainer.demo.problems import demo_data_path, generate_records
from cgd_trainer.records import parse_verdict
from cgd_trainer.templates import CFT_INSTRUCTION, DEFAULT_INSTRUCTION, GENERIC_CRITIQUE, NO_CRITIQUE_INSTRUCTION

# Seven handwritten records: three right, three wrong, one without a verdict (r6), one without a reference (r5).
RECORDS = [
    {
        "id": "r1",
        "prompt": "A shop sells pencils in packs of 12. Mia buys 4 packs and gives away 9 pencils. How many pencils "
        "does she have left?",
        "initial_response": "4 × 12 = 48 pencils, and 48 − 9 = 39. The answer is 39.",
        "critique": "Both steps are right: 4 packs of 12 make 48, and 48 − 9 = 39.\nConclusion: right",
        "refined_response": "Mia buys 4 × 12 = 48 pencils and keeps 48 − 9 = 39.\nThe answer is \\boxed{39}.",
        "verdict": "right",
        "reference_answer": "39",
    },
    {
        "id": "r2",
        "prompt": "A train travels 60 km per hour for 3 hours and then 25 km more. How far does it travel in total?",
        "initial_response": "60 × 3 = 180 km. The answer is 180.",
        "critique": "The 180 km of the first part are right, but the last 25 km are not added.\n**Conclusion: wrong**",
        "refined_response": "First part: 60 × 3 = 180 km. In total: 180 + 25 = 205 km.\nThe answer is \\boxed{205}.",
        "verdict": "wrong",
        "reference_answer": "205",
    },
    {
        "id": "r3",
        "prompt": "Ava has 5 boxes with 8 shells in each and loses 6 shells. How many shells remain?",
        "initial_response": "5 × 8 = 45, then 45 − 6 = 39. The answer is 39.",
        "critique": "5 × 8 is 40, not 45, so the final answer is off by 5.\nConclusion: wrong.",
        "refined_response": "5 × 8 = 40 shells, and 40 − 6 = 34 remain.\nThe answer is \\boxed{34}.",
        "verdict": "wrong",
        "reference_answer": "34",
    },
    {
        "id": "r4",
        "prompt": "Leo reads 15 pages a day for 6 days. How many pages does he read?",
        "initial_response": "15 × 6 = 90. The answer is 90.",
        "critique": "The product 15 × 6 = 90 is correct.\nConclusion: Right",
        "refined_response": "He reads 15 × 6 = 90 pages.\nThe answer is \\boxed{90}.",
        "verdict": "right",
        "reference_answer": "90",
    },
    {
        "id": "r5",
        "prompt": "A tank holds 120 litres, and 35 litres are drained from it twice. How much water is left?",
        "initial_response": "120 − 35 = 85. The answer is 85.",
        "critique": "Only one draining is subtracted, but the tank is drained twice.\nConclusion: wrong",
        "refined_response": "Drained: 2 × 35 = 70 litres. Left: 120 − 70 = 50 litres.\nThe answer is \\boxed{50}.",
        "verdict": "wrong",
        "reference_answer": None,
    },
    {
        "id": "r6",
        "prompt": "What is 7 times 8?",
        "initial_response": "7 × 8 = 56.",
        "critique": "The multiplication looks fine.",
        "refined_response": "7 × 8 = 56, so the answer is \\boxed{56}.",
        "verdict": None,
        "reference_answer": "56",
    },
    {
        "id": "r7",
        "prompt": "Zara has 3 bags of 14 marbles. How many marbles does she have?",
        "initial_response": "3 × 14 = 42. The answer is 42.",
        "critique": "3 × 14 = 42 is right.\nConclusion: right",
        "refined_response": "3 × 14 = 42 marbles.\nThe answer is \\boxed{42}.",
        "verdict": "right",
        "reference_answer": "42",
    },
]
BY_ID = {record["id"]: record for record in RECORDS}
CGD_COLUMNS = ["id", "prompt", "initial_response", "critique", "refined_response", "verdict", "reference_answer"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def run_build(tmp_path, records=RECORDS, name="out", **settings):
    source = write_jsonl(tmp_path / f"{name}-input.jsonl", records)
    output_dir = tmp_path / name
    summary = build(BuildConfig(input=str(source), output_dir=str(output_dir), **settings))
    return summary, output_dir


def user(content):
    return [{"role": "user", "content": content}]


def assistant(content):
    return [{"role": "assistant", "content": content}]


def cgd_sections(record, critique=None):
    return (
        f"### Question\n{record['prompt']}\n\n### Student's initial answer\n{record['initial_response']}\n\n"
        f"### Teacher's critique\n{record['critique'] if critique is None else critique}"
    )


@pytest.fixture(scope="module")
def full_build(tmp_path_factory):
    """Every condition, the default ratios and both exports, built once from the seven records."""
    return run_build(tmp_path_factory.mktemp("full"), export=["alpaca", "messages"])


# --------------------------------------------------------------------------------------------------------------------
# Building blocks.
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("The steps hold.\nConclusion: right", "right"),
        ("Off by one.\nconclusion: WRONG.", "wrong"),
        ("Fine.\n**Conclusion: right**", "right"),
        ("Fine.\n**Conclusion:** wrong", "wrong"),
        ("Fine.\n> *Conclusion*: Right.", "right"),
        ("The sum is 5.\nConclusion: wrong [END]", "wrong"),
        ("Conclusion: right\nOn second thought the sign is off.\nConclusion: wrong", "wrong"),
        ("Conclusion: right\nA closing remark after the verdict.", "right"),
        ("Conclusion: right, but the units are missing.", None),
        ("The conclusion: it is right.", None),
        ("No verdict here.", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_ratios():
    assert parse_ratio("75/25") == (75, 25)
    assert parse_ratio(" 0 / 100 ") == (0, 100)
    for bad in ("60/30", "75:25", "75", "a/b", "-25/125"):
        with pytest.raises(ValueError, match=re.escape(f"Bad ratio {bad!r}")):
            parse_ratio(bad)
    # R% of the size, rounded half up.
    assert ratio_counts(3, (75, 25)) == (2, 1)
    assert ratio_counts(3, (50, 50)) == (2, 1)
    assert ratio_counts(3, (25, 75)) == (1, 2)
    assert ratio_counts(2, (25, 75)) == (1, 1)  # 0.5 rounds up, not to the even 0
    assert ratio_counts(10, (25, 75)) == (3, 7)
    assert ratio_counts(10, (0, 100)) == (0, 10)
    assert largest_ratio_size([(100, 0), (75, 25), (0, 100)], 3, 5) == 3
    assert largest_ratio_size([(75, 25)], 3, 5) == 4  # 3 right + 1 wrong
    assert largest_ratio_size([(0, 100)], 3, 0) == 0


def test_sample_ratio_subsets():
    verdicts = ["right", "wrong", None, "right", "wrong", "wrong", "right", None, "wrong", "right"]
    subsets = sample_ratio_subsets(verdicts, [(100, 0), (50, 50), (25, 75), (0, 100)], 4, seed=0)
    assert subsets == sample_ratio_subsets(verdicts, [(100, 0), (50, 50), (25, 75), (0, 100)], 4, seed=0)
    right = {i for i, v in enumerate(verdicts) if v == "right"}
    for ratio, indices in subsets.items():
        assert indices == sorted(indices) and len(indices) == 4
        assert sum(i in right for i in indices) == ratio_counts(4, ratio)[0]
        assert not {2, 7} & set(indices)  # no verdict, never drawn
    # Nested: the right records of 50/50 are among those of 100/0, the wrong ones of 25/75 among those of 0/100.
    assert set(subsets[(50, 50)]) & right <= set(subsets[(100, 0)])
    assert set(subsets[(25, 75)]) - right <= set(subsets[(0, 100)])
    with pytest.raises(ValueError, match=r"needs 5 records with a right and 0 with a wrong verdict, but there are 4"):
        sample_ratio_subsets(verdicts, [(100, 0)], 5, seed=0)


def test_derangement():
    for n in (2, 3, 7, 50):
        for seed in range(5):
            sources = derangement(n, seed)
            assert sorted(sources) == list(range(n))
            assert all(source != index for index, source in enumerate(sources))
            assert derangement(n, seed) == sources
    assert derangement(2, 0) == [1, 0]
    assert derangement(10, 1) != derangement(10, 2)
    assert derangement(7, 42) == [5, 3, 6, 4, 2, 1, 0]
    with pytest.raises(ValueError, match="at least 2 records, got 1"):
        derangement(1, 0)


def test_derangement_avoids_identical_groups():
    groups = ["same", "same", "other", "third", "same", "fourth"]  # "same" holds half: every record can avoid it
    for seed in range(20):
        sources = derangement(6, seed, groups)
        assert sorted(sources) == list(range(6))
        assert all(groups[source] != groups[index] for index, source in enumerate(sources))
    # Three of four share a text: 2 * 3 - 4 = 2 records must receive it, and no more do.
    groups = ["a", "a", "a", "b"]
    for seed in range(20):
        sources = derangement(4, seed, groups)
        assert all(source != index for index, source in enumerate(sources))
        assert sum(groups[source] == groups[index] for index, source in enumerate(sources)) == 2
    # All identical: still a derangement.
    assert all(source != index for index, source in enumerate(derangement(3, 0, ["x"] * 3)))


def test_normalize_and_ngrams():
    assert normalize_text("  What's 3.5 +\tfour_thirds?  ") == "what s 3 5 four thirds"
    assert word_ngrams("A b, C d!", 3) == {"a b c", "b c d"}
    assert word_ngrams("a b", 3) == set()
    checker = Decontaminator(n=3)
    checker.add(["One two three four.", "Tiny one"], "eval.jsonl")
    assert checker.match("zero ONE two, three") == "eval.jsonl"
    assert checker.match("one two four") is None
    assert checker.match("tiny, ONE!") == "eval.jsonl"  # shorter than n words: whole text compared
    assert checker.match("tiny") is None


def test_split_cft_input():
    assert split_cft_input("Question:\nWhat is 2 + 3?\nSolution:\n5, and the Solution: line stays.") == (
        "What is 2 + 3?",
        "5, and the Solution: line stays.",
    )
    with pytest.raises(ValueError, match="the answer marker 'Solution:' is missing"):
        split_cft_input("Question: what? Answer: 4")
    with pytest.raises(ValueError, match="text comes before the question marker"):
        split_cft_input("Hi. Question: what? Solution: 4")


# --------------------------------------------------------------------------------------------------------------------
# Conditions.
# --------------------------------------------------------------------------------------------------------------------


def test_all_files_written(full_build):
    summary, out = full_build
    ratios = ["ratio_100_0", "ratio_75_25", "ratio_50_50", "ratio_25_75", "ratio_0_100"]
    assert list(summary["conditions"]) == [*CONDITIONS, *ratios]
    names = [*CONDITIONS, *ratios]
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted(
        [f"{n}.jsonl" for n in names] + ["README.md", "summary.json"]
    )
    assert sorted(p.name for p in (out / "alpaca").iterdir()) == sorted(
        [f"{n}.json" for n in names] + ["dataset_info.json"]
    )
    assert sorted(p.name for p in (out / "messages").iterdir()) == sorted(f"{n}.jsonl" for n in names)


def test_cgd_file(full_build):
    _, out = full_build
    lines = (out / "cgd.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines[0] == (
        '{"id": "r1", "prompt": "A shop sells pencils in packs of 12. Mia buys 4 packs and gives away 9 pencils. How '
        'many pencils does she have left?", "initial_response": "4 × 12 = 48 pencils, and 48 − 9 = 39. The answer is '
        '39.", "critique": "Both steps are right: 4 packs of 12 make 48, and 48 − 9 = 39.\\nConclusion: right", '
        '"refined_response": "Mia buys 4 × 12 = 48 pencils and keeps 48 − 9 = 39.\\nThe answer is \\\\boxed{39}.", '
        '"verdict": "right", "reference_answer": "39"}'
    )
    assert [json.loads(line) for line in lines] == RECORDS


def test_cgd_file_loads_with_datasets(full_build):
    _, out = full_build
    dataset = load_dataset("json", data_files=str(out / "cgd.jsonl"), split="train")
    assert dataset.column_names == CGD_COLUMNS
    for column in ("prompt", "initial_response", "critique", "refined_response"):
        assert dataset.features[column].dtype == "string"
    assert dataset[1]["refined_response"] == RECORDS[1]["refined_response"]


def test_generic_critique_file(full_build):
    _, out = full_build
    rows = read_jsonl(out / "generic_critique.jsonl")
    assert rows[1] == {**RECORDS[1], "critique": GENERIC_CRITIQUE}
    assert [row["critique"] for row in rows] == [GENERIC_CRITIQUE] * 7
    assert "Conclusion" not in GENERIC_CRITIQUE


def test_irrelevant_critique_file(full_build, tmp_path):
    _, out = full_build
    rows = read_jsonl(out / "irrelevant_critique.jsonl")
    # The seeded derangement (seed 42): r1 reads r6's critique, r2 reads r4's, ...
    assert [(row["id"], row["critique_source_id"]) for row in rows] == [
        ("r1", "r6"),
        ("r2", "r4"),
        ("r3", "r7"),
        ("r4", "r5"),
        ("r5", "r3"),
        ("r6", "r2"),
        ("r7", "r1"),
    ]
    assert rows[0] == {**RECORDS[0], "critique": BY_ID["r6"]["critique"], "critique_source_id": "r6"}
    for row in rows:
        assert row["critique"] == BY_ID[row["critique_source_id"]]["critique"] != BY_ID[row["id"]]["critique"]
        assert row["verdict"] == BY_ID[row["id"]]["verdict"]  # the record's own verdict is kept
    other, _ = run_build(tmp_path, conditions=["irrelevant_critique"], ratios=[], seed=7)
    rows_7 = read_jsonl(tmp_path / "out" / "irrelevant_critique.jsonl")
    assert [row["critique_source_id"] for row in rows_7] != [row["critique_source_id"] for row in rows]
    assert other["conditions"]["irrelevant_critique"]["same_critique_text"] == 0


def test_irrelevant_critique_avoids_identical_text(tmp_path):
    records = [dict(record) for record in RECORDS[:4]]
    records[1]["critique"] = records[0]["critique"]  # r1 and r2 share a critique text
    for seed in range(10):
        summary, out = run_build(
            tmp_path, records, name=f"s{seed}", conditions=["irrelevant_critique"], ratios=[], seed=seed
        )
        rows = read_jsonl(out / "irrelevant_critique.jsonl")
        assert all(row["critique_source_id"] != row["id"] for row in rows)
        # r1 never receives r2's critique (the same text as its own), nor r2 r1's.
        assert all(row["critique"] != record["critique"] for row, record in zip(rows, records))
        assert summary["conditions"]["irrelevant_critique"]["same_critique_text"] == 0


def test_prompt_completion_files(full_build):
    _, out = full_build
    r2 = BY_ID["r2"]
    no_critique = read_jsonl(out / "no_critique.jsonl")
    assert no_critique[1] == {
        "id": "r2",
        "prompt": user(
            NO_CRITIQUE_INSTRUCTION + "\n\n### Question\nA train travels 60 km per hour for 3 hours and then 25 km "
            "more. How far does it travel in total?\n\n### Student's initial answer\n60 × 3 = 180 km. The answer is "
            "180."
        ),
        "completion": assistant(r2["refined_response"]),
    }
    assert [row["id"] for row in no_critique] == [record["id"] for record in RECORDS]

    distilled = read_jsonl(out / "distilled_sft.jsonl")
    assert distilled[1] == {"id": "r2", "prompt": user(r2["prompt"]), "completion": assistant(r2["refined_response"])}

    sft = read_jsonl(out / "sft.jsonl")
    assert [row["id"] for row in sft] == ["r1", "r2", "r3", "r4", "r6", "r7"]  # r5 has no reference
    assert sft[1] == {"id": "r2", "prompt": user(r2["prompt"]), "completion": assistant("205")}

    cft = read_jsonl(out / "cft.jsonl")
    assert cft[1] == {
        "id": "r2",
        "prompt": user(
            CFT_INSTRUCTION + "\n\n### Question\n" + r2["prompt"] + "\n\n### Student's answer\n60 × 3 = 180 km. The "
            "answer is 180."
        ),
        "completion": assistant(
            "The 180 km of the first part are right, but the last 25 km are not added.\n**Conclusion: wrong**"
        ),
    }
    assert "`Conclusion: right`" in CFT_INSTRUCTION and "`Conclusion: wrong`" in CFT_INSTRUCTION
    # TRL reads these as conversational prompt-completion data.
    dataset = load_dataset("json", data_files=str(out / "cft.jsonl"), split="train")
    assert dataset.column_names == ["id", "prompt", "completion"]


def test_sft_skipped_without_references(tmp_path):
    records = [{k: v for k, v in record.items() if k != "reference_answer"} for record in RECORDS]
    summary, out = run_build(tmp_path, records, conditions=["cgd", "sft"], ratios=[])
    assert summary["conditions"]["sft"] == {"skipped": "no record has a reference answer (column 'reference_answer')"}
    assert not (out / "sft.jsonl").exists()
    assert read_jsonl(out / "cgd.jsonl")[0] == {k: v for k, v in RECORDS[0].items() if k != "reference_answer"}
    assert "`sft` (no record has a reference answer" in (out / "README.md").read_text()


def test_ratio_subsets(full_build, tmp_path):
    summary, out = full_build
    assert summary["ratios"] == {"right": 3, "wrong": 3, "no_verdict": 1, "size": 3}
    expected = {
        "ratio_100_0": ["r1", "r4", "r7"],
        "ratio_75_25": ["r1", "r5", "r7"],
        "ratio_50_50": ["r1", "r5", "r7"],
        "ratio_25_75": ["r3", "r5", "r7"],
        "ratio_0_100": ["r2", "r3", "r5"],
    }
    for name, ids in expected.items():
        rows = read_jsonl(out / f"{name}.jsonl")
        assert [row["id"] for row in rows] == ids
        assert rows == [BY_ID[i] for i in ids]
        entry = summary["conditions"][name]
        right = sum(BY_ID[i]["verdict"] == "right" for i in ids)
        assert (entry["records"], entry["right"], entry["wrong"], entry["verdicts"]["right"]) == (
            3,
            right,
            3 - right,
            right,
        )
    assert summary["conditions"]["ratio_75_25"]["ratio"] == "75/25"
    # An explicit size; one the data cannot give fails with the counts.
    summary_2, out_2 = run_build(tmp_path, conditions=["cgd"], ratios=["50/50"], ratio_size=2)
    assert [row["id"] for row in read_jsonl(out_2 / "ratio_50_50.jsonl")] == ["r5", "r7"]
    with pytest.raises(ValueError, match=r"The ratio 100/0 at ratio_size=4 needs 4 records with a right"):
        run_build(tmp_path, name="too-big", conditions=["cgd"], ratio_size=4)


# --------------------------------------------------------------------------------------------------------------------
# Filters.
# --------------------------------------------------------------------------------------------------------------------


def test_decontamination(tmp_path):
    eval_jsonl = write_jsonl(
        tmp_path / "eval.jsonl",
        [
            # Shares the 13 words "mia buys 4 packs and gives away 9 pencils how many pencils does" with r1.
            {"problem": "WHY? Mia buys 4 packs, and gives away 9 pencils! How many pencils does she keep?"},
            # Shares only the 12 words "train travels 60 km per hour for 3 hours and then 25" with r2.
            {"problem": "Every train travels 60 km per hour for 3 hours and then 25 minutes pass."},
        ],
    )
    eval_json = tmp_path / "eval.json"  # a JSON list with a `question` column (the fallback)
    eval_json.write_text(json.dumps([{"question": "what is 7 TIMES 8"}, {"question": "What is 7 times 9?"}]))
    summary, out = run_build(tmp_path, conditions=["cgd"], ratios=[], decontaminate=[str(eval_jsonl), str(eval_json)])
    report = summary["filters"]["decontamination"]
    assert report == {
        "ngram": 13,
        "files": {
            str(eval_jsonl): {"questions": 2, "column": "problem"},
            str(eval_json): {"questions": 2, "column": "question"},
        },
        "dropped": 2,
        "dropped_by_file": {str(eval_jsonl): 1, str(eval_json): 1},
        "dropped_ids": ["r1", "r6"],
    }
    assert [row["id"] for row in read_jsonl(out / "cgd.jsonl")] == ["r2", "r3", "r4", "r5", "r7"]
    assert summary["records_after_filters"] == 5
    # With 12-grams the train question overlaps too.
    summary_12, _ = run_build(
        tmp_path, name="n12", conditions=["cgd"], ratios=[], decontaminate=[str(eval_jsonl)], ngram=12
    )
    assert summary_12["filters"]["decontamination"]["dropped_ids"] == ["r1", "r2"]
    bad = write_jsonl(tmp_path / "bad-eval.jsonl", [{"text": "What is 7 times 8?"}])
    with pytest.raises(ValueError, match=r"no question column among \['problem', 'question', 'prompt'\]"):
        run_build(tmp_path, name="bad", conditions=["cgd"], ratios=[], decontaminate=[str(bad)])


def test_everything_filtered_out(tmp_path):
    eval_file = write_jsonl(tmp_path / "eval.jsonl", [{"problem": record["prompt"]} for record in RECORDS])
    with pytest.raises(ValueError, match=r"No record of .* is left after filtering"):
        run_build(tmp_path, decontaminate=[str(eval_file)])


def test_stale_files_are_reported(tmp_path, caplog):
    run_build(tmp_path, conditions=["cgd", "sft"], ratios=["50/50"])
    with caplog.at_level("WARNING", logger="cgd_trainer.conditions.runner"):
        summary, out = run_build(tmp_path, conditions=["cgd"], ratios=[])
    assert "holds files from an earlier build that this one did not write: ['ratio_50_50.jsonl', 'sft.jsonl']" in (
        caplog.text
    )
    assert list(summary["conditions"]) == ["cgd"]
    assert "config_name: sft" not in (out / "README.md").read_text()


def test_filter_correct_counts():
    records = [dict(record) for record in RECORDS]
    answers = {"r1": True, "r2": False, "r3": None, "r4": True, "r6": True, "r7": True}

    def grade(prediction, gold):
        return answers[next(r["id"] for r in records if r["refined_response"] == prediction)]

    kept, report = filter_correct_records(records, grade=grade)
    assert [record["id"] for record in kept] == ["r1", "r4", "r6", "r7"]
    assert report == {"kept": 4, "dropped": {"no_reference": 1, "incorrect": 1, "unparsable_reference": 1}}


def test_filter_correct_with_math_verify(tmp_path):
    records = [dict(record) for record in RECORDS]
    records[2]["reference_answer"] = "35"  # r3's refined answer says 34
    summary, out = run_build(tmp_path, records, conditions=["cgd"], ratios=[], filter_correct=True)
    assert summary["filters"]["filter_correct"] == {
        "kept": 5,
        "dropped": {"no_reference": 1, "incorrect": 1, "unparsable_reference": 0},
    }
    assert [row["id"] for row in read_jsonl(out / "cgd.jsonl")] == ["r1", "r2", "r4", "r6", "r7"]


# --------------------------------------------------------------------------------------------------------------------
# Import and export.
# --------------------------------------------------------------------------------------------------------------------

CFT_ROWS = [
    {
        "instruction": "Please critique whether the following solution to the question is correct.",
        "input": "Question:\nWhat is 2 + 3?\n\nSolution:\n2 + 3 = 6. The answer is 6.",
        "output": "The sum of 2 and 3 is 5, not 6.\nConclusion: wrong [END]",
    },
    {
        "instruction": "Please critique whether the following solution to the question is correct.",
        "input": "Question: How many legs do 3 cats have?\nSolution: 3 × 4 = 12.",
        "output": "Each cat has 4 legs, so 12 is right.\n\nConclusion: right\n",
    },
    {
        "instruction": "Please critique whether the following solution to the question is correct.",
        "input": "Question:\nName a prime number.\nSolution:\n7",
        "output": "7 is prime.",
    },
]


def test_cft_import(tmp_path):
    source = write_jsonl(tmp_path / "cft.jsonl", CFT_ROWS)
    summary = build(BuildConfig(input=str(source), input_format="cft", output_dir=str(tmp_path / "out")))
    out = tmp_path / "out"
    assert read_jsonl(out / "imported.jsonl") == [
        {
            "id": "0",
            "prompt": "What is 2 + 3?",
            "initial_response": "2 + 3 = 6. The answer is 6.",
            "critique": "The sum of 2 and 3 is 5, not 6.\nConclusion: wrong [END]",
            "verdict": "wrong",
        },
        {
            "id": "1",
            "prompt": "How many legs do 3 cats have?",
            "initial_response": "3 × 4 = 12.",
            "critique": "Each cat has 4 legs, so 12 is right.\n\nConclusion: right",
            "verdict": "right",
        },
        {
            "id": "2",
            "prompt": "Name a prime number.",
            "initial_response": "7",
            "critique": "7 is prime.",
            "verdict": None,
        },
    ]
    assert read_jsonl(out / "cft.jsonl")[0] == {
        "id": "0",
        "prompt": user(
            CFT_INSTRUCTION + "\n\n### Question\nWhat is 2 + 3?\n\n### Student's answer\n2 + 3 = 6. The answer is 6."
        ),
        "completion": assistant("The sum of 2 and 3 is 5, not 6.\nConclusion: wrong [END]"),
    }
    assert summary["imported"] == {"file": "imported.jsonl", "records": 3}
    assert summary["input"]["ignored_columns"] == ["instruction"]
    assert summary["conditions"]["cft"]["verdicts"] == {"right": 1, "wrong": 1, "none": 1, "right_share": 0.5}
    for name in ("cgd", "distilled_sft", "no_critique", "irrelevant_critique", "generic_critique"):
        assert summary["conditions"][name]["skipped"].startswith("the input has no refined answers")
    assert summary["conditions"]["sft"]["skipped"].startswith("no record has a reference answer")
    assert summary["ratios"] == {"skipped": "the input has no refined answers"}
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "cft.jsonl", "imported.jsonl", "summary.json"]


def test_cft_import_missing_marker(tmp_path):
    rows = [dict(row) for row in CFT_ROWS]
    rows[1]["input"] = "Q: How many legs do 3 cats have?\nA: 12"
    source = write_jsonl(tmp_path / "cft.jsonl", rows)
    message = re.escape(f"{source}, record 1, field 'input': the question marker 'Question:' is missing")
    with pytest.raises(ValueError, match=message):
        build(BuildConfig(input=str(source), input_format="cft", output_dir=str(tmp_path / "out")))
    # Other markers are a setting away.
    rows = [{**row, "input": row["input"].replace("Question:", "Problem:")} for row in CFT_ROWS]
    source = write_jsonl(tmp_path / "cft-2.jsonl", rows)
    summary = build(
        BuildConfig(
            input=str(source), input_format="cft", output_dir=str(tmp_path / "out-2"), cft_question_marker="Problem:"
        )
    )
    assert summary["conditions"]["cft"]["records"] == 3


def test_alpaca_and_messages_export(full_build):
    summary, out = full_build
    r2 = BY_ID["r2"]
    cgd = json.loads((out / "alpaca" / "cgd.json").read_text(encoding="utf-8"))
    assert cgd[1] == {
        "instruction": DEFAULT_INSTRUCTION,
        "input": "### Question\nA train travels 60 km per hour for 3 hours and then 25 km more. How far does it "
        "travel in total?\n\n### Student's initial answer\n60 × 3 = 180 km. The answer is 180.\n\n"
        "### Teacher's critique\nThe 180 km of the first part are right, but the last 25 km are not added.\n"
        "**Conclusion: wrong**",
        "output": r2["refined_response"],
    }
    sft = json.loads((out / "alpaca" / "sft.json").read_text(encoding="utf-8"))
    assert sft[1] == {"instruction": r2["prompt"], "input": "", "output": "205"}
    info = json.loads((out / "alpaca" / "dataset_info.json").read_text(encoding="utf-8"))
    assert list(info) == list(summary["conditions"])
    assert info["cgd"] == {
        "file_name": "cgd.json",
        "columns": {"prompt": "instruction", "query": "input", "response": "output"},
    }
    messages = read_jsonl(out / "messages" / "cgd.jsonl")
    assert messages[1] == {
        "messages": user(DEFAULT_INSTRUCTION + "\n\n" + cgd_sections(r2)) + assistant(r2["refined_response"])
    }
    no_critique = read_jsonl(out / "messages" / "no_critique.jsonl")
    assert no_critique[1]["messages"][0] == read_jsonl(out / "no_critique.jsonl")[1]["prompt"][0]
    assert summary["exports"]["alpaca"]["not_round_trippable"] == {}


def test_alpaca_round_trip(full_build, tmp_path):
    _, out = full_build
    for name, critiques in (
        ("cgd", [record["critique"] for record in RECORDS]),
        ("irrelevant_critique", [row["critique"] for row in read_jsonl(out / "irrelevant_critique.jsonl")]),
    ):
        config = BuildConfig(
            input=str(out / "alpaca" / f"{name}.json"),
            input_format="alpaca",
            output_dir=str(tmp_path / name),
            conditions=["cgd"],
            ratios=[],
        )
        summary = build(config)
        rows = read_jsonl(tmp_path / name / "cgd.jsonl")
        assert rows == [
            {
                "id": str(index),
                "prompt": record["prompt"],
                "initial_response": record["initial_response"],
                "critique": critique,
                "refined_response": record["refined_response"],
                "verdict": parse_verdict(critique),
            }
            for index, (record, critique) in enumerate(zip(RECORDS, critiques))
        ]
        assert summary["input"]["verdict_source"] == "parsed from the critiques"
    assert [row["verdict"] for row in read_jsonl(tmp_path / "cgd" / "cgd.jsonl")] == [r["verdict"] for r in RECORDS]
    # A prompt-completion export holds no CGD record.
    config = BuildConfig(input=str(out / "alpaca" / "sft.json"), input_format="alpaca", output_dir=str(tmp_path / "x"))
    with pytest.raises(ValueError, match=r"sft.json, record 0, field 'input': the text is not laid out"):
        build(config)


# --------------------------------------------------------------------------------------------------------------------
# Bad input and settings.
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "index, field, value, message",
    [
        (2, "refined_response", None, "record 2, field 'refined_response': the value is missing (null)"),
        (3, "refined_response", "  ", "record 3, field 'refined_response': the text is empty"),
        (0, "prompt", "", "record 0, field 'prompt': the text is empty"),
        (1, "verdict", "maybe", "record 1, field 'verdict': expected 'right', 'wrong' or null, got 'maybe'"),
        (4, "id", "r1", "record 4, field 'id': the id 'r1' is also the id of record 0"),
        (5, "critique", None, "record 5, field 'critique': the value is missing (null)"),
    ],
)
def test_bad_records(tmp_path, index, field, value, message):
    records = [dict(record) for record in RECORDS]
    records[index][field] = value
    source = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(ValueError, match=re.escape(f"{source}, {message}")):
        build(BuildConfig(input=str(source), output_dir=str(tmp_path / "out")))


def test_missing_column_and_custom_names(tmp_path):
    records = [{k: v for k, v in record.items() if k != "critique"} for record in RECORDS]
    source = write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(ValueError, match=r"record 0, field 'critique': the column is missing .*`critique_field`"):
        build(BuildConfig(input=str(source), output_dir=str(tmp_path / "out")))
    # Other column names, no id and no verdict column: ids are row numbers, verdicts come from the critiques.
    renamed = [
        {
            "question": r["prompt"],
            "draft": r["initial_response"],
            "feedback": r["critique"],
            "answer": r["refined_response"],
            "gold": r["reference_answer"],
            "provenance": {"teacher": "a-teacher", "stage": "refine"},
        }
        for r in RECORDS
    ]
    summary, out = run_build(
        tmp_path,
        renamed,
        name="renamed",
        conditions=["cgd"],
        prompt_field="question",
        initial_response_field="draft",
        critique_field="feedback",
        refined_response_field="answer",
        reference_field="gold",
    )
    assert read_jsonl(out / "cgd.jsonl") == [{**r, "id": str(i)} for i, r in enumerate(RECORDS)]
    assert summary["input"]["verdict_source"] == "parsed from the critiques"
    assert summary["input"]["ignored_columns"] == ["provenance"]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"input": None}, "Set `input`"),
        ({"conditions": ["cgd", "dpo"]}, r"Unknown `conditions` \['dpo'\]"),
        ({"ratios": ["60/30"]}, "Bad ratio '60/30'"),
        ({"ratios": ["50/50", "50/50"]}, "lists a ratio twice"),
        ({"export": ["sharegpt"]}, r"Unknown `export` \['sharegpt'\]"),
        ({"push_to_hub": True}, "`push_to_hub` needs `hub_dataset_id`"),
        ({"ngram": 0}, "`ngram` must be at least 1"),
        ({"input_format": "sharegpt"}, "`input_format` must be one of"),
    ],
)
def test_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        BuildConfig(**{"input": "records.jsonl", "output_dir": "out", **settings})


def test_list_settings_accept_strings():
    config = BuildConfig(input="x.jsonl", output_dir="out", conditions="cgd, sft", ratios="none", export="alpaca")
    assert (config.conditions, config.ratios, config.export) == (["cgd", "sft"], [], ["alpaca"])


# --------------------------------------------------------------------------------------------------------------------
# Summary, card, CLI.
# --------------------------------------------------------------------------------------------------------------------


def test_summary(full_build):
    summary, out = full_build
    assert json.loads((out / "summary.json").read_text(encoding="utf-8")) == summary
    assert summary["input"] == {
        "path": summary["input"]["path"],
        "format": "cgd",
        "records": 7,
        "verdicts": {"right": 3, "wrong": 3, "none": 1, "right_share": 0.5},
        "verdict_source": "column 'verdict'",
        "with_reference": 6,
        "ignored_columns": [],
    }
    assert summary["filters"] == {}
    assert summary["records_after_filters"] == 7
    sft = summary["conditions"]["sft"]
    assert sft["records"] == 6 and sft["dropped"] == {"no_reference": 1}
    assert sft["verdicts"] == {"right": 3, "wrong": 2, "none": 1, "right_share": 0.6}
    # Targets "39", "205", "34", "90", "56", "42": 13 characters over 6 answers.
    assert sft["lengths"]["target"] == {
        "chars": {"mean": 2.17, "median": 2, "p95": 3, "max": 3},
        "words": {"mean": 1, "median": 1, "p95": 1, "max": 1},
    }
    # Questions without r5: 116, 96, 81, 65, 18, 62 characters; 24, 22, 17, 15, 5, 13 words.
    prompts = [len(r["prompt"]) for r in RECORDS if r["id"] != "r5"]
    assert prompts == [116, 96, 81, 65, 18, 62]
    assert sft["lengths"]["context"] == {
        "chars": {"mean": 73.0, "median": 73.0, "p95": 116, "max": 116},
        "words": {"mean": 16.0, "median": 16.0, "p95": 24, "max": 24},
    }
    cgd = summary["conditions"]["cgd"]
    assert (cgd["records"], cgd["dropped"], cgd["file"], cgd["format"]) == (7, {}, "cgd.jsonl", "cgd columns")
    assert cgd["verdicts"] == {"right": 3, "wrong": 3, "none": 1, "right_share": 0.5}
    assert cgd["lengths"]["target"]["words"]["max"] == max(len(r["refined_response"].split()) for r in RECORDS)
    assert summary["conditions"]["irrelevant_critique"]["same_critique_text"] == 0
    assert summary["config"]["seed"] == 42


def test_card(tmp_path):
    summary, out = run_build(tmp_path, conditions=["cgd", "sft"], ratios=["50/50"])
    card = (out / "README.md").read_text(encoding="utf-8")
    assert card.startswith(
        "---\n"
        "configs:\n"
        "- config_name: cgd\n"
        "  data_files:\n"
        "  - split: train\n"
        "    path: cgd.jsonl\n"
        "  default: true\n"
        "- config_name: sft\n"
        "  data_files:\n"
        "  - split: train\n"
        "    path: sft.jsonl\n"
        "- config_name: ratio_50_50\n"
        "  data_files:\n"
        "  - split: train\n"
        "    path: ratio_50_50.jsonl\n"
        "tags:\n"
        "- cgd-trainer\n"
        "- critique-guided-distillation\n"
        "---\n"
        "\n# CGD training sets\n"
    )
    assert "| sft | 6 | 1 | 3 | 2 | 1 | 16.0 | 1.0 |" in card
    assert (
        "| ratio_50_50 | question, student's initial answer, teacher's critique | teacher's refined answer (50/50"
        in card
    )
    assert "- Decontamination: not run." in card
    parsed = DatasetCard.load(out / "README.md")
    assert [c["config_name"] for c in parsed.data.configs] == ["cgd", "sft", "ratio_50_50"]
    # On the hub, `datasets` stores each configuration under <name>/train-*.
    hub = render_card(summary, data_files={"cgd": "cgd/train-*", "sft": "sft/train-*"})
    assert yaml.safe_load(hub.split("---\n")[1])["configs"][1] == {
        "config_name": "sft",
        "data_files": [{"split": "train", "path": "sft/train-*"}],
    }


def test_cli_with_yaml_config(tmp_path, capsys):
    source = write_jsonl(tmp_path / "records.jsonl", RECORDS)
    config = tmp_path / "build.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": str(source),
                "output_dir": str(tmp_path / "sets"),
                "conditions": ["cgd", "cft"],
                "ratios": ["50/50"],
                "export": ["messages"],
                "seed": 7,
            }
        )
    )
    summary = cli_main(["--config", str(config), "--ratio_size", "2"])
    out = tmp_path / "sets"
    assert list(summary["conditions"]) == ["cgd", "cft", "ratio_50_50"]
    assert summary["config"]["seed"] == 7 and summary["ratios"]["size"] == 2
    assert len(read_jsonl(out / "ratio_50_50.jsonl")) == 2
    assert sorted(p.name for p in (out / "messages").iterdir()) == ["cft.jsonl", "cgd.jsonl", "ratio_50_50.jsonl"]
    printed = capsys.readouterr().out
    assert f"cgd build: 7 records read, 7 after filters -> {out}" in printed
    assert re.search(r"cft\s+7\s+0\s+3\s+3\s+1", printed)
    # Flags alone, no subsets.
    summary = cli_main(
        ["--input", str(source), "--output_dir", str(tmp_path / "flags"), "--conditions", "sft", "--ratios", "none"]
    )
    assert list(summary["conditions"]) == ["sft"] and summary["ratios"] == {"skipped": "no ratio requested"}


def test_builtin_demo(tmp_path):
    summary = cli_main(["--input", "builtin:demo", "--output_dir", str(tmp_path / "demo")])
    out = tmp_path / "demo"
    shipped = read_jsonl(demo_data_path())
    right = sum(record["verdict"] == "right" for record in shipped)
    wrong = sum(record["verdict"] == "wrong" for record in shipped)
    assert (len(shipped), right + wrong) == (256, 256) and 0 < right < wrong
    for name in CONDITIONS:
        assert summary["conditions"][name]["records"] == 256
        assert len(read_jsonl(out / f"{name}.jsonl")) == 256
    assert summary["ratios"] == {"right": right, "wrong": wrong, "no_verdict": 0, "size": right}
    for name, share in (("ratio_100_0", 100), ("ratio_75_25", 75), ("ratio_50_50", 50), ("ratio_25_75", 25)):
        rows = read_jsonl(out / f"{name}.jsonl")
        assert len(rows) == right
        assert sum(row["verdict"] == "right" for row in rows) == (share * right + 50) // 100
    rows = read_jsonl(out / "irrelevant_critique.jsonl")
    assert all(row["critique_source_id"] != row["id"] for row in rows)
    assert read_jsonl(out / "cgd.jsonl") == [{key: record[key] for key in CGD_COLUMNS} for record in shipped]


def test_keys_that_first_appear_on_the_last_rows(tmp_path):
    # Thousands of records where the reference answers, and a nested provenance key, exist only for the last few: the
    # input is read without schema inference, so late keys are read like any other. The (ignored) provenance log makes
    # the file span several of the 10 MB chunks `datasets` reads JSON in; it cast each to the first one's schema and
    # failed with "Couldn't cast".
    records = generate_records(3000, seed=0)
    late = len(records) - 3
    rows = []
    for index, record in enumerate(records):
        row = {key: value for key, value in record.items() if key != "reference_answer"}
        row["provenance"] = {"teacher": "demo", "log": "." * 4000}
        if index >= late:
            row["reference_answer"] = record["reference_answer"]
            row["provenance"]["from_input"] = {"dataset": "gsm8k", "index": index}
        rows.append(row)
    source = write_jsonl(tmp_path / "records.jsonl", rows)
    assert source.stat().st_size > 10 << 20
    summary = cli_main(["--input", str(source), "--output_dir", str(tmp_path / "sets")])
    out = tmp_path / "sets"
    assert summary["input"]["records"] == 3000 and summary["input"]["with_reference"] == 3
    assert summary["input"]["ignored_columns"] == ["provenance"]
    assert not any("skipped" in entry for entry in summary["conditions"].values())
    for name in CONDITIONS:
        assert (out / f"{name}.jsonl").is_file()
    sft = summary["conditions"]["sft"]
    assert sft["records"] == 3 and sft["dropped"] == {"no_reference": 2997}
    assert read_jsonl(out / "sft.jsonl") == [
        {"id": r["id"], "prompt": user(r["prompt"]), "completion": assistant(r["reference_answer"])}
        for r in records[late:]
    ]
    cgd = read_jsonl(out / "cgd.jsonl")
    assert len(cgd) == 3000 and cgd[0]["reference_answer"] is None
    assert cgd[-1]["reference_answer"] == records[-1]["reference_answer"]


def test_each_condition_is_written_while_it_is_built(tmp_path, monkeypatch):
    # At paper scale the records' text must be held once: no condition keeps its rows once they are in its files,
    # and the exports are written row by row in the layout `json.dump(rows, indent=2)` gives.
    from cgd_trainer.conditions import builders

    built = []
    original = builders.ConditionSet.add

    def add(self, row, prompt, target, verdict):
        if not built or built[-1] is not self:
            built.append(self)
        # Every condition built before this one is complete on disk already.
        for earlier in built[:-1]:
            assert len(read_jsonl(tmp_path / "out" / f"{earlier.name}.jsonl")) == earlier.count
        original(self, row, prompt, target, verdict)

    monkeypatch.setattr(builders.ConditionSet, "add", add)
    summary, out = run_build(tmp_path, export=["alpaca", "messages"])
    assert [s.name for s in built] == [name for name, c in summary["conditions"].items() if "skipped" not in c]
    for condition in built:
        assert condition.rows == [] and condition.prompts == [] and condition.targets == []
        assert summary["conditions"][condition.name]["records"] == condition.count > 0
        text = (out / "alpaca" / f"{condition.name}.json").read_text(encoding="utf-8")
        assert text == json.dumps(json.loads(text), ensure_ascii=False, indent=2) + "\n"
        assert len(read_jsonl(out / "messages" / f"{condition.name}.jsonl")) == condition.count
