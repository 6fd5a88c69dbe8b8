"""`cgd generate` at paper scale: seeded shuffling before `max_records`, streamed input, and a run split into shards
whose merge equals one unsharded run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cgd_trainer.commands.generate import main as generate_main
from cgd_trainer.pipeline import GenerateConfig, Pipeline, load_items
from generate_helpers import pipeline_settings as settings
from helpers import run_cgd as cgd


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

    # One shard missing: refused by name (exit 2), nothing written.
    half = tmp_path / "half"
    code, _, err = cgd(["generate", *argv, "--output_dir", str(half), "--merge", folders[0]])
    assert code == 2 and "shard 1/2 missing" in err and "--shard 1/2" in err and "--allow_partial_merge" in err
    assert not half.exists()
    # Asked for explicitly, a partial merge writes the shard it has; exit 3 names the missing shard, and says that
    # rerunning the merge is no retry.
    code, _, err = cgd(["generate", *argv, "--output_dir", str(half), "--merge", folders[0], "--allow_partial_merge"])
    summary = json.loads((half / "summary.json").read_text("utf-8"))
    assert code == 3 and summary["records"] == 20 and summary["incomplete_records"] == {"probe": 20}
    assert summary["merged_shards"] == ["0/2"] and summary["missing_shards"] == ["1/2"]
    assert "Missing shards" in err and "1/2" in err and "Rerunning this merge alone changes nothing" in err
    assert "Run the same command again" not in err


def test_merge_refuses_shards_of_different_runs(tmp_path):
    run(**settings(tmp_path / "a", max_records=4, shard="0/2"))
    run(**settings(tmp_path / "b", max_records=4, shard="1/2", critique_max_new_tokens=8))
    config = GenerateConfig(
        **settings(tmp_path / "m", max_records=4, merge=[str(tmp_path / "a" / "out"), str(tmp_path / "b" / "out")])
    )
    with pytest.raises(ValueError, match=r"merge only shards of one run"):
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
    run(**settings(tmp_path / "b", max_records=4, shard="1/2"))
    folders = [str(tmp_path / name / "out") for name in "ab"]
    values = settings(tmp_path / "m", max_records=4, shuffle=True, data_seed=9, merge=folders)
    with pytest.raises(ValueError, match="made from another input.*data_seed 0 there, 9 here; shuffle False there"):
        Pipeline(GenerateConfig(**values)).run()


def snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every file under `folder` with its bytes (`None` when the folder does not exist)."""
    if not folder.exists():
        return None
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def three_shards(tmp_path_factory) -> dict[str, str]:
    """
    Shard folders of a 12-question `0/3, 1/3, 2/3` run, and folders that must not be merged with them: a copy of
    shard 0, shard 1 of a `/2` split, shard 1 made from 9 questions only, and shard 1 made with another critique
    budget.
    """
    import shutil

    root = tmp_path_factory.mktemp("shards")
    folders = {}
    variants = {f"{i}/3": {} for i in range(3)}
    variants.update({"half": {"shard": "1/2"}, "fewer": {"max_records": 9}, "budget": {"critique_max_new_tokens": 8}})
    for name, changes in variants.items():
        values = {"max_records": 12, "shard": name if "/" in name else "1/3", **changes}
        folder = root / name.replace("/", "of")
        run(**settings(folder, **values))
        folders[name] = str(folder / "out")
    shutil.copytree(folders["0/3"], root / "copy")
    folders["copy"] = str(root / "copy")
    return folders


