"""The shared layers: the one template engine, the one JSONL reader/writer, `builtin:` names, backend settings."""

from __future__ import annotations

import json

import pytest

from cgd_trainer.backends import BackendSettings, check_overrides
from cgd_trainer.sources import JsonlAppender, read_jsonl, read_rows, resolve_file, resolve_model, write_jsonl
from cgd_trainer.templates import check_template, fill


def test_fill_replaces_placeholders_once_and_leaves_other_braces():
    template = "{instruction} Q: {question} -> \\boxed{} {{question}}"
    out = fill(template, instruction="Do it.", question="x = {critique}?")
    # LaTeX braces stay, doubled braces are literal, and a placeholder inside a value is never filled.
    assert out == "Do it. Q: x = {critique}? -> \\boxed{} {question}"
    with pytest.raises(KeyError, match="critique"):
        fill("{question} {critique}", question="q")


def test_check_template_names_missing_and_unavailable_placeholders():
    check_template("{question}", "t", required=("question",))
    with pytest.raises(ValueError, match=r"`t` must contain the placeholders \['\{question\}'\]"):
        check_template("nothing", "t", required=("question",))
    with pytest.raises(ValueError, match=r"`t` uses \{critique\}, which it is not given"):
        check_template("{question} {critique}", "t", required=("question",), allowed=("question", "instruction"))
    check_template("{question} {{critique}}", "t", required=("question",))  # a literal, not a placeholder


def test_jsonl_round_trip_and_late_keys(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"id": i, "text": "a/b é"} for i in range(5000)] + [{"id": 5000, "text": "x", "late": {"k": [1]}}]
    assert write_jsonl(path, rows, atomic=True) == len(rows)
    assert "a/b é" in path.read_text(encoding="utf-8")  # neither `/` nor UTF-8 escaped
    read = read_rows(path)
    assert len(read) == 5001 and read[0] == {"id": 0, "text": "a/b é", "late": None}
    assert read[-1]["late"] == {"k": [1]}
    with JsonlAppender(path) as appender:
        appender.append({"id": "appended"})
    assert list(read_jsonl(path))[-1] == {"id": "appended"}


def test_bad_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"a": 1}\n{"a": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: not valid JSON"):
        read_rows(path)


def test_json_file_of_objects_or_lines(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps([{"a": 1}, {"b": 2}]), encoding="utf-8")
    assert read_rows(tmp_path / "list.json") == [{"a": 1, "b": None}, {"a": None, "b": 2}]
    (tmp_path / "lines.json").write_text('{"a": 1}\n{"a": 2}\n', encoding="utf-8")
    assert read_rows(tmp_path / "lines.json") == [{"a": 1}, {"a": 2}]


def test_builtin_names_resolve_in_sources(tmp_path):
    from cgd_trainer.demo.problems import demo_data_path

    assert resolve_file("builtin:demo") == demo_data_path()
    assert resolve_file(str(tmp_path / "nothing.jsonl")) is None
    with pytest.raises(ValueError, match="builtin:demo"):
        resolve_file("builtin:dmeo")
    assert resolve_model("Qwen/Qwen2.5-Math-7B", tmp_path) == "Qwen/Qwen2.5-Math-7B"
    with pytest.raises(ValueError, match="builtin:tiny-chatml"):
        resolve_model("builtin:tiny-gpt", tmp_path)


def test_backend_settings_map_onto_each_backend():
    settings = BackendSettings(request_timeout=60, max_model_len=4096, dtype="bfloat16", vllm_kwargs='{"seed": 1}')
    openai = settings.backend_options("openai", base_url="http://x/v1", prompt_format="chat")
    assert openai["timeout"] == 60 and openai["base_url"] == "http://x/v1" and "max_model_len" not in openai
    vllm = settings.backend_options("vllm", engine_defaults={"seed": 0})
    assert vllm["llm_kwargs"] == {"seed": 1, "dtype": "bfloat16", "trust_remote_code": False, "max_model_len": 4096}
    assert settings.backend_options("openai", overrides={"request_timeout": 5})["timeout"] == 5
    with pytest.raises(ValueError, match=r"`request_timout` .* Did you mean `request_timeout`\? Its settings are"):
        check_overrides("openai", {"request_timout": 5})
    with pytest.raises(ValueError, match="`max_model_len` is not a setting of the openai backend .*another backend"):
        check_overrides("openai", {"max_model_len": 5})
    with pytest.raises(ValueError, match="extra_body"):
        BackendSettings(extra_body="{not json")
