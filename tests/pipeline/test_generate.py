"""`cgd generate`: stages, backends against real loopback servers, retries, failures, resume after kill -9, secrets."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from datasets import load_dataset

from cgd_trainer.backends import OpenAIBackend, Request, Sampling, TransformersBackend, make_backend
from cgd_trainer.commands.generate import run as cli_main
from cgd_trainer.demo.problems import demo_data_path
from cgd_trainer.pipeline import GenerateConfig, StageStore
from cgd_trainer.records import parse_verdict, strip_thinking
from generate_helpers import fast_openai, read_jsonl
from generate_helpers import run_pipeline as run
from servers import ScriptedServer

DEMO = [json.loads(line) for line in demo_data_path().read_text("utf-8").splitlines()]


# --- prompts ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("Good work.\nConclusion: right", "right"),
        ("Bad.\nconclusion: Wrong.", "wrong"),
        ("**Conclusion:** wrong", "wrong"),
        ("Conclusion: **right**\n", "right"),
        ("Conclusion: right\nOn second thought...\nConclusion: wrong", "wrong"),
        ("The conclusion: right answer is 4", None),  # not a verdict line
        ("No verdict here", None),
        ("", None),
    ],
)
def test_parse_verdict(text, verdict):
    assert parse_verdict(text) == verdict


def test_strip_thinking():
    assert strip_thinking("<think>let me see</think>\n\nThe answer is 4.") == "The answer is 4."
    # Qwen3-style templates open the section in the prompt: only the closing tag is in the output.
    assert strip_thinking("hmm, 2+2...</think>The answer is 4.") == "The answer is 4."
    assert strip_thinking("<think>a</think>x<think>b</think>y") == "y"
    assert strip_thinking("<think>ran out of tokens while thinking") == ""
    assert strip_thinking("  no thinking at all ") == "no thinking at all"


# --- the demo chain and resume ---------------------------------------------------------------------------------------


def test_demo_teacher_reproduces_the_shipped_records(tmp_path):
    # Critique and refine the shipped drafts: the offline teacher must write exactly the shipped critiques and answers.
    summary = run(tmp_path, stages=["critique", "refine"], initial_response_field="initial_response")
    records = read_jsonl(Path(summary["records_file"]))
    assert len(records) == len(DEMO) == 256
    for record, shipped in zip(records, DEMO):
        assert {key: record[key] for key in shipped} == shipped
    assert summary["stages"]["critique"]["generated"] == 256
    assert "from input" not in summary["stages"]["critique"]
    assert summary["verdicts"] == {"right": 87, "wrong": 169, "none": 0}
    assert records[0]["provenance"]["from_input"] == ["probe"]


def test_every_record_has_the_same_keys(tmp_path):
    # References on some rows only and a stage taken from the input on others: `records.jsonl` still has one schema,
    # so that `cgd build` (or any reader) never meets a key that first appears late in the file.
    rows = [dict(record) for record in DEMO[:6]]
    for index, row in enumerate(rows):
        if index % 2:
            row["reference_answer"] = None
        if index >= 3:
            row["given_draft"] = row["initial_response"]
    source = tmp_path / "questions.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows), "utf-8")
    summary = run(tmp_path, dataset_name=str(source), initial_response_field="given_draft")
    records = read_jsonl(Path(summary["records_file"]))
    assert len(records) == 6
    assert len({tuple(record) for record in records}) == 1
    assert len({tuple(record["provenance"]) for record in records}) == 1
    assert [record["reference_answer"] is None for record in records] == [False, True] * 3
    assert [record["provenance"]["from_input"] for record in records] == [[]] * 3 + [["probe"]] * 3


def test_full_run_then_rerun_is_all_cached(tmp_path):
    first = run(tmp_path, max_records=20)
    assert [first["stages"][s]["generated"] for s in ("probe", "critique", "refine")] == [20, 20, 20]
    records = read_jsonl(tmp_path / "out" / "records.jsonl")
    assert [r["id"] for r in records] == [r["id"] for r in DEMO[:20]]
    assert all(r["verdict"] == parse_verdict(r["critique"]) for r in records)
    assert records[0]["provenance"]["student"] == {"backend": "demo", "model": "cgd-demo", "prompt_format": "chat"}
    assert set(records[0]["provenance"]["templates"]) == {"probe", "critique", "refine"}
    # Every file the pipeline writes loads with `datasets`.
    for name in ("probe", "critique", "refine", "records"):
        loaded = load_dataset("json", data_files=str(tmp_path / "out" / f"{name}.jsonl"), split="train")
        assert len(loaded) == 20
    second = run(tmp_path, max_records=20)
    assert [second["stages"][s].get("generated", 0) for s in ("probe", "critique", "refine")] == [0, 0, 0]
    assert [second["stages"][s]["cached"] for s in ("probe", "critique", "refine")] == [20, 20, 20]
    assert read_jsonl(tmp_path / "out" / "records.jsonl") == records


def test_stages_one_at_a_time_and_changed_settings_regenerate(tmp_path):
    probe = run(tmp_path, max_records=6, stages=["probe"])
    assert probe["records"] == 0 and probe["incomplete_records"] == {"critique": 6}
    critique = run(tmp_path, max_records=6, stages=["critique"])
    assert critique["stages"]["critique"]["generated"] == 6
    refine = run(tmp_path, max_records=6, stages=["refine"])
    assert refine["records"] == 6
    # A new critique prompt changes the request: the critiques are regenerated; the refine stage follows them.
    changed = run(tmp_path, max_records=6, critique_system_prompt="Review the answer. End with the verdict line.")
    assert changed["stages"]["probe"]["cached"] == 6
    assert changed["stages"]["critique"]["generated"] == 6
    assert changed["stages"]["refine"]["cached"] == 6  # same critique texts (demo teacher), so the same requests
    lines = read_jsonl(tmp_path / "out" / "critique.jsonl")
    assert len(lines) == 12 and len(StageStore(tmp_path / "out" / "critique.jsonl").entries) == 6


def test_store_drops_a_cut_line(tmp_path):
    path = tmp_path / "probe.jsonl"
    path.write_text('{"id": "a", "key": "k", "text": "x"}\n{"id": "b", "key": "k", "te', "utf-8")
    store = StageStore(path)
    assert list(store.entries) == ["a"]
    assert path.read_text("utf-8") == '{"id": "a", "key": "k", "text": "x"}\n'


def test_unknown_questions_fail_into_the_failure_file_and_are_retried(tmp_path):
    data = tmp_path / "questions.jsonl"
    rows = [{"q": DEMO[0]["prompt"]}, {"q": "What is the capital of France?"}, {"q": "   "}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    summary = run(tmp_path, dataset_name=str(data), question_field="q", id_field=None, reference_field=None)
    assert summary["dropped_questions"] == {"empty or non-text question": 1}
    assert summary["stages"]["probe"]["failed"] == 1
    assert summary["stages"]["critique"]["waiting for an earlier stage"] == 1
    assert summary["records"] == 1 and summary["incomplete_records"] == {"probe": 1}
    failures = read_jsonl(tmp_path / "out" / "probe.failures.jsonl")
    assert len(failures) == 1 and "demo task" in failures[0]["error"]
    again = run(tmp_path, dataset_name=str(data), question_field="q", id_field=None, reference_field=None)
    assert again["stages"]["probe"]["cached"] == 1 and again["stages"]["probe"]["failed"] == 1


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="stages"):
        GenerateConfig(stages=["probe", "grade"])
    with pytest.raises(ValueError, match=r"\{critique\}"):
        GenerateConfig(refine_template="{question} {initial_response}")
    with pytest.raises(ValueError, match="teacher_backend"):
        GenerateConfig(teacher_backend="anthropic")
    with pytest.raises(ValueError, match="no column 'question'.*question_field"):
        run(tmp_path, question_field="question")
    data = tmp_path / "dup.jsonl"
    data.write_text('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n', "utf-8")
    with pytest.raises(ValueError, match="row 1: id '1' appears twice"):
        run(tmp_path, dataset_name=str(data), reference_field=None)
    with pytest.raises(ValueError, match="no column 'reference_answer'.*`reference_field`"):
        run(tmp_path, dataset_name=str(data))
    assert GenerateConfig(stages=["refine,probe"]).stages == ["probe", "refine"]


# --- transformers backend (in process) and the OpenAI backend against `transformers serve` ---------------------------


def test_transformers_student_chat_and_completion(tmp_path, tiny_dirs):
    student = TransformersBackend(tiny_dirs["chatml"], batch_size=4)
    summary = run(tmp_path / "chat", student=student, student_backend="transformers", max_records=6, max_new_tokens=8)
    assert summary["stages"]["probe"]["generated"] == 6 and summary["records"] == 6
    assert summary["provenance"]["student"]["prompt_format"] == "chat"
    # The tiny model writes nonsense: the teacher says so, and the record is still complete.
    records = read_jsonl(tmp_path / "chat" / "out" / "records.jsonl")
    assert all(r["verdict"] == "wrong" for r in records)
    plain = TransformersBackend(tiny_dirs["plain"], batch_size=4)
    assert not plain.uses_chat
    summary = run(tmp_path / "plain", student=plain, student_backend="transformers", max_records=3, max_new_tokens=8)
    assert summary["provenance"]["student"]["prompt_format"] == "completion" and summary["records"] == 3


def test_openai_backend_against_transformers_serve_matches_local_generation(served_tiny, tiny_dirs):
    base_url, model = served_tiny
    requests = [
        Request(str(i), messages=[{"role": "user", "content": record["prompt"]}], sampling=Sampling(max_tokens=12))
        for i, record in enumerate(DEMO[:4])
    ]
    remote = {
        r.request.id: r for r in make_backend("openai", model, base_url=base_url, concurrency=2).generate(requests)
    }
    local = {r.request.id: r for r in TransformersBackend(tiny_dirs["chatml"]).generate(requests)}
    assert all(reply.ok and reply.attempts == 1 for reply in remote.values()), [r.error for r in remote.values()]
    # Greedy decoding of the same weights: the same text (the server trims the leading space of the first token).
    assert {k: r.texts[0].strip() for k, r in remote.items()} == {k: r.texts[0].strip() for k, r in local.items()}
    assert all(r.completion_tokens == 12 for r in remote.values())


def test_pipeline_with_served_student(tmp_path, served_tiny):
    base_url, model = served_tiny
    summary = run(
        tmp_path,
        max_records=4,
        student_backend="openai",
        student_model=model,
        student_base_url=base_url,
        max_new_tokens=8,
    )
    assert summary["stages"]["probe"]["generated"] == 4 and summary["records"] == 4
    assert summary["provenance"]["student"]["base_url"] == base_url
    assert summary["stages"]["probe"]["prompt_tokens"] > 0


# --- faults, retries, failures ---------------------------------------------------------------------------------------


def critique_key(record: dict) -> str:
    return f"### Question\n{record['prompt']}\n\n### Student's answer\n{record['initial_response']}"


def test_retries_then_success_and_a_request_that_never_succeeds(tmp_path):
    recs = DEMO[:6]
    faults = {
        critique_key(recs[0]): [429, 500],
        critique_key(recs[1]): ["timeout"],
        critique_key(recs[2]): ["garbage", "empty"],
        critique_key(recs[3]): [500] * 10,  # more failures than retries
    }
    # The client's timeout applies to every request: long enough for a busy machine, yet far below the stall.
    with ScriptedServer(faults=faults, timeout_sleep=60) as server:
        teacher = fast_openai(server.base_url, timeout=3)
        summary = run(
            tmp_path,
            teacher=teacher,
            teacher_backend="openai",
            stages=["critique"],
            max_records=6,
            initial_response_field="initial_response",
        )
        counts = summary["stages"]["critique"]
        assert counts["generated"] == 5 and counts["failed"] == 1
        assert summary["failed"] == {"critique": 1}
        lines = {e["id"]: e for e in read_jsonl(tmp_path / "out" / "critique.jsonl")}
        assert [lines[r["id"]]["attempts"] for r in recs if r["id"] in lines] == [3, 2, 3, 1, 1]
        failures = read_jsonl(tmp_path / "out" / "critique.failures.jsonl")
        assert [f["id"] for f in failures] == [recs[3]["id"]]
        assert failures[0]["attempts"] == 4 and "500" in failures[0]["error"]
        assert server.counts()[critique_key(recs[3])] == 4

        server.faults.clear()
        # The next run sends only the failed request, which now succeeds; the failure file goes away.
        again = run(
            tmp_path,
            teacher=fast_openai(server.base_url),
            teacher_backend="openai",
            stages=["critique"],
            max_records=6,
            initial_response_field="initial_response",
        )
        assert again["stages"]["critique"]["generated"] == 1 and again["stages"]["critique"]["cached"] == 5
        assert not (tmp_path / "out" / "critique.failures.jsonl").exists()
        counts = server.counts()
        assert counts[critique_key(recs[3])] == 5  # 4 failed attempts, then one success
        assert all(counts[critique_key(r)] == n for r, n in zip(recs, [3, 2, 3, 5, 1, 1]))


def test_client_errors_are_not_retried(tmp_path):
    hello = [Request("x", messages=[{"role": "user", "content": "hi"}])]
    with ScriptedServer(faults={"hi": [401, 401]}) as server:
        (unauthorized,) = list(fast_openai(server.base_url).generate(hello))
        (missing,) = list(fast_openai(server.base_url.replace("/v1", "/nowhere")).generate(hello))
        assert server.counts()["hi"] == 1
    assert not unauthorized.ok and unauthorized.attempts == 1 and "401" in unauthorized.error
    assert not missing.ok and missing.attempts == 1 and "404" in missing.error


def test_thinking_is_removed_and_missing_verdicts_are_counted(tmp_path):
    def reply(messages):
        question = messages[-1]["content"]
        if "Ravi" in question:
            return "<think>I keep thinking and never stop"
        if "bus" in question:
            return "<think>Check 45 × 4 first.</think>\nThe product is fine.\nConclusion: right"
        return "The steps look plausible."  # no verdict line

    with ScriptedServer(reply=reply) as server:
        summary = run(
            tmp_path,
            teacher=fast_openai(server.base_url),
            teacher_backend="openai",
            stages=["critique"],
            max_records=6,
            initial_response_field="initial_response",
        )
    lines = {e["id"]: e for e in read_jsonl(tmp_path / "out" / "critique.jsonl")}
    bus = next(r for r in DEMO[:6] if "bus" in r["prompt"])
    assert lines[bus["id"]]["text"] == "The product is fine.\nConclusion: right"
    assert lines[bus["id"]]["raw"].startswith("<think>") and lines[bus["id"]]["verdict"] == "right"
    failures = read_jsonl(tmp_path / "out" / "critique.failures.jsonl")
    ravi = [r["id"] for r in DEMO[:6] if "Ravi" in r["prompt"]]
    assert [f["id"] for f in failures] == ravi and "once thinking is removed" in failures[0]["error"]
    verdicts = [e["verdict"] for e in lines.values()]
    assert verdicts.count(None) == 6 - len(ravi) - verdicts.count("right")
    assert summary["stages"]["critique"]["failed"] == len(ravi)


# --- secrets ---------------------------------------------------------------------------------------------------------


def test_api_key_is_used_but_never_written(tmp_path, monkeypatch, capfd, caplog):
    secret = "sk-cgd-test-5f0c2b7e9a1d4c3b8e6f"
    monkeypatch.setenv("CGD_TEST_TEACHER_KEY", secret)
    faults = {critique_key(DEMO[0]): [500] * 10}
    with ScriptedServer(faults=faults) as server:
        summary = run(
            tmp_path,
            teacher_backend="openai",
            teacher_model="teacher",
            teacher_base_url=server.base_url,
            teacher_api_key_env="CGD_TEST_TEACHER_KEY",
            max_retries=1,
            backoff_base=0.01,
            max_records=4,
            stages=["critique", "refine"],
            initial_response_field="initial_response",
        )
        assert set(server.auth_headers) == {f"Bearer {secret}"}
    assert summary["failed"] == {"critique": 1, "refine": 0}
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(written) == 5  # critique, its failures, refine, records, summary
    for path in written:
        assert secret not in path.read_text("utf-8"), path
    output = capfd.readouterr()
    assert secret not in output.out + output.err + caplog.text


def test_backend_masks_the_key_in_errors(monkeypatch):
    secret = "sk-cgd-test-echo-0000111122223333"
    monkeypatch.setenv("CGD_TEST_KEY", secret)
    backend = OpenAIBackend("m", api_key_env="CGD_TEST_KEY")
    assert backend._mask(f"Unauthorized: key {secret} rejected") == "Unauthorized: key *** rejected"
    assert secret not in json.dumps(backend.describe())


# --- kill -9 in the middle of a stage --------------------------------------------------------------------------------


def test_sigkill_mid_stage_then_resume(tmp_path):
    n = 48
    out = tmp_path / "out"
    args = [
        "--dataset_name", "builtin:demo",
        "--id_field", "id",
        "--max_records", str(n),
        "--output_dir", str(out),
        "--student_backend", "demo",
        "--teacher_backend", "openai",
        "--teacher_model", "teacher",
        "--concurrency", "4",
    ]  # fmt: skip
    with ScriptedServer(delay=0.05) as server:
        env = {**os.environ, "OPENAI_API_KEY": "unused"}
        process = subprocess.Popen(
            [sys.executable, "-m", "cgd_trainer.cli", "generate", *args, "--teacher_base_url", server.base_url],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        critiques = out / "critique.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if critiques.exists() and critiques.read_text("utf-8").count("\n") >= 12:
                break
            assert process.poll() is None, "the pipeline finished before it could be killed"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        finished = {e["id"] for e in StageStore(critiques).entries.values()}
        assert 12 <= len(finished) < n
        sent_before = server.settled_count()

        cli_main([*args, "--teacher_base_url", server.base_url])

        records = read_jsonl(out / "records.jsonl")
        assert [r["id"] for r in records] == [r["id"] for r in DEMO[:n]]  # every record once, in order
        ids = {r["prompt"]: r["id"] for r in DEMO[:n]}
        critique_counts, refine_counts = Counter(), Counter()
        for content, count in server.counts().items():
            question = content.removeprefix("### Question\n").split("\n\n### Student's answer\n")[0]
            stage_counts = refine_counts if "\n\n### Critique\n" in content else critique_counts
            stage_counts[ids[question]] += count
        # No finished request was sent again; only those in flight at the kill (at most `concurrency`) were repeated.
        assert all(critique_counts[record_id] == 1 for record_id in finished)
        repeated = [record_id for record_id, count in critique_counts.items() if count > 1]
        assert len(repeated) <= 4 and max(critique_counts.values()) <= 2
        assert len(critique_counts) == n and sum(critique_counts.values()) == sent_before + n - len(finished)
        assert len(refine_counts) == n and set(refine_counts.values()) == {1}
        print(f"kill -9 after {len(finished)}/{n} critiques; {len(repeated)} in-flight requests sent again")


# --- recipes and the whole offline chain ---------------------------------------------------------------------------

PIPELINE_RECIPES = sorted((Path(__file__).parents[2] / "examples" / "pipeline").glob("*.yaml"))


@pytest.mark.parametrize("recipe", PIPELINE_RECIPES, ids=lambda p: p.name)
def test_pipeline_recipes_parse(recipe):
    from cgd_trainer.commands.generate import make_parser

    (config,) = make_parser().parse_args_and_config(args=["--config", str(recipe)], fail_with_unknown_args=True)
    assert config.stages == ["probe", "critique", "refine"] and config.temperature == 0.0
    if config.vllm_kwargs is not None:
        assert isinstance(config.vllm_kwargs, dict)
    # A student budget that its own context cannot hold (16k new tokens in an 8k context) is a recipe bug.
    student_context = (config.vllm_kwargs or {}).get("max_model_len") or config.student_max_context
    if student_context is not None:
        assert config.sampling("probe").max_tokens < student_context
    if config.max_records is not None and config.max_records > 1000:  # a sample of a large dataset, not its head
        assert config.shuffle


def test_one_probe_format_rule_for_qwen_math():
    # The authors apply the chat template whenever the tokenizer has one; Qwen2.5-Math-7B's has one.
    from cgd_trainer.commands.generate import make_parser

    root = Path(__file__).parents[2]
    for recipe in PIPELINE_RECIPES:
        (config,) = make_parser().parse_args_and_config(args=["--config", str(recipe)])
        if config.student_model and "Qwen2.5-Math" in config.student_model:
            assert config.student_prompt_format in ("auto", "chat"), recipe.name
    docs = (root / "docs" / "pipeline.md").read_text("utf-8")
    assert "completion prompts because a\nbase model has no chat template" not in docs
    assert "Qwen2.5-Math-7B is\nprobed with its chat template" in docs


def test_offline_chain_generate_build_train(tmp_path, tiny_dirs):
    from cgd_trainer.commands.build import run as build_main
    from cgd_trainer.commands.train import run as train_main

    data = tmp_path / "data"
    # A real local student (the tiny model, greedy) and the offline teacher.
    cli_main(
        [
            "--config", str(Path(__file__).parents[2] / "examples" / "pipeline" / "demo.yaml"),
            "--output_dir", str(data),
            "--student_backend", "transformers",
            "--student_model", tiny_dirs["chatml"],
            "--max_new_tokens", "12",
            "--max_records", "24",
        ]
    )  # fmt: skip
    records = read_jsonl(data / "records.jsonl")
    assert len(records) == 24 and records[0]["provenance"]["student"]["model"] == tiny_dirs["chatml"]
    build_main(["--input", str(data / "records.jsonl"), "--output_dir", str(data / "sets"), "--ratios", "none"])
    for condition in ("cgd", "irrelevant_critique", "no_critique", "cft"):
        trainer = train_main(
            [
                "--config", str(Path(__file__).parents[2] / "examples" / "recipes" / "tiny" / "cpu.yaml"),
                "--model_name_or_path", tiny_dirs["chatml"],
                "--dataset_name", str(data / "sets" / f"{condition}.jsonl"),
                "--output_dir", str(tmp_path / condition),
                "--max_steps", "2",
                "--save_strategy", "no",
                "--logging_steps", "1",
            ]
        )  # fmt: skip
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        assert len(losses) == 2 and all(loss > 0 for loss in losses), condition
        # Only the target is trained: every labelled token belongs to the completion.
        labels = trainer.train_dataset[0]["labels"] if "labels" in trainer.train_dataset.column_names else None
        if labels is not None:
            assert 0 < sum(label != -100 for label in labels) < len(labels)


# --- vLLM: the real engine needs CUDA, so only the mapping onto its API is checked here ------------------------------


def test_vllm_backend_needs_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail, as on a machine without it
    with pytest.raises(ImportError, match=r"cgd-trainer\[vllm\].*`openai` backend"):
        make_backend("vllm", "some/model")


def test_vllm_backend_maps_requests_onto_llm_chat(monkeypatch, tiny_dirs):
    # A stand-in for the `vllm` module that records how it is called (vLLM itself cannot run on this CPU machine).
    import types

    calls = {}

    class Output:
        def __init__(self, text):
            self.text, self.token_ids = text, [1] * len(text.split())

    class LLM:
        def __init__(self, model, **kwargs):
            calls["init"] = (model, kwargs)

        def chat(self, conversations, params, use_tqdm):
            calls.setdefault("chat", []).append((len(conversations), params))
            return [
                types.SimpleNamespace(prompt_token_ids=[0, 0], outputs=[Output(f"reply {i}") for i in range(p.n)])
                for p in params
            ]

    fake = types.SimpleNamespace(LLM=LLM, SamplingParams=lambda **kwargs: types.SimpleNamespace(**kwargs))
    monkeypatch.setitem(sys.modules, "vllm", fake)
    model = tiny_dirs["chatml"]
    backend = make_backend(
        "vllm", model, prompt_format="chat", tensor_parallel_size=4, chunk_size=3, llm_kwargs={"max_model_len": 8192}
    )
    assert "init" not in calls  # the engine starts on first use only (a fully cached rerun never starts it)
    requests = [
        Request(str(i), messages=[{"role": "user", "content": f"q{i}"}], sampling=Sampling(max_tokens=64, n=2))
        for i in range(5)
    ]
    replies = list(backend.generate(requests))
    assert calls["init"] == (model, {"max_model_len": 8192, "tensor_parallel_size": 4})
    assert [r.request.id for r in replies] == ["0", "1", "2", "3", "4"]
    assert replies[0].texts == ["reply 0", "reply 1"] and replies[0].completion_tokens == 4
    assert [n for n, _ in calls["chat"]] == [3, 2]  # chunks of chunk_size, so results reach the disk as they finish
    params = calls["chat"][0][1][0]  # one SamplingParams per request
    assert (params.n, params.temperature, params.top_p, params.max_tokens) == (2, 0.0, 1.0, 64)
    # The default stops: the chat template's end of turn and the eos ids, sent as vLLM's stop_token_ids.
    im_end = backend.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert params.stop_token_ids[0] == im_end and params.stop == []
    # A prompt that alone overflows max_model_len fails without reaching the engine; a long one gets a smaller budget.
    small = make_backend("vllm", model, prompt_format="chat", llm_kwargs={"max_model_len": 40})
    long_question = " ".join(["seven"] * 60)
    near = " ".join(["seven"] * 20)
    replies = {
        r.request.id: r
        for r in small.generate(
            [
                Request(
                    "long", messages=[{"role": "user", "content": long_question}], sampling=Sampling(max_tokens=64)
                ),
                Request("near", messages=[{"role": "user", "content": near}], sampling=Sampling(max_tokens=64)),
            ]
        )
    }
    assert "does not fit the model's context (40 tokens)" in replies["long"].error
    near_tokens = small._prompt_tokens(replies["near"].request)
    assert replies["near"].ok and calls["chat"][-1][1][0].max_tokens == 40 - near_tokens == replies["near"].max_tokens


def test_vllm_data_parallel_is_refused_with_the_supported_ways(monkeypatch, tiny_dirs):
    import types

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=None, SamplingParams=None))
    with pytest.raises(ValueError, match=r"--shard i/N.*vllm serve --data-parallel-size"):
        make_backend("vllm", tiny_dirs["chatml"], llm_kwargs={"data_parallel_size": 2})
    # Not a setting any more (the strict parser refuses it as an unknown key).
    assert "data_parallel_size" not in {f.name for f in dataclasses.fields(GenerateConfig)}


def test_vllm_auto_format_follows_the_chat_template(monkeypatch, tiny_dirs):
    import types

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=None, SamplingParams=None))
    assert make_backend("vllm", tiny_dirs["chatml"]).uses_chat
    assert not make_backend("vllm", tiny_dirs["plain"]).uses_chat  # a base model gets completion prompts


# --- review findings: LaTeX in prompts, stale outputs, keys, event loops, odd replies --------------------------------


def test_prompts_keep_latex_braces():
    from cgd_trainer.templates import CRITIQUE_TEMPLATE, REFINE_SYSTEM, fill

    question = r"Compute $\frac{1}{x^{2}}$ and give \boxed{\frac{1}{4}}."
    answer = r"$\sqrt{\frac{a}{b}}$ {{not a placeholder}}"
    assert fill(CRITIQUE_TEMPLATE, question=question, initial_response=answer) == (
        f"### Question\n{question}\n\n### Student's answer\n{answer}"
    )
    assert fill("{{literal}} {question}", question="}}") == "{literal} }}"  # template braces only
    assert REFINE_SYSTEM.endswith("\\boxed{}.") and "{{" not in REFINE_SYSTEM


def test_outputs_of_replaced_settings_are_not_used(tmp_path):
    recs = DEMO[:3]
    with ScriptedServer(reply=lambda m: f"[{len(m)}] ok\nConclusion: right") as server:
        common = dict(max_records=3, stages=["critique", "refine"], initial_response_field="initial_response")
        first = run(tmp_path, teacher=fast_openai(server.base_url), teacher_backend="openai", **common)
        assert first["records"] == 3
        # A new teacher whose critique of the first record fails: the old teacher's critique must not be used.
        server.faults[critique_key(recs[0])] = [500] * 10
        teacher = fast_openai(server.base_url, model="another-teacher", max_retries=1)
        second = run(tmp_path, teacher=teacher, teacher_backend="openai", **common)
        assert second["failed"] == {"critique": 1, "refine": 0}
        assert second["stages"]["refine"]["waiting for an earlier stage"] == 1
        assert second["records"] == 2 and second["incomplete_records"] == {"critique": 1}


def test_new_drafts_invalidate_old_critiques(tmp_path):
    run(tmp_path, max_records=4)  # demo student and teacher: complete records
    # Only the probe stage runs, with a new student prompt (the demo student writes the same drafts again).
    summary = run(tmp_path, max_records=4, stages=["probe"], student=None, student_backend="demo",
                  probe_system_prompt="Answer briefly.")  # fmt: skip
    assert summary["stages"]["probe"]["generated"] == 4
    stored = StageStore(tmp_path / "out" / "critique.jsonl").entries
    assert len(stored) == 4 and summary["records"] == 4  # the demo student writes the same drafts: still valid
    # Now the stored drafts change: the critiques and refinements were made for the old ones and no longer count.
    lines = read_jsonl(tmp_path / "out" / "probe.jsonl")
    for line in lines[-4:]:
        line["text"] += " (edited)"
    (tmp_path / "out" / "probe.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines[-4:]), "utf-8")
    summary = run(tmp_path, max_records=4, stages=["refine"], probe_system_prompt="Answer briefly.")
    assert summary["records"] == 0 and summary["incomplete_records"] == {"critique": 4}


def test_extra_body_is_part_of_the_request_key():
    from cgd_trainer.pipeline import request_key

    request = Request("x", messages=[{"role": "user", "content": "hi"}])
    keys = {
        request_key(OpenAIBackend("m"), request),
        request_key(OpenAIBackend("m", extra_body={"top_k": 20}), request),
        request_key(OpenAIBackend("m", extra_body={"chat_template_kwargs": {"enable_thinking": True}}), request),
    }
    assert len(keys) == 3


def test_openai_backend_inside_a_running_event_loop():
    import asyncio

    with ScriptedServer() as server:
        backend = fast_openai(server.base_url)

        async def notebook_cell():
            return list(
                backend.generate([Request(str(i), messages=[{"role": "user", "content": str(i)}]) for i in range(5)])
            )

        replies = asyncio.run(notebook_cell())
    assert sorted(r.request.id for r in replies) == ["0", "1", "2", "3", "4"] and all(r.ok for r in replies)


def test_stopping_early_cancels_requests_in_flight():
    # Each answer takes 1 s, so the test thread has that long to close before the next two requests would go.
    with ScriptedServer(delay=1.0) as server:
        backend = fast_openai(server.base_url, concurrency=2)
        replies = backend.generate(
            [Request(str(i), messages=[{"role": "user", "content": str(i)}]) for i in range(20)]
        )
        first = next(replies)
        replies.close()
        assert first.ok
        time.sleep(0.5)
        assert len(server.requests) <= 4  # the other 16 were never sent


def test_retry_after_is_honoured_beyond_the_backoff_cap():
    with ScriptedServer(faults={"hi": [429]}, retry_after="1") as server:
        backend = fast_openai(server.base_url, backoff_max=0.01)
        start = time.monotonic()
        (reply,) = list(backend.generate([Request("x", messages=[{"role": "user", "content": "hi"}])]))
        assert reply.ok and reply.attempts == 2 and time.monotonic() - start >= 1.0


def test_cut_surrogates_and_unclosed_thinking(tmp_path):
    assert strip_thinking("Let me check this.\n<think>the student wrote") == ""
    with ScriptedServer(reply=lambda m: "cut emoji \ud83d\nConclusion: wrong") as server:
        summary = run(tmp_path, teacher=fast_openai(server.base_url), teacher_backend="openai", max_records=2,
                      stages=["critique"], initial_response_field="initial_response")  # fmt: skip
    assert summary["stages"]["critique"]["generated"] == 2
    assert read_jsonl(tmp_path / "out" / "critique.jsonl")[0]["text"] == "cut emoji ?\nConclusion: wrong"


def test_exit_status_counts_only_the_stages_the_command_runs(tmp_path):
    from cgd_trainer.commands.generate import main

    args = ["--student_backend", "demo", "--teacher_backend", "demo", "--max_records", "4", "--id_field", "id"]
    # A probe-only job that finished everything it can: 0, although the records still wait for the teacher.
    assert main([*args, "--output_dir", str(tmp_path / "a"), "--stages", "probe"]) == 0
    summary = json.loads((tmp_path / "a" / "summary.json").read_text("utf-8"))
    assert summary["records"] == 0 and summary["incomplete_records"] == {"critique": 4}
    # The same records left incomplete at a stage the command runs: 3 (a rerun continues).
    questions = tmp_path / "q.jsonl"
    questions.write_text(json.dumps({"id": "x", "prompt": "What is the capital of France?"}) + "\n", "utf-8")
    run_args = [*args, "--dataset_name", str(questions), "--output_dir", str(tmp_path / "b"), "--stages", "probe"]
    assert main(run_args) == 3


def test_keys_of_requests_without_stops_are_unchanged():
    # Stage files written before stops existed stay cached: a request without stops hashes as it always did.
    import hashlib

    from cgd_trainer.pipeline import request_key

    backend = OpenAIBackend("teacher", base_url="http://127.0.0.1:9/v1")
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    request = Request("a", messages=messages, sampling=backend.resolve(Sampling(max_tokens=7)))
    before = {
        "model": "teacher",
        "input": messages,
        "sampling": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 7, "n": 1, "seed": None},
    }
    digest = hashlib.sha256(json.dumps(before, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
    assert request_key(backend, request) == digest
    stopped = Request("a", messages=messages, sampling=Sampling(max_tokens=7, stop=("\n###",)))
    assert request_key(backend, stopped) != digest