@pytest.mark.parametrize(
    "given, message",
    [
        (["0/3", "2/3"], r"shard 1/3 missing: run `cgd generate` .*`--shard 1/3`.*--allow_partial_merge true"),
        (["0/3", "half", "2/3"], r"is shard 0/3 but .* is shard 1/2; give the folders of one `--shard i/n` split"),
        (["0/3", "1/3", "2/3", "0/3"], r"0of3/out is given twice"),
        (["0/3", "copy", "1/3", "2/3"], r"and .*copy are both shard 0/3; give each shard once"),
        (["0/3", "fewer", "2/3"], r"shard 1/3 \(.*\) was made from another input.*max_records 9 there, 12 here"),
        (["0/3", "budget", "2/3"], r"other models, decoding settings or templates .*sampling\.critique\.max_tokens"),
    ],
    ids=["missing", "mixed-n", "repeated", "copied", "other-input", "other-settings"],
)
@pytest.mark.parametrize("output", ["new", "existing"])
def test_refused_merges_name_the_problem_and_write_nothing(tmp_path, three_shards, given, message, output):
    target = tmp_path / "merged"
    if output == "existing":  # an earlier merge's folder: it must stay exactly as it was
        target.mkdir()
        (target / "records.jsonl").write_text('{"id": "kept"}\n', "utf-8")
        (target / "probe.jsonl").write_text("", "utf-8")
    before = snapshot(target)
    values = settings(tmp_path, max_records=12, merge=[three_shards[name] for name in given])
    values["output_dir"] = str(target)
    with pytest.raises(ValueError, match=message):
        run(**values)
    assert snapshot(target) == before


def test_merge_of_the_whole_split_in_any_order_passes(tmp_path, three_shards):
    values = settings(tmp_path, max_records=12, merge=[three_shards[name] for name in ("2/3", "0/3", "1/3")])
    summary = run(**values)
    assert summary["records"] == 12 and summary["merged_shards"] == ["0/3", "1/3", "2/3"]
    assert summary["missing_shards"] == []
    assert summary["input_settings"]["max_records"] == 12 and len(summary["input_sha256"]) == 64


def test_merge_refuses_an_input_whose_contents_changed_since_the_shards_ran(tmp_path):
    from cgd_trainer.sources import load_source

    path = tmp_path / "questions.jsonl"  # questions the demo student knows, as a file
    load_source("builtin:demo")["train"].select(range(8)).to_json(str(path), lines=True)
    common = dict(dataset_name=str(path))
    for index in range(2):
        run(**settings(tmp_path / f"s{index}", **common, shard=f"{index}/2"))
    folders = [str(tmp_path / f"s{index}" / "out") for index in range(2)]
    # The same file read from another path (another machine's mount) is the same input.
    copy = tmp_path / "elsewhere.jsonl"
    copy.write_bytes(path.read_bytes())
    summary = run(**settings(tmp_path / "ok", **{**common, "dataset_name": str(copy)}, merge=folders))
    assert summary["records"] == 8
    # A reference answer edited since: same settings, other contents.
    text = path.read_text("utf-8")
    path.write_text(text.replace('"reference_answer":"', '"reference_answer":"1', 1), "utf-8")
    assert path.read_text("utf-8") != text
    with pytest.raises(ValueError, match="no longer holds the same questions, ids or references"):
        run(**settings(tmp_path / "m", **common, merge=folders))


def test_one_rule_decides_which_model_made_an_output_for_reruns_and_merges(tmp_path):
    # Each shard's teacher is served at its own address under the same name (one server per machine): a merge takes
    # them, as a rerun against the other address reuses every output; a teacher served under another name is another
    # model for both.
    from generate_helpers import fast_openai
    from servers import ScriptedServer

    common = dict(max_records=6)
    with ScriptedServer() as first, ScriptedServer() as second:
        for index, server in enumerate((first, second)):
            values = settings(tmp_path / f"s{index}", **common, shard=f"{index}/2", teacher_backend="openai")
            pipeline = Pipeline(GenerateConfig(**values), teacher=fast_openai(server.base_url))
            pipeline.run()
            pipeline.close()
        folders = [str(tmp_path / f"s{index}" / "out") for index in range(2)]
        merged = run(**settings(tmp_path / "m", **common, merge=folders))
        assert merged["records"] == 6
        records = Path(merged["records_file"]).read_text("utf-8").splitlines()
        bases = {json.loads(line)["provenance"]["teacher"]["base_url"] for line in records}
        assert bases == {first.base_url, second.base_url}  # each record says where it was made
        sent = len(second.requests)
        values = settings(tmp_path / "s0", **common, shard="0/2", teacher_backend="openai")
        summary = Pipeline(GenerateConfig(**values), teacher=fast_openai(second.base_url)).run()
        assert len(second.requests) == sent and summary["stages"]["critique"]["cached"] == 3

        values = settings(tmp_path / "s1", **common, shard="1/2", teacher_backend="openai")
        renamed = fast_openai(second.base_url, model="teacher-v2")
        summary = Pipeline(GenerateConfig(**values), teacher=renamed).run()
        assert summary["stages"]["critique"].get("cached", 0) == 0
        with pytest.raises(ValueError, match=r"differ in teacher\.model"):
            run(**settings(tmp_path / "m2", **common, merge=folders))


