"""`cgd generate` on real models and servers: stop strings and stop token ids, per-stage budgets that fit the model's
context (local config, vLLM's `/v1/models`, vLLM's 400 error body), against tiny local models and a loopback server
that answers like vLLM."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest

from cgd_trainer.backends import Request, Sampling, TransformersBackend
from cgd_trainer.backends.local import end_of_turn_token
from cgd_trainer.backends.openai import OpenAIBackend, context_error
from cgd_trainer.pipeline import GenerateConfig
from generate_helpers import fast_openai, read_jsonl, run_pipeline
from helpers import build_model
from servers import ScriptedServer, count_tokens


def run(tmp_path: Path, student=None, teacher=None, **overrides) -> dict:
    return run_pipeline(tmp_path, student, teacher, **{"max_records": 3, **overrides})


def save_model(tokenizer, family: str, path: Path, **config) -> str:
    """A tiny model folder; `config` changes its config (e.g. a short context) and its generation_config."""
    model = build_model(tokenizer, family)
    for key, value in config.items():
        setattr(model.config, key, value)
        if key == "eos_token_id":
            model.generation_config.eos_token_id = value
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


# --- stops -----------------------------------------------------------------------------------------------------------


def test_default_stop_ids_are_the_end_of_turn_and_every_eos(tmp_path, tokenizers):
    # Like Qwen2.5-Math (eos <|endoftext|>, turns end with <|im_end|>) and Llama 3.1 (eos <|end_of_text|>, turns end
    # with <|eot_id|>): the end-of-turn token must stop the answer although the tokenizer calls another token eos.
    qwen_like = tokenizers["chatml"].__class__.from_pretrained(
        save_model(tokenizers["chatml"], "chatml", tmp_path / "src-chatml")
    )
    qwen_like.eos_token = "<|endoftext|>"
    folder = save_model(qwen_like, "chatml", tmp_path / "qwen", eos_token_id=qwen_like.eos_token_id)
    backend = TransformersBackend(folder)
    ids = backend.default_stops()[1]
    im_end, endoftext = (qwen_like.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    assert ids == (im_end, endoftext)
    assert end_of_turn_token(backend.tokenizer) == "<|im_end|>"

    llama_like = tokenizers["llama3"]
    end_of_text = llama_like.convert_tokens_to_ids("<|end_of_text|>")
    folder = save_model(llama_like, "llama3", tmp_path / "llama", eos_token_id=[end_of_text])
    ids = TransformersBackend(folder).default_stops()[1]
    assert ids == (llama_like.convert_tokens_to_ids("<|eot_id|>"), end_of_text)

    # No chat template: no end of turn, only the eos; completion prompts never use the template's token.
    plain = TransformersBackend(save_model(tokenizers["plain"], "plain", tmp_path / "plain"))
    assert plain.default_stops()[1] == (tokenizers["plain"].eos_token_id,)
    qwen_folder = str(tmp_path / "qwen")
    assert TransformersBackend(qwen_folder, prompt_format="completion").default_stops()[1] == (endoftext,)


def test_transformers_backend_stops_at_stop_ids_and_strings(tiny_dirs):
    backend = TransformersBackend(tiny_dirs["chatml"])
    question = [{"role": "user", "content": "Question 3: what is 12 + 30? Show your work."}]
    free = next(
        backend.generate([Request("a", messages=question, sampling=Sampling(max_tokens=24, stop_token_ids=()))])
    )
    assert free.ok and free.completion_tokens == 24
    # The ids the model wrote: pick one whose first occurrence is well inside the answer.
    text, _ = backend._text(free.request)
    encoded = backend.tokenizer(text, return_tensors="pt", add_special_tokens=False)
    ids = backend.model_obj.generate(**encoded, max_new_tokens=24, do_sample=False)[0, encoded["input_ids"].shape[1] :]
    ids = ids.tolist()
    position = next(i for i in range(3, len(ids)) if ids[i] not in ids[:i])
    stopped = next(
        backend.generate(
            [Request("b", messages=question, sampling=Sampling(max_tokens=24, stop_token_ids=(ids[position],)))]
        )
    )
    assert stopped.completion_tokens == position + 1  # the stop token is generated, not returned
    assert stopped.texts[0] == backend.tokenizer.decode(ids[:position], skip_special_tokens=True)

    words = free.texts[0]
    stop = words[len(words) // 2 : len(words) // 2 + 3]
    cut = next(
        backend.generate(
            [Request("c", messages=question, sampling=Sampling(max_tokens=24, stop=(stop,), stop_token_ids=()))]
        )
    )
    assert cut.texts[0] == words[: words.index(stop)] and len(cut.texts[0]) < len(words)


def test_completion_prompts_stop_before_a_new_question(tmp_path):
    # A base model on a completion prompt writes its answer, then a new "Question:" block; the default stop ends it.
    def base_model(messages):
        return "The sum is 42.\nQuestion: what is 7 + 8?\nAnswer: 15"

    with ScriptedServer(reply=base_model, model="student") as server:
        student = fast_openai(server.base_url, "student", prompt_format="completion")
        summary = run(tmp_path, student=student, student_backend="openai", student_model="student")
        probes = read_jsonl(tmp_path / "out" / "probe.jsonl")
        assert [p["text"] for p in probes] == ["The sum is 42."] * 3
        assert all(body["stop"] == ["\nQuestion:"] for body in server.bodies)
        assert "stop_token_ids" not in server.bodies[0]  # a server applies its own model's end of turn and eos
        assert summary["provenance"]["sampling"]["probe"]["stop"] == ["\nQuestion:"]

        # Per-stage stops replace the defaults, go out as they are (ids in the body, as vLLM takes them) and are part
        # of the request key: the probes are made again.
        server.bodies.clear()
        summary = run(
            tmp_path,
            student=fast_openai(server.base_url, "student", prompt_format="completion"),
            student_backend="openai",
            student_model="student",
            probe_stop=["\nAnswer:"],
            probe_stop_token_ids=[7],
        )
        assert summary["stages"]["probe"]["generated"] == 3
        assert summary["stages"]["probe"]["regenerated: settings or inputs changed"] == 3
        assert all(body["stop"] == ["\nAnswer:"] and body["stop_token_ids"] == [7] for body in server.bodies)
        assert read_jsonl(tmp_path / "out" / "probe.jsonl")[-1]["text"] == "The sum is 42.\nQuestion: what is 7 + 8?"


def test_local_student_default_stops_are_in_keys_and_provenance(tmp_path, tiny_dirs):
    student = TransformersBackend(tiny_dirs["chatml"], batch_size=4)
    summary = run(tmp_path, student=student, student_backend="transformers", max_new_tokens=6)
    im_end = student.tokenizer.convert_tokens_to_ids("<|im_end|>")
    probe = summary["provenance"]["sampling"]["probe"]
    assert probe["stop_token_ids"][0] == im_end and "stop" not in probe and probe["max_tokens"] == 6
    records = read_jsonl(tmp_path / "out" / "records.jsonl")
    assert records[0]["provenance"]["sampling"]["probe"] == probe


def test_stop_strings_against_transformers_serve(served_tiny):
    base_url, model = served_tiny
    backend = OpenAIBackend(model, base_url=base_url, concurrency=1)
    question = [{"role": "user", "content": "Question 3: what is 12 + 30? Show your work."}]
    (free,) = backend.generate([Request("a", messages=question, sampling=Sampling(max_tokens=16))])
    text = free.texts[0]
    assert free.ok and len(text) > 8
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    (cut,) = backend.generate([Request("b", messages=question, sampling=Sampling(max_tokens=16, stop=(stop,)))])
    assert cut.ok and cut.texts[0] == text[: text.index(stop)]


# --- budgets ---------------------------------------------------------------------------------------------------------


def test_per_stage_budgets_are_sent(tmp_path):
    with ScriptedServer() as server:
        summary = run(
            tmp_path,
            teacher=fast_openai(server.base_url),
            teacher_backend="openai",
            teacher_model="teacher",
            critique_max_new_tokens=11,
            refine_max_new_tokens=22,
        )
        budgets = {(body["messages"][0]["content"], body["max_tokens"]) for body in server.bodies}
    from cgd_trainer.templates import CRITIQUE_SYSTEM, REFINE_SYSTEM

    assert budgets == {(CRITIQUE_SYSTEM, 11), (REFINE_SYSTEM, 22)}
    sampling = summary["provenance"]["sampling"]
    assert (sampling["probe"]["max_tokens"], sampling["critique"]["max_tokens"], sampling["refine"]["max_tokens"]) == (
        32,
        11,
        22,
    )
    with pytest.raises(ValueError, match="critique_max_new_tokens"):
        GenerateConfig(critique_max_new_tokens=0)


def test_server_400_context_error_shrinks_the_budget_or_fails_when_the_prompt_alone_does_not_fit():
    fits, long = "word " * 60, "word " * 120
    with ScriptedServer(context=100, report_context=False) as server:
        backend = fast_openai(server.base_url)
        requests = [
            Request("fits", messages=[{"role": "user", "content": fits}], sampling=Sampling(max_tokens=16384)),
            Request("long", messages=[{"role": "user", "content": long}], sampling=Sampling(max_tokens=16384)),
        ]
        replies = {reply.request.id: reply for reply in backend.generate(requests)}
        sent = [(count_tokens(b["messages"][-1]["content"]), b["max_tokens"]) for b in server.bodies]
    assert replies["fits"].ok and replies["fits"].max_tokens == 40 and replies["fits"].attempts == 2
    assert sorted(sent) == [(60, 40), (60, 16384), (120, 16384)]
    assert not replies["long"].ok and replies["long"].attempts == 1  # no retries: it can never fit
    assert replies["long"].error.startswith(
        "the prompt alone (120 tokens) does not fit the model's context (100 tokens)"
    )


def test_v1_models_max_model_len_caps_the_budget():
    with ScriptedServer(context=100) as server:
        (reply,) = fast_openai(server.base_url).generate(
            [Request("a", messages=[{"role": "user", "content": "word " * 10}], sampling=Sampling(max_tokens=500))]
        )
        first = server.bodies[0]["max_tokens"]
    assert first == 99  # read from /v1/models before any request
    assert reply.ok and reply.max_tokens == 90
    with ScriptedServer(context=100) as server:  # a configured context wins over the server's list
        backend = fast_openai(server.base_url, max_context=50)
        list(backend.generate([Request("a", messages=[{"role": "user", "content": "hi"}], sampling=Sampling())]))
        assert server.bodies[0]["max_tokens"] == 49


@pytest.mark.parametrize(
    "message, limits",
    [
        (
            "'max_tokens' or 'max_completion_tokens' is too large: 16384. This model's maximum context length is "
            "32768 tokens and your request has 20000 input tokens (16384 > 32768 - 20000).",
            (32768, 20000),
        ),
        (
            "This model's maximum context length is 32768 tokens. However, you requested 36384 tokens (20000 in the "
            "messages, 16384 in the completion). Please reduce the length of the messages or completion.",
            (32768, 20000),
        ),
        ("This model's maximum context length is 4096 tokens. Please shorten the prompt.", (4096, None)),
        ("Invalid value for temperature", None),
    ],
)
def test_context_error_bodies(message, limits):
    response = httpx.Response(400, request=httpx.Request("POST", "http://x/v1/chat/completions"))
    error = openai.BadRequestError(message, response=response, body={"message": message, "type": "BadRequestError"})
    assert context_error(error) == limits


def test_local_model_context_from_its_config(tmp_path, tokenizers):
    folder = save_model(tokenizers["chatml"], "chatml", tmp_path / "short", max_position_embeddings=40)
    backend = TransformersBackend(folder)
    assert backend.max_context == 40
    near = [{"role": "user", "content": "Question 1: what is 12 + 30? Show your work."}]
    far = [{"role": "user", "content": " ".join(["Check seven holds."] * 30)}]
    replies = {
        r.request.id: r
        for r in backend.generate(
            [
                Request("near", messages=near, sampling=Sampling(max_tokens=100, stop_token_ids=())),
                Request("far", messages=far, sampling=Sampling(max_tokens=100)),
            ]
        )
    }
    length = replies["near"].prompt_tokens
    assert replies["near"].ok and replies["near"].max_tokens == 40 - length
    assert replies["near"].completion_tokens == 40 - length  # the whole budget that fits, not 100
    assert "does not fit the model's context (40 tokens)" in replies["far"].error

    # In the pipeline: counted in the summary, the budget kept in the stage file, the overflow in the failures file.
    folder = save_model(tokenizers["chatml"], "chatml", tmp_path / "longer", max_position_embeddings=160)
    summary = run(
        tmp_path,
        student=TransformersBackend(folder),
        student_backend="transformers",
        probe_max_new_tokens=150,
        probe_stop_token_ids=[],
        max_records=2,
    )
    assert summary["stages"]["probe"]["budget shrunk to fit the context"] == 2
    entries = read_jsonl(tmp_path / "out" / "probe.jsonl")
    assert all(e["max_tokens"] == 160 - e["prompt_tokens"] == e["completion_tokens"] for e in entries)
    summary = run(tmp_path / "b", student=TransformersBackend(folder, max_context=10), student_backend="transformers")
    failures = read_jsonl(tmp_path / "b" / "out" / "probe.failures.jsonl")
    assert summary["failed"]["probe"] == 3 and "does not fit the model's context (10 tokens)" in failures[0]["error"]


def test_served_teacher_context_overflow_in_the_pipeline(tmp_path):
    # The shipped recipes' case: 16k new tokens from a vLLM teacher whose context cannot hold them. Before, each such
    # request was a final 400 failure; now every one is generated with the budget that fits.
    with ScriptedServer(context=400) as server:
        summary = run(
            tmp_path,
            teacher=fast_openai(server.base_url),
            teacher_backend="openai",
            teacher_model="teacher",
            max_new_tokens=16384,
        )
    assert summary["records"] == 3 and summary["failed"] == {"probe": 0, "critique": 0, "refine": 0}
    for stage in ("critique", "refine"):
        assert summary["stages"][stage]["budget shrunk to fit the context"] == 3
        entries = read_jsonl(tmp_path / "out" / f"{stage}.jsonl")
        assert all(e["max_tokens"] == 400 - e["prompt_tokens"] for e in entries)
