"""One record format: with other column names and other wording, the contexts that `cgd build` writes, that the
trainer trains on and that `cgd diagnose` scores are the same text, and their settings are declared once."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
from datasets import Dataset

from cgd_trainer import CGDConfig
from cgd_trainer.collator import CritiqueCollator
from cgd_trainer.commands.build import run as build_cli
from cgd_trainer.commands.diagnose import make_parser as diagnose_parser
from cgd_trainer.commands.diagnose import run as diagnose_cli
from cgd_trainer.commands.train import parse as train_parse
from cgd_trainer.conditions import BuildConfig
from cgd_trainer.evaluation import diagnose as diagnose_module
from cgd_trainer.evaluation.diagnose import CONDITIONS, DiagnoseConfig
from cgd_trainer.trainer import prepare_records
from helpers import make_records

COLUMNS = {"prompt": "problem", "initial_response": "draft", "critique": "feedback", "refined_response": "solution"}
# The same flags for `cgd build`, `cgd train` and `cgd diagnose`: each reads them from the one declaration.
FORMAT_FLAGS = [f"--{role}_field={column}" for role, column in COLUMNS.items()] + [
    "--cgd_instruction=Rewrite the draft so that it answers the problem, using the feedback.",
    "--cgd_template={instruction}\n\n## Problem\n{question}\n\n## Draft\n{initial_response}\n\n## Feedback\n"
    "{critique}",
    "--cgd_critique_template=Feedback on your draft:\n{critique}\n\n{instruction}",
]
# `cgd build` and `cgd diagnose` also word the context without a critique.
NO_CRITIQUE_FLAGS = ["--no_critique_instruction=Rewrite the draft so that it answers the problem."]
CPU_FLAGS = ["--model_name_or_path=unused", "--use_cpu=true", "--bf16=false", "--report_to=none", "--max_length=4096"]
CGD_FAMILY = ("cgd", "irrelevant_critique", "generic_critique")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text("utf-8").splitlines() if line.strip()]


def renamed(record: dict) -> dict:
    return {COLUMNS.get(key, key): value for key, value in record.items()}


def context_ids(prompt: list[dict], tokenizer) -> list[int]:
    """A chat prompt's tokens up to where the answer starts."""
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def trained_contexts(records: list[dict], tokenizer, args) -> list[list[int]]:
    """The tokens the trainer puts before each refined answer (`prepare_records`, as `cgd inspect` shows them)."""
    rows, counts = prepare_records(Dataset.from_list(records), copy.deepcopy(tokenizer), args)
    assert counts["kept"] == len(records)
    return [row["input_ids"][: next(i for i, label in enumerate(row["labels"]) if label != -100)] for row in rows]


