"""`cgd generate` at paper scale: seeded shuffling before `max_records`, streamed input, and a run split into shards
whose merge equals one unsharded run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cgd_trainer.commands.generate import main as generate_main
from cgd_trainer.pipeline import GenerateConfig, Pipeline, load_items
from generate_helpers import pipeline_settings as settings


def write_questions(path: Path, n: int) -> Path:
    rows = [{"question": f"Question {i}: what is {i} + {2 * i}?", "answer": str(3 * i)} for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), "utf-8")
    return path


def run(**values) -> dict:
    pipeline = Pipeline(GenerateConfig(**values))
    try:
        return pipeline.run()
    finally:
        pipeline.close()


def test_shuffle_draws_a_seeded_sample_instead_of_the_first_rows(tmp_path):
    first, _ = load_items(GenerateConfig(**settings(tmp_path, max_records=20)))
    drawn, _ = load_items(GenerateConfig(**settings(tmp_path, max_records=20, shuffle=True, data_seed=1)))
    again, _ = load_items(GenerateConfig(**settings(tmp_path, max_records=20, shuffle=True, data_seed=1)))
    other, _ = load_items(GenerateConfig(**settings(tmp_path, max_records=20, shuffle=True, data_seed=2)))
    everything, _ = load_items(GenerateConfig(**settings(tmp_path)))
    ids = [item["id"] for item in everything]
    assert [i["id"] for i in first] == ids[:20]
    assert [i["id"] for i in drawn] == [i["id"] for i in again] != [i["id"] for i in other]
    # A sample from the whole input, not its head.
    assert set(i["id"] for i in drawn) <= set(ids) and max(ids.index(i["id"]) for i in drawn) >= 40


def test_streamed_input_gives_the_same_questions(tmp_path):
    path = write_questions(tmp_path / "questions.jsonl", 30)
    common = dict(dataset_name=str(path), question_field="question", reference_field="answer", max_records=12)
    read, _ = load_items(GenerateConfig(**settings(tmp_path, **common, id_field=None)))
    streamed, _ = load_items(GenerateConfig(**settings(tmp_path, **common, id_field=None, streaming=True)))
    assert streamed == read and len(read) == 12
    shuffled, _ = load_items(
        GenerateConfig(**settings(tmp_path, **common, id_field=None, streaming=True, shuffle=True, shuffle_buffer=8))
    )
    assert len(shuffled) == 12 and [i["id"] for i in shuffled] != [i["id"] for i in read]
    with pytest.raises(ValueError, match="no column 'nope'"):
        load_items(GenerateConfig(**settings(tmp_path, **common, id_field="nope", streaming=True)))


def test_two_shards_merged_equal_one_run_row_for_row(tmp_path):
    common = dict(max_records=40, shuffle=True, data_seed=3)
    whole = run(**settings(tmp_path / "whole", **common))
    assert whole["records"] == 40
    for index in range(2):
        shard = run(**settings(tmp_path / f"shard{index}", **common, shard=f"{index}/2"))
        assert shard["questions"] == 20 and shard["shard"] == f"{index}/2"
    folders = [str(tmp_path / f"shard{index}" / "out") for index in range(2)]
    # The merge is a `cgd generate` invocation like any other: flags, summary, exit status.
    argv = ["--dataset_name", "builtin:demo", "--id_field", "id", "--reference_field", "reference_answer"]
    argv += ["--student_backend", "demo", "--teacher_backend", "demo", "--max_new_tokens", "32"]
    argv += ["--max_records", "40", "--shuffle", "true", "--data_seed", "3"]
    merged = tmp_path / "merged"
    assert generate_main([*argv, "--output_dir", str(merged), "--merge", *folders]) == 0
    expected = (tmp_path / "whole" / "out" / "records.jsonl").read_bytes()
    assert (merged / "records.jsonl").read_bytes() == expected
    summary = json.loads((merged / "summary.json").read_text("utf-8"))
    assert summary["records"] == 40 and summary["stages"]["probe"] == {"merged": 40}
    # Merging again changes nothing.
    assert generate_main([*argv, "--output_dir", str(merged), "--merge", *folders]) == 0
    assert (merged / "records.jsonl").read_bytes() == expected

    # One shard missing: the other half of the records is incomplete, and the exit status says so.
    assert generate_main([*argv, "--output_dir", str(tmp_path / "half"), "--merge", folders[0]]) == 3


def test_merge_refuses_shards_of_different_runs(tmp_path):
    run(**settings(tmp_path / "a", max_records=4, shard="0/2"))
    run(**settings(tmp_path / "b", max_records=4, shard="1/2", critique_max_new_tokens=8))
    config = GenerateConfig(
        **settings(tmp_path / "m", max_records=4, merge=[str(tmp_path / "a" / "out"), str(tmp_path / "b" / "out")])
    )
    with pytest.raises(ValueError, match="merge only shards of one run"):
        Pipeline(config).run()
    with pytest.raises(ValueError, match="has no summary.json"):
        Pipeline(GenerateConfig(**settings(tmp_path / "m", merge=[str(tmp_path)]))).run()


@pytest.mark.parametrize("shard", ["2/2", "1", "a/b", "-1/3"])
def test_bad_shards_are_refused(tmp_path, shard):
    with pytest.raises(ValueError, match="`shard` must be `i/n`"):
        GenerateConfig(**settings(tmp_path, shard=shard))


def test_merge_takes_only_what_each_shard_counted_as_current(tmp_path):
    # Shard 0 is rerun with a new critique budget, and one critique fails under it: its stage file still holds that
    # record's critique made under the old budget, which the shard's run no longer counts. The merge must not either.
    from cgd_trainer.backends import OpenAIBackend
    from servers import ScriptedServer

    common = dict(max_records=6, teacher_backend="openai", teacher_model="teacher")
    shard0 = settings(tmp_path / "s0", **common, shard="0/2", stages=["probe"])
    run(**shard0)
    draft = read_first(tmp_path / "s0" / "out" / "probe.jsonl")
    question = next(i for i in load_items(GenerateConfig(**shard0))[0] if i["id"] == draft["id"])["question"]
    message = f"### Question\n{question}\n\n### Student's answer\n{draft['text']}"
    with ScriptedServer(faults={message: [200, 400]}) as server:

        def teacher():
            return OpenAIBackend("teacher", base_url=server.base_url, max_retries=0, backoff_base=0.01)

        for index in range(2):
            values = settings(tmp_path / f"s{index}", **common, shard=f"{index}/2")
            pipeline = Pipeline(GenerateConfig(**values), teacher=teacher())
            pipeline.run()
        # The rerun with another budget: the critique of that one record fails (400).
        for index in range(2):
            values = settings(tmp_path / f"s{index}", **common, shard=f"{index}/2", critique_max_new_tokens=16)
            summary = Pipeline(GenerateConfig(**values), teacher=teacher()).run()
        assert summary["failed"]["critique"] == 0
    folders = [str(tmp_path / f"s{index}" / "out") for index in range(2)]
    values = settings(tmp_path / "m", **common, critique_max_new_tokens=16, merge=folders)
    summary = Pipeline(GenerateConfig(**values)).run()
    assert summary["records"] == 5 and summary["incomplete_records"] == {"critique": 1}
    merged = [json.loads(line) for line in (tmp_path / "m" / "out" / "records.jsonl").read_text("utf-8").splitlines()]
    assert draft["id"] not in {record["id"] for record in merged}


def read_first(path: Path) -> dict:
    return json.loads(path.read_text("utf-8").splitlines()[0])


def test_merge_refuses_shards_of_another_input(tmp_path):
    run(**settings(tmp_path / "a", max_records=4, shard="0/2"))
    values = settings(tmp_path / "m", max_records=4, shuffle=True, data_seed=9, merge=[str(tmp_path / "a" / "out")])
    with pytest.raises(ValueError, match="are not in this input"):
        Pipeline(GenerateConfig(**values)).run()