def test_the_documented_job_loop_ends_on_every_exit_status(tmp_path):
    # docs/pipeline.md's loop around `cgd generate`, run with `cgd` replaced by a function that exits with a fixed
    # status: it must stop on success, on a refusal, and (after its tries) on work that stays undone.
    import re
    import subprocess

    docs = (Path(__file__).parents[2] / "docs" / "pipeline.md").read_text("utf-8")
    loops = [block for block in re.findall(r"```bash\n(.*?)```", docs, re.S) if "status" in block and "3" in block]
    assert len(loops) == 1, "docs/pipeline.md should show one job loop"
    for status in (0, 1, 2, 3):
        script = f"cgd() {{ echo run >> {tmp_path}/calls; return {status}; }}\nsleep() {{ :; }}\n{loops[0]}"
        (tmp_path / "calls").write_text("")
        done = subprocess.run(["bash", "-c", script], timeout=30)
        assert done.returncode == status
        calls = (tmp_path / "calls").read_text().count("run")
        assert calls == 1 if status != 3 else 1 < calls <= 10


def test_shards_that_ran_their_stages_in_other_invocations_merge(tmp_path):
    # Shard 0 ran all stages at once; shard 1 drafted first (`--stages probe`) and critiqued and refined later, so
    # its last summary knows no resolved student: only the stages both shards sent are compared.
    common = dict(max_records=8)
    run(**settings(tmp_path / "s0", **common, shard="0/2"))
    run(**settings(tmp_path / "s1", **common, shard="1/2", stages=["probe"]))
    summary = run(**settings(tmp_path / "s1", **common, shard="1/2", stages=["critique", "refine"]))
    assert summary["stages_sent"] == ["critique", "refine"]
    folders = [str(tmp_path / f"s{index}" / "out") for index in range(2)]
    merged = run(**settings(tmp_path / "m", **common, merge=folders))
    assert merged["records"] == 8 and merged["stages_sent"] == ["probe", "critique", "refine"]
    # A critique budget that differs is still found, on the stages both sent.
    run(**settings(tmp_path / "s1", **common, shard="1/2", stages=["critique", "refine"], critique_max_new_tokens=8))
    with pytest.raises(ValueError, match=r"sampling\.critique\.max_tokens"):
        run(**settings(tmp_path / "m2", **common, merge=folders))


def test_a_local_model_is_its_files_wherever_its_folder_is(tmp_path, tiny_dirs):
    # Two machines hold the same student folder at different paths: one model for a merge, and for a rerun.
    import shutil

    copy = tmp_path / "elsewhere" / "student"
    shutil.copytree(tiny_dirs["chatml"], copy)
    common = dict(max_records=4, stages=["probe"], probe_max_new_tokens=4, student_backend="transformers")
    for index, folder in enumerate((tiny_dirs["chatml"], str(copy))):
        run(**settings(tmp_path / f"s{index}", **common, shard=f"{index}/2", student_model=folder))
    folders = [str(tmp_path / f"s{index}" / "out") for index in range(2)]
    assert run(**settings(tmp_path / "m", **common, merge=folders))["stages"]["probe"] == {"merged": 4}
    rerun = run(**settings(tmp_path / "s0", **common, shard="0/2", student_model=str(copy)))
    assert rerun["stages"]["probe"]["cached"] == 2 and "generated" not in rerun["stages"]["probe"]
