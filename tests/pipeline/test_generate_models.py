"""`cgd generate` and the models behind it: fingerprints of local model folders in the request keys, and backends
closed as soon as no later stage needs them."""

from __future__ import annotations

import shutil
import sys
import types
from pathlib import Path

from cgd_trainer.backends import Request, Sampling, TransformersBackend, make_backend
from cgd_trainer.backends.local import model_fingerprint
from generate_helpers import read_jsonl, run_pipeline
from helpers import build_model
from servers import ScriptedServer


def run(tmp_path: Path, student=None, teacher=None, **overrides) -> dict:
    settings = {"student_backend": "transformers", "max_new_tokens": 4, "max_records": 3, **overrides}
    return run_pipeline(tmp_path, student, teacher, **settings)


def save(tokenizer, path: Path, seed: int) -> str:
    build_model(tokenizer, "chatml", seed=seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_a_model_retrained_into_the_same_folder_regenerates_and_the_summary_says_why(tmp_path, tokenizers):
    folder = save(tokenizers["chatml"], tmp_path / "student", seed=0)
    first = run(tmp_path, student=TransformersBackend(folder), student_model=folder)
    assert first["stages"]["probe"]["generated"] == 3
    fingerprint = first["provenance"]["student"]["fingerprint"]
    assert read_jsonl(tmp_path / "out" / "probe.jsonl")[0]["fingerprint"] == fingerprint

    again = run(tmp_path, student=TransformersBackend(folder), student_model=folder)
    assert again["stages"]["probe"]["cached"] == 3 and "generated" not in again["stages"]["probe"]

    # "Retraining": new weights, same names, same config. The old probes must not be reused.
    save(tokenizers["chatml"], tmp_path / "student", seed=1)
    assert model_fingerprint(folder) != fingerprint
    retrained = run(tmp_path, student=TransformersBackend(folder), student_model=folder)
    probe = retrained["stages"]["probe"]
    assert probe["generated"] == 3 and probe["regenerated: model files changed"] == 3
    assert retrained["provenance"]["student"]["fingerprint"] == model_fingerprint(folder)
    # Later stages follow because the drafts changed.
    assert retrained["stages"]["critique"]["regenerated: settings or inputs changed"] == 3

    # Contents, not dates or places: a copy of the folder has the same fingerprint.
    copy = shutil.copytree(folder, tmp_path / "copy")
    assert model_fingerprint(str(copy)) == model_fingerprint(folder)
    assert model_fingerprint("org/hub-model") is None


def test_the_student_is_closed_before_the_teacher_stages(tmp_path, tiny_dirs):
    student = TransformersBackend(tiny_dirs["chatml"])
    seen = []

    def teacher_reply(messages):
        seen.append(student._model is None)  # is the student's model still held while the teacher works?
        return "Fine.\nConclusion: right"

    with ScriptedServer(reply=teacher_reply) as server:
        teacher = make_backend("openai", "teacher", base_url=server.base_url, concurrency=2)
        summary = run(
            tmp_path,
            student=student,
            teacher=teacher,
            student_model=tiny_dirs["chatml"],
            teacher_backend="openai",
            teacher_model="teacher",
        )
    assert summary["records"] == 3 and len(seen) == 6 and all(seen)


def test_vllm_close_shuts_the_engine_down_once(monkeypatch, tiny_dirs):
    # vLLM cannot run on this CPU machine: a stand-in module records the engine's shutdown.
    shutdowns = []

    class Core:
        def shutdown(self):
            shutdowns.append("core")

    class Engine:
        engine_core = Core()

        def shutdown(self):
            shutdowns.append("engine")

    class LLM:
        def __init__(self, model, **kwargs):
            self.llm_engine = Engine()

        def chat(self, conversations, params, use_tqdm):
            output = types.SimpleNamespace(text="ok", token_ids=[1])
            return [types.SimpleNamespace(prompt_token_ids=[0], outputs=[output]) for _ in conversations]

    fake = types.SimpleNamespace(LLM=LLM, SamplingParams=lambda **kwargs: types.SimpleNamespace(**kwargs))
    monkeypatch.setitem(sys.modules, "vllm", fake)
    backend = make_backend("vllm", tiny_dirs["chatml"])
    backend.close()  # nothing started: nothing to do
    assert shutdowns == []
    request = Request("a", messages=[{"role": "user", "content": "hi"}], sampling=Sampling(max_tokens=4))
    assert next(backend.generate([request])).texts == ["ok"]
    backend.close()
    assert shutdowns == ["engine", "core"] and backend._llm is None
    backend.close()
    assert shutdowns == ["engine", "core"]
