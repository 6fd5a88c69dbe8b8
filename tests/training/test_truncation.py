"""CGD-aware truncation: the context is shortened (initial answer, then critique, then question), never the refined
answer; records whose refined answer cannot fit are dropped and counted."""

import logging

import pytest
from datasets import Dataset, IterableDataset

from cgd_trainer import CGDTrainer, CritiqueCollator
from helpers import build_model, check_dataloader, check_segment, make_config, make_records, split_batch

MAX_LENGTH = 320


@pytest.fixture(scope="module")
def long_records():
    # Every 4th record has an initial answer and a critique far longer than MAX_LENGTH.
    return make_records(24, seed=1, long_every=4)


def make_trainer(tmp_path, tokenizers, family, records, **config):
    return CGDTrainer(
        model=build_model(tokenizers[family], family),
        args=make_config(tmp_path, **config),
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizers[family],
    )


def _length(collator, tokenizer, record, layout="single_turn"):
    return len(collator.token_ids(collator.format(record, layout), tokenizer)[1])


@pytest.mark.parametrize("family", ["chatml", "llama3", "plain"])
@pytest.mark.parametrize("packing", [False, True])
def test_long_context_is_shortened_and_refined_answer_survives(
    tmp_path, tokenizers, long_records, family, packing, caplog
):
    collator = CritiqueCollator(tokenizers[family])
    layout = collator.resolve_layout()
    too_long = [i for i, r in enumerate(long_records) if _length(collator, tokenizers[family], r, layout) > MAX_LENGTH]
    assert len(too_long) == 6
    with caplog.at_level(logging.WARNING, logger="cgd_trainer"):
        trainer = make_trainer(tmp_path, tokenizers, family, long_records, max_length=MAX_LENGTH, packing=packing)
    assert trainer.cgd_stats["train"] == {"kept": 18, "shortened": 6, "dropped": 0}
    assert "6 shortened" in caplog.text
    # Every record is trained with its whole refined answer and end-of-turn token, within max_length.
    assert check_dataloader(trainer, long_records, family) == set(range(24))
    tokenizer = tokenizers[family]
    for batch in trainer.get_train_dataloader():
        for ids, _ in split_batch(batch):
            assert len(ids) <= MAX_LENGTH
            if "[...]" in tokenizer.decode(ids):
                assert check_segment(tokenizer, ids, _, long_records, family) in too_long
    trainer.train()


def test_shortening_order(tokenizers):
    tokenizer = tokenizers["chatml"]
    record = make_records(4, seed=2, long_every=4)[3]
    collator = CritiqueCollator(tokenizer)
    marker = collator.truncation_marker
    full = _length(collator, tokenizer, record)
    without_initial = _length(collator, tokenizer, {**record, "initial_response": marker})
    without_both = _length(collator, tokenizer, {**record, "initial_response": marker, "critique": marker})
    bare = _length(collator, tokenizer, {**record, "initial_response": marker, "critique": marker, "prompt": marker})
    assert full > without_initial > without_both > bare

    def fitted(max_length):
        collator.max_length = max_length
        formatted, status = collator.fit(record, "single_turn")
        if formatted is None:
            return None, status
        text = formatted["prompt"][-1]["content"]
        assert formatted["completion"][0]["content"] == record["refined_response"]
        assert len(collator.token_ids(formatted, tokenizer)[1]) <= max_length
        return text, status

    # 1. Only the initial answer is cut, keeping its beginning.
    text, status = fitted(without_initial + 10)
    assert status == "shortened"
    assert record["critique"] in text and record["prompt"] in text
    assert record["initial_response"] not in text and record["initial_response"][:20] in text and marker in text
    # 2. The initial answer is gone entirely, then the critique is cut; the question is whole.
    text, status = fitted(without_both + 5)
    assert status == "shortened"
    assert record["prompt"] in text and record["critique"] not in text and record["critique"][:9] in text
    assert record["initial_response"][:20] not in text
    # 3. With no room left for any context, the question is cut too.
    text, status = fitted(bare + 3)
    assert status == "shortened" and record["prompt"] not in text
    # 4. The refined answer with an empty context does not fit: dropped.
    assert fitted(bare - 1) == (None, "dropped")
    # A record that fits is left alone.
    collator.max_length = full
    assert collator.fit(record, "single_turn") == (collator.format(record, "single_turn"), "kept")


@pytest.mark.parametrize("packing", [False, True])
def test_unfit_records_are_dropped_and_counted(tmp_path, tokenizers, caplog, packing):
    fitting = make_records(20, seed=3)
    unfit = make_records(3, seed=4, filler=120)  # refined answers longer than MAX_LENGTH on their own
    records = fitting[:10] + unfit + fitting[10:]
    with caplog.at_level(logging.WARNING, logger="cgd_trainer"):
        trainer = make_trainer(tmp_path, tokenizers, "chatml", records, max_length=MAX_LENGTH, packing=packing)
    assert trainer.cgd_stats["train"] == {"kept": 20, "shortened": 0, "dropped": 3}
    assert "3 dropped" in caplog.text
    seen = check_dataloader(trainer, records, "chatml")
    assert seen == set(range(23)) - {10, 11, 12}
    trainer.train()


