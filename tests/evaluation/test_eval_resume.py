"""`cgd eval` survives long runs: a rerun after `kill -9` sends only what is missing (counted at a loopback server) and
writes what an uninterrupted run writes; failed samples give exit status 3 and are the only ones sent again; benchmarks
by name for decontamination and offline files."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cgd_trainer.cli import main as cli
from cgd_trainer.demo.problems import generate_records
from cgd_trainer.sources import read_jsonl
from servers import ScriptedServer

DEMO = generate_records()
GOLD = {record["prompt"]: record["reference_answer"] for record in DEMO}


def _reply(messages):
    # Right on two questions in three, wrong on the others: an accuracy that a lost or doubled sample would change.
    question = messages[-1]["content"]
    answer = GOLD[question] if len(question) % 3 else "-1"
    return f"Working it out step by step.\nSo the answer is \\boxed{{{answer}}}."


def _config(tmp_path, name, base_url, n):
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        f"models:\n  - {{label: served, model: student, backend: openai, base_url: '{base_url}'}}\n"
        f"benchmarks: ['builtin:demo']\nmax_problems: {n}\nconcurrency: 2\nmax_retries: 0\nplot: false\n"
        f"output_dir: {tmp_path / name}\n"
    )
    return str(config)


def _summary(path):
    summary = json.loads((path / "summary.json").read_text())
    return {key: summary[key] for key in ("results", "average", "drift", "drift_per_benchmark", "failed_samples")}


def test_sigkill_mid_eval_then_resume_sends_only_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    n = 40
    with ScriptedServer(reply=_reply, delay=0.05) as server:
        config = _config(tmp_path, "resumed", server.base_url, n)
        process = subprocess.Popen(
            [sys.executable, "-m", "cgd_trainer.cli", "eval", "--config", config],
            env={**os.environ, "OPENAI_API_KEY": "unused"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        samples = tmp_path / "resumed" / "samples.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if samples.exists() and samples.read_text("utf-8").count("\n") >= 10:
                break
            assert process.poll() is None, "the evaluation finished before it could be killed"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        process.wait()
        text = samples.read_text("utf-8")
        done = {json.loads(line)["prompt"][-1]["content"] for line in text[: text.rfind("\n") + 1].splitlines()}
        assert 10 <= len(done) < n
        sent_before = server.settled_count()

        assert cli(["eval", "--config", config]) == 0
        counts = server.counts()
        # Nothing that finished was sent again; only the requests in flight at the kill were repeated.
        assert all(counts[question] == 1 for question in done)
        assert sum(counts.values()) == sent_before + n - len(done) and len(counts) == n

        # What an uninterrupted run writes: the same samples file, byte for byte, and the same summary.
        assert cli(["eval", "--config", _config(tmp_path, "straight", server.base_url, n)]) == 0
        # A finished run reruns for free: nothing is sent again, the report is written again.
        sent = sum(server.counts().values())
        assert cli(["eval", "--config", config]) == 0
        assert sum(server.counts().values()) == sent
    assert samples.read_bytes() == (tmp_path / "straight" / "samples.jsonl").read_bytes()
    assert _summary(tmp_path / "resumed") == _summary(tmp_path / "straight")
    accuracy = _summary(tmp_path / "straight")["results"]["served"]["demo"]["accuracy"]
    assert 0.5 < accuracy < 0.8


def test_failed_samples_exit_3_and_only_they_are_sent_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "unused")
    n = 6
    broken = DEMO[2]["prompt"]
    with ScriptedServer(reply=_reply, faults={broken: [500]}) as server:
        config = _config(tmp_path, "eval", server.base_url, n)
        assert cli(["eval", "--config", config]) == 3
        assert "1 samples failed" in capsys.readouterr().err
        summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
        assert summary["failed_samples"] == 1
        assert cli(["eval", "--config", config]) == 0
        counts = server.counts()
    assert counts[broken] == 2 and sum(counts.values()) == n + 1
    rows = list(read_jsonl(tmp_path / "eval" / "samples.jsonl"))
    assert len(rows) == n and all(row["error"] is None for row in rows)


def test_benchmarks_by_name_for_decontamination_and_offline_files(tmp_path, capsys):
    # `cgd benchmarks --write` turns a benchmark into a file that eval reads offline ...
    assert cli(["benchmarks", "--write", "builtin:demo", "--output_dir", str(tmp_path / "bench")]) == 0
    rows = list(read_jsonl(tmp_path / "bench" / "demo.jsonl"))
    assert len(rows) == len(DEMO) and rows[0] == {"id": DEMO[0]["id"], "question": DEMO[0]["prompt"], "answer": "52"}
    # ... and `cgd build --decontaminate` takes benchmark names as well as files.
    records = tmp_path / "records.jsonl"
    fresh = [
        {**record, "id": f"fresh-{i}", "prompt": f"A new question number {i} about {i + 3} marbles shared fairly?"}
        for i, record in enumerate(DEMO[8:12])
    ]
    records.write_text("".join(json.dumps(record) + "\n" for record in DEMO[:8] + fresh))
    out = tmp_path / "sets"
    assert cli(["build", "--input", str(records), "--output_dir", str(out), "--decontaminate", "builtin:demo"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["filters"]["decontamination"]["dropped"] == 8  # the benchmark's own questions; the fresh ones stay
    assert (out / "decontamination" / "demo.jsonl").exists()
    # A registry benchmark that cannot be reached (no hub here) is one line naming it and the way on, status 2.
    capsys.readouterr()
    status = cli(["build", "--input", str(records), "--output_dir", str(out), "--decontaminate", "math500"])
    error = capsys.readouterr().err
    assert status == 2 and "--decontaminate math500" in error and "cgd benchmarks --write math500" in error
    assert cli(["build", "--input", str(records), "--output_dir", str(out), "--decontaminate", "nosuch"]) == 2
    assert "not a registry name" in capsys.readouterr().err


def test_each_model_is_released_before_the_next_loads(tmp_path, monkeypatch):
    # Several local models (or checkpoints) in one process: each engine is closed before the next one is built, so
    # that a GPU holds one model at a time (`VLLMBackend.close()` shuts its engine down the same way).
    from cgd_trainer.backends import TransformersBackend

    events = []
    built, closed = TransformersBackend.__init__, TransformersBackend.close

    def build(self, model, *args, **kwargs):
        events.append(("open", Path(model).parent.name))
        built(self, model, *args, **kwargs)

    def close(self):
        events.append(("close", Path(self.model).parent.name))
        closed(self)

    monkeypatch.setattr(TransformersBackend, "__init__", build)
    monkeypatch.setattr(TransformersBackend, "close", close)
    config = tmp_path / "eval.yaml"
    config.write_text(
        "models:\n  - {model: 'builtin:tiny-chatml', label: first}\n"
        "  - {model: 'builtin:tiny-llama3', label: second}\n"
        "benchmarks: ['builtin:demo']\nmax_problems: 2\nmax_new_tokens: 4\nplot: false\n"
        f"output_dir: {tmp_path / 'out'}\n"
    )
    assert cli(["eval", "--config", str(config)]) == 0
    first, second = "tiny-chatml", "tiny-llama3"
    assert events == [("open", first), ("close", first), ("open", second), ("close", second)]


def test_checkpoint_selection_resumes_per_checkpoint(tmp_path, tokenizers, monkeypatch):
    # A selection run cut short (its last samples lost, a half-written line left): the rerun generates only those.
    from cgd_trainer.backends import TransformersBackend
    from helpers import build_model

    root = tmp_path / "run"
    for step in (1, 2):
        build_model(tokenizers["chatml"], "chatml", seed=step).save_pretrained(root / f"checkpoint-{step}")
        tokenizers["chatml"].save_pretrained(root / f"checkpoint-{step}")
    heldout = str(Path(__file__).parents[1] / "fixtures" / "mini_heldout.jsonl")
    argv = ["eval", "--backend", "transformers", "--checkpoints_dir", str(root), "--include_final", "false"]
    argv += ["--selection_benchmark", heldout, "--benchmarks", "builtin:demo", "--evaluate_selected", "false"]
    argv += ["--max_new_tokens", "4", "--plot", "false", "--output_dir", str(tmp_path / "out")]
    sent = []
    generate = TransformersBackend.generate

    def counted(self, requests):
        sent.extend(request.id for request in requests)
        yield from generate(self, requests)

    monkeypatch.setattr(TransformersBackend, "generate", counted)
    assert cli(argv) == 0
    samples = tmp_path / "out" / "selection_samples.jsonl"
    complete = samples.read_text("utf-8")
    selection = json.loads((tmp_path / "out" / "selection.json").read_text())
    lines = complete.splitlines(keepends=True)
    assert len(lines) == len(sent) == 8  # 4 problems x 2 checkpoints
    samples.write_text("".join(lines[:-2]) + lines[-2][:25], "utf-8")  # as a kill during a write leaves it
    sent.clear()
    assert cli(argv) == 0
    assert len(sent) == 2  # the two lost samples of checkpoint-2, nothing of checkpoint-1
    assert samples.read_text("utf-8") == complete
    assert json.loads((tmp_path / "out" / "selection.json").read_text()) == selection
