"""Bad input fails before training with a ValueError that names the record, the field and the fix."""

import pytest
from datasets import Dataset, IterableDataset

from cgd_trainer import CGDConfig, CGDTrainer, CritiqueCollator
from helpers import build_model, make_config, make_records


def build(tmp_path, tokenizers, records_or_dataset, family="chatml", **kwargs):
    config = kwargs.pop("config", {})
    dataset = records_or_dataset if not isinstance(records_or_dataset, list) else Dataset.from_list(records_or_dataset)
    return CGDTrainer(
        model=build_model(tokenizers[family], family),
        args=make_config(tmp_path, **config),
        train_dataset=dataset,
        processing_class=tokenizers[family],
        **kwargs,
    )


def with_bad(field, value, index=5, n=8):
    records = make_records(n)
    records[index][field] = value
    return records


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("initial_response", None, r"record 5 of the train dataset, field 'initial_response': the value is None"),
        ("critique", None, r"record 5 of the train dataset, field 'critique': the value is None"),
        ("refined_response", "   ", r"record 5 of the train dataset, field 'refined_response': the text is empty"),
        ("prompt", "", r"record 5 of the train dataset, field 'prompt': the text is empty"),
        ("critique", 3, r"record 5 of the train dataset, field 'critique': expected a string, got int"),
    ],
)
def test_bad_values(tmp_path, tokenizers, field, value, message):
    records = with_bad(field, value)
    if isinstance(value, int):
        # Arrow cannot hold an int in a string column, so build the column that way for every record.
        for record in records:
            record[field] = 3
        message = message.replace("record 5", "record 0")
    with pytest.raises(ValueError, match=message):
        build(tmp_path, tokenizers, records)


def test_non_string_prompt(tmp_path, tokenizers):
    records = make_records(4)
    for record in records:
        record["prompt"] = {"text": record["prompt"]}
    with pytest.raises(ValueError, match=r"record 0 .* field 'prompt': expected a string or a list of chat messages"):
        build(tmp_path, tokenizers, records)


@pytest.mark.parametrize("field", ["prompt", "initial_response", "critique", "refined_response"])
def test_missing_column(tmp_path, tokenizers, field):
    dataset = Dataset.from_list(make_records(4)).remove_columns(field)
    with pytest.raises(
        ValueError,
        match=rf"record 0 of the train dataset, field '{field}': the column is missing.*"
        rf"{field}_field",
    ):
        build(tmp_path, tokenizers, dataset)


def test_renamed_columns(tmp_path, tokenizers):
    dataset = Dataset.from_list(make_records(8)).rename_columns(
        {"prompt": "question", "initial_response": "draft", "critique": "feedback", "refined_response": "answer"}
    )
    trainer = build(
        tmp_path,
        tokenizers,
        dataset,
        config=dict(
            prompt_field="question",
            initial_response_field="draft",
            critique_field="feedback",
            refined_response_field="answer",
        ),
    )
    assert trainer.cgd_stats["train"]["kept"] == 8


def test_empty_dataset(tmp_path, tokenizers):
    empty = Dataset.from_list(make_records(2)).select([])
    with pytest.raises(ValueError, match="The train dataset is empty"):
        build(tmp_path, tokenizers, empty)
    stream = IterableDataset.from_generator(lambda: iter([]), features=Dataset.from_list(make_records(1)).features)
    with pytest.raises(ValueError, match="The train dataset is empty"):
        build(tmp_path, tokenizers, stream)


def test_empty_eval_dataset(tmp_path, tokenizers):
    with pytest.raises(ValueError, match="The eval dataset is empty"):
        build(tmp_path, tokenizers, make_records(4), eval_dataset=Dataset.from_list(make_records(2)).select([]))


@pytest.mark.parametrize(
    "messages, problem",
    [
        ([], "the message list is empty"),
        (["hello"], "message 0 is a str, not a dict"),
        ([{"role": "robot", "content": "hi"}], "message 0 has role 'robot'"),
        ([{"role": "user", "content": None}], "message 0 has content of type NoneType"),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}], "the last message has role"),
        (
            [{"role": "system", "content": "be nice"}, {"role": "user", "content": " "}],
            "the last user message is empty",
        ),
    ],
)
def test_malformed_messages(tokenizers, messages, problem):
    record = {**make_records(1)[0], "prompt": messages}
    collator = CritiqueCollator(tokenizers["chatml"])
    with pytest.raises(
        ValueError, match=rf"record 7 of the train dataset, field 'prompt': {problem}.*Give the prompt"
    ):
        collator.format(record, "single_turn", index=7, dataset_name="train")