@pytest.mark.parametrize("layout", ["single_turn", "multi_turn"])
def test_build_training_and_diagnose_render_one_context(tmp_path, tokenizers, tiny_dirs, monkeypatch, layout):
    tokenizer = tokenizers["chatml"]
    records = [renamed(record) for record in make_records(4)]
    source = tmp_path / "records.jsonl"
    source.write_text("".join(json.dumps(record) + "\n" for record in records), "utf-8")
    flags = [*FORMAT_FLAGS, f"--cgd_layout={layout}"]

    # `cgd build`: the no_critique rows and the CGD-family contexts (its `messages` export).
    sets = tmp_path / "sets"
    build_cli(
        [f"--input={source}", f"--output_dir={sets}", "--export=messages", "--ratios=none", *flags, *NO_CRITIQUE_FLAGS]
    )
    built = {
        name: [row["messages"][:-1] for row in read_jsonl(sets / "messages" / f"{name}.jsonl")] for name in CGD_FAMILY
    }
    built["no_critique"] = [row["prompt"] for row in read_jsonl(sets / "no_critique.jsonl")]
    # The wording is the one given, not the library's.
    last_turn = built["cgd"][0][-1]["content"]
    if layout == "single_turn":
        assert last_turn.startswith(
            "Rewrite the draft so that it answers the problem, using the feedback.\n\n## Problem"
        )
        assert built["no_critique"][0][-1]["content"].startswith("Rewrite the draft so that it answers the problem.\n")
    else:
        assert last_turn.startswith("Feedback on your draft:\n" + records[0]["feedback"])

    # Training on the same records, with the same flags (`cgd train`'s parser).
    args = train_parse(flags + CPU_FLAGS + [f"--output_dir={tmp_path / 'run'}"])[1]
    assert isinstance(args, CGDConfig)
    collator = CritiqueCollator.from_config(args)
    assert [collator.format(record, layout)["prompt"] for record in records] == built["cgd"]
    assert trained_contexts(records, tokenizer, args) == [context_ids(p, tokenizer) for p in built["cgd"]]
    # ... and on the ablations `cgd build` wrote (in its own column names), with the same wording.
    wording = [flag for flag in flags if not flag.split("=")[0].endswith("_field")]
    ablation_args = train_parse(wording + CPU_FLAGS + [f"--output_dir={tmp_path / 'run2'}"])[1]
    for name in CGD_FAMILY:
        rows = read_jsonl(sets / f"{name}.jsonl")
        assert trained_contexts(rows, tokenizer, ablation_args) == [context_ids(p, tokenizer) for p in built[name]]

    # `cgd diagnose` with the same flags: what it scores in each context.
    scored: list = []
    real = diagnose_module.context_ids
    monkeypatch.setattr(diagnose_module, "context_ids", lambda prompt, tok: scored.append(prompt) or real(prompt, tok))
    diagnose_cli(
        [
            f"--model={tiny_dirs['chatml']}",
            f"--dataset={source}",
            f"--output_dir={tmp_path / 'diag'}",
            *flags,
            *NO_CRITIQUE_FLAGS,
        ]
    )
    by_condition = {condition: scored[offset :: len(CONDITIONS)] for offset, condition in enumerate(CONDITIONS)}
    assert by_condition["question+initial+critique"] == built["cgd"]
    assert by_condition["question+initial"] == built["no_critique"]


def test_diagnose_takes_layout_as_an_alias_of_cgd_layout():
    (config,) = diagnose_parser().parse_args_and_config(["--layout", "multi_turn"])
    assert (config.cgd_layout, config.layout) == ("multi_turn", "multi_turn")
    (config,) = diagnose_parser().parse_args_and_config(["--cgd_layout", "plain"])
    assert (config.cgd_layout, config.layout) == ("plain", "plain")
    assert DiagnoseConfig().layout == DiagnoseConfig().cgd_layout == "auto"
    with pytest.raises(ValueError, match="layout"):
        DiagnoseConfig(layout="plain", cgd_layout="multi_turn")


def test_the_settings_are_declared_once():
    from cgd_trainer.record_format import AblationSettings, RecordSettings

    shared = {f.name: f for f in dataclasses.fields(RecordSettings)}
    assert {"prompt_field", "initial_response_field", "critique_field", "refined_response_field"} <= set(shared)
    assert {"cgd_layout", "cgd_instruction", "cgd_template", "cgd_critique_template"} <= set(shared)
    for config in (CGDConfig, BuildConfig, DiagnoseConfig):
        declared = {f.name: f for f in dataclasses.fields(config)}
        # Inherited, not declared again: the very same field, with its default and help.
        assert all(declared[name] is field for name, field in shared.items()), config.__name__
    no_critique = dataclasses.fields(AblationSettings)[-1]
    for config in (BuildConfig, DiagnoseConfig):
        assert {f.name: f for f in dataclasses.fields(config)}["no_critique_instruction"] is no_critique
    # CGDConfig keeps output_dir as its first positional argument, as TrainingArguments has it.
    assert CGDConfig("somewhere", use_cpu=True, bf16=False).output_dir == "somewhere"


def test_a_configured_no_critique_instruction_is_the_multi_turn_follow_up():
    from cgd_trainer.record_format import RecordParts, record_format
    from cgd_trainer.templates import NO_CRITIQUE_FOLLOW_UP

    parts = RecordParts(question="What is 2 + 2?", initial_response="5", critique="Wrong.\nConclusion: wrong")
    default = record_format().render("no_critique", parts, "multi_turn")
    assert default[-1] == {"role": "user", "content": NO_CRITIQUE_FOLLOW_UP}
    own = record_format(no_critique_instruction="Try again, carefully.").render("no_critique", parts, "multi_turn")
    assert own[-1] == {"role": "user", "content": "Try again, carefully."}