def test_drop_policy(tmp_path, tokenizers, long_records):
    trainer = make_trainer(tmp_path, tokenizers, "chatml", long_records, max_length=MAX_LENGTH, cgd_truncation="drop")
    assert trainer.cgd_stats["train"] == {"kept": 18, "shortened": 0, "dropped": 6}
    assert check_dataloader(trainer, long_records, "chatml") == {i for i in range(24) if i % 4 != 3}


def test_none_policy_leaves_records_to_trl(tmp_path, tokenizers, long_records):
    # What CGD-aware truncation prevents. TRL keeps the start of a long record: without packing the record loses its
    # whole refined answer and TRL drops it silently; with packing it stays, with nothing left to train.
    trainer = make_trainer(tmp_path, tokenizers, "chatml", long_records, max_length=MAX_LENGTH, cgd_truncation="none")
    assert trainer.cgd_stats["train"] == {"kept": 24, "shortened": 0, "dropped": 0}
    assert len(trainer.train_dataset) == 18
    assert check_dataloader(trainer, long_records, "chatml") == {i for i in range(24) if i % 4 != 3}
    packed = make_trainer(
        tmp_path, tokenizers, "chatml", long_records, max_length=MAX_LENGTH, cgd_truncation="none", packing=True
    )
    with pytest.raises(AssertionError):
        check_dataloader(packed, long_records, "chatml")


def test_everything_dropped_is_an_error(tmp_path, tokenizers):
    with pytest.raises(ValueError, match="Every record of the train dataset was dropped"):
        make_trainer(tmp_path, tokenizers, "chatml", make_records(4, filler=120), max_length=MAX_LENGTH)


def test_streaming_truncation(tmp_path, tokenizers, long_records):
    records = long_records + make_records(2, seed=4, filler=120)
    stream = IterableDataset.from_generator(lambda: iter(records))
    trainer = CGDTrainer(
        model=build_model(tokenizers["chatml"], "chatml"),
        args=make_config(tmp_path, max_length=MAX_LENGTH, max_steps=2),
        train_dataset=stream,
        processing_class=tokenizers["chatml"],
    )
    seen = check_dataloader(trainer, records, "chatml")
    assert seen == set(range(24))
    assert trainer.cgd_stats["train"]["shortened"] >= 6 and trainer.cgd_stats["train"]["dropped"] >= 2


def test_collator_truncates_on_the_fly(tokenizers, long_records, caplog):
    tokenizer = tokenizers["plain"]
    collator = CritiqueCollator(tokenizer, max_length=MAX_LENGTH)
    records = long_records[:8] + make_records(1, seed=4, filler=120)
    with caplog.at_level(logging.WARNING, logger="cgd_trainer"):
        batch = collator(records)
    assert "dropped 1 of 9" in caplog.text
    segments = split_batch(batch)
    assert len(segments) == 8 and all(len(ids) <= MAX_LENGTH for ids, _ in segments)
    assert [check_segment(tokenizer, ids, labels, records, "plain") for ids, labels in segments] == list(range(8))


def test_plain_training_arguments_fit_records_to_trls_max_length(tmp_path, tokenizers):
    # With `TrainingArguments`, TRL cuts at SFTConfig's default max_length (1024) from the end. CGD truncation must fit
    # records to that same length: before, it saw `max_length=None`, TRL cut the refined answers away and the
    # records were dropped as fully masked while `cgd_stats` counted them as kept.
    from transformers import TrainingArguments
    from trl import SFTConfig

    records = make_records(8, seed=2)
    for record in records[::2]:
        record["initial_response"] = " ".join([record["initial_response"]] * 80)
    tokenizer = tokenizers["chatml"]
    collator = CritiqueCollator(tokenizer)
    default = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False).max_length
    assert all(_length(collator, tokenizer, record) > default for record in records[::2])
    args = TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        max_steps=1,
        per_device_train_batch_size=2,
        report_to="none",
    )
    trainer = CGDTrainer(
        model=build_model(tokenizer, "chatml"),
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
    )
    assert trainer.cgd_stats["train"] == {"kept": 4, "shortened": 4, "dropped": 0}
    assert len(trainer.train_dataset) == 8  # what is counted is what is trained
    assert check_dataloader(trainer, records, "chatml") == set(range(8))
    for batch in trainer.get_train_dataloader():
        assert all(len(ids) <= default for ids, _ in split_batch(batch))