def test_malformed_messages_in_trainer(tmp_path, tokenizers):
    records = make_records(6)
    for i, record in enumerate(records):
        role = "assistant" if i == 4 else "user"
        record["prompt"] = [{"role": role, "content": record["prompt"]}]
    with pytest.raises(ValueError, match=r"record 4 of the train dataset, field 'prompt': the last message has role"):
        build(tmp_path, tokenizers, records)


def test_bad_record_in_eval_dataset_named(tmp_path, tokenizers):
    with pytest.raises(ValueError, match=r"record 1 of the holdout dataset, field 'critique'"):
        build(
            tmp_path,
            tokenizers,
            make_records(4),
            eval_dataset={"holdout": Dataset.from_list(with_bad("critique", None, index=1, n=3))},
        )
    trainer = build(tmp_path, tokenizers, make_records(4))
    with pytest.raises(ValueError, match=r"record 2 of the eval dataset, field 'refined_response'"):
        trainer.evaluate(Dataset.from_list(with_bad("refined_response", "", index=2, n=3)))


@pytest.mark.parametrize("layout", ["single_turn", "multi_turn"])
def test_chat_layout_without_chat_template(tmp_path, tokenizers, layout):
    with pytest.raises(ValueError, match=rf"layout '{layout}' renders records as chat messages.*chat_template_path"):
        build(tmp_path, tokenizers, make_records(4), family="plain", config={"cgd_layout": layout})


def test_chat_template_path_enables_chat_layout(tmp_path, tokenizers):
    from helpers import CHATML_TEMPLATE

    template = tmp_path / "chatml.jinja"
    template.write_text(CHATML_TEMPLATE)
    tokenizer = tokenizers["plain"]
    trainer = CGDTrainer(
        model=build_model(tokenizer, "plain"),
        args=make_config(tmp_path, chat_template_path=str(template), cgd_layout="multi_turn"),
        train_dataset=Dataset.from_list(make_records(4)),
        processing_class=tokenizer,
    )
    text = tokenizer.decode(trainer.train_dataset[0]["input_ids"])
    assert "<|im_start|>assistant\n" in text
    tokenizer.chat_template = None  # the tokenizer is shared by the session


def test_formatting_func_rejected(tmp_path, tokenizers):
    with pytest.raises(ValueError, match="`formatting_func` turns the data into plain language-modeling text"):
        build(tmp_path, tokenizers, make_records(4), formatting_func=lambda example: example["prompt"])


def test_assistant_only_loss_needs_chat_layout(tmp_path, tokenizers):
    with pytest.raises(ValueError, match="`assistant_only_loss=True` needs a chat layout"):
        build(tmp_path, tokenizers, make_records(4), family="plain", config={"assistant_only_loss": True})


def test_plain_layout_rejects_conversation_history(tokenizers):
    record = {
        **make_records(1)[0],
        "prompt": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
    }
    with pytest.raises(ValueError, match="the plain layout accepts only system messages"):
        CritiqueCollator(tokenizers["plain"]).format(record, "plain", index=0)


def test_skip_prepare_requires_critique_collator(tmp_path, tokenizers):
    with pytest.raises(ValueError, match="leaves raw CGD records untokenized"):
        build(tmp_path, tokenizers, make_records(4), config={"dataset_kwargs": {"skip_prepare_dataset": True}})
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        build(
            tmp_path,
            tokenizers,
            make_records(4),
            config={"dataset_kwargs": {"skip_prepare_dataset": True}},
            data_collator=CritiqueCollator(tokenizers["chatml"]),
        )


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"cgd_layout": "chat"}, "`cgd_layout` must be one of"),
        ({"cgd_truncation": "left"}, "`cgd_truncation` must be one of"),
        ({"cgd_template": "{question} {critique}"}, r"`cgd_template` must contain the placeholders \['\{initial_resp"),
        ({"cgd_critique_template": "Fix it."}, r"`cgd_critique_template` must contain the placeholders"),
        ({"critique_field": "prompt"}, "The four CGD column names must differ"),
    ],
)
def test_bad_config(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        CGDConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, **settings)


def test_bad_collator_settings(tokenizers):
    with pytest.raises(ValueError, match="`layout` must be one of"):
        CritiqueCollator(tokenizers["chatml"], layout="chat")
    with pytest.raises(ValueError, match="`truncation` must be one of"):
        CritiqueCollator(tokenizers["chatml"], truncation="left")
    with pytest.raises(ValueError, match="needs a `processing_class`"):
        CritiqueCollator()(make_records(1))
