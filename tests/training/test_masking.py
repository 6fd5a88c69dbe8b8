"""Token-by-token golden checks: the loss falls on the refined answer (+ its end-of-turn text) and nowhere else."""

import pytest
import torch
from datasets import Dataset, IterableDataset
from peft import LoraConfig
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from cgd_trainer import CGDTrainer, CritiqueCollator
from helpers import (
    CHATML_TRAINING_TEMPLATE,
    build_model,
    check_dataloader,
    check_segment,
    expected_labels,
    make_config,
    split_batch,
)

FAMILIES = ["chatml", "llama3", "plain"]


def make_trainer(tmp_path, tokenizers, family, train_dataset, model=None, **config):
    tokenizer = tokenizers[family]
    return CGDTrainer(
        model=model if model is not None else build_model(tokenizer, family),
        args=make_config(tmp_path, **config),
        train_dataset=train_dataset,
        processing_class=tokenizer,
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batches(tmp_path, tokenizers, records, dataset, family):
    trainer = make_trainer(tmp_path, tokenizers, family, dataset)
    assert check_dataloader(trainer, records, family) == set(range(len(records)))
    # Every prepared row, not only the batches, carries the golden labels.
    for row in trainer.train_dataset:
        check_segment(tokenizers[family], row["input_ids"], row["labels"], records, family)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))


@pytest.mark.parametrize("family", ["chatml", "llama3"])
def test_multi_turn_layout(tmp_path, tokenizers, records, dataset, family):
    trainer = make_trainer(tmp_path, tokenizers, family, dataset, cgd_layout="multi_turn")
    assert check_dataloader(trainer, records, family) == set(range(len(records)))
    # The initial answer is an assistant turn in the context, and it is not trained.
    text = tokenizers[family].decode(trainer.train_dataset[0]["input_ids"])
    assert records[0]["initial_response"] in text
    trainer.train()


@pytest.mark.parametrize("family", FAMILIES)
def test_packing_bfd(tmp_path, tokenizers, records, dataset, family):
    trainer = make_trainer(tmp_path, tokenizers, family, dataset, packing=True, max_length=512)
    assert len(trainer.train_dataset) < len(records), "records should be packed together"
    assert "seq_lengths" in trainer.train_dataset.column_names
    batch = next(iter(trainer.get_train_dataloader()))
    assert "attention_mask" not in batch and "position_ids" in batch  # padding-free batches
    assert check_dataloader(trainer, records, family) == set(range(len(records)))
    trainer.train()


@pytest.mark.parametrize("family", ["chatml", "plain"])
def test_packing_wrapped(tmp_path, tokenizers, records, dataset, family):
    packed = make_trainer(
        tmp_path, tokenizers, family, dataset, packing=True, packing_strategy="wrapped", max_length=256
    )
    plain = make_trainer(tmp_path, tokenizers, family, dataset, max_length=512)
    # Wrapped packing cuts across records, so check the concatenation against the per-record golden labels.
    for row in plain.train_dataset:
        check_segment(tokenizers[family], row["input_ids"], row["labels"], records, family)
    flat = lambda ds, key: [t for row in ds for t in row[key]]  # noqa: E731
    n = len(flat(packed.train_dataset, "input_ids"))
    assert n > 0 and all(len(row["input_ids"]) <= 256 for row in packed.train_dataset)
    assert flat(packed.train_dataset, "input_ids") == flat(plain.train_dataset, "input_ids")[:n]
    assert flat(packed.train_dataset, "labels") == flat(plain.train_dataset, "labels")[:n]
    packed.train()


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_free(tmp_path, tokenizers, records, dataset, family):
    trainer = make_trainer(tmp_path, tokenizers, family, dataset, padding_free=True, max_length=None)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1 and "cu_seq_lens_q" in batch
    assert check_dataloader(trainer, records, family) == set(range(len(records)))
    trainer.train()


def test_padding_free_matches_padded_loss(tmp_path, tokenizers, dataset):
    losses = []
    for settings in ({}, {"padding_free": True, "max_length": None}):
        trainer = make_trainer(tmp_path, tokenizers, "chatml", dataset, **settings)
        batch = next(iter(trainer.get_train_dataloader()))
        trainer.model.eval()
        with torch.no_grad():
            losses.append(trainer.compute_loss(trainer.model, batch).item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)


def _loss_per_trained_token(trainer) -> float:
    trainer.model.eval()
    total, items = 0.0, 0
    for batch in trainer.get_train_dataloader():
        n = int((batch["labels"][..., 1:] != -100).sum())
        with torch.no_grad():
            total += trainer.compute_loss(trainer.model, batch, num_items_in_batch=n).item() * n
        items += n
    return total / items


def test_packed_flex_attention_matches_padded_sdpa(tmp_path, tokenizers, records, dataset):
    # flex_attention is what we advise for packed rows without flash-attn: the same loss as padded sdpa, through LoRA
    # as in the LoRA recipes. (torch has no flex backward on the CPU, so training with it is a GPU check.)
    tokenizer = tokenizers["chatml"]
    padded = make_trainer(tmp_path, tokenizers, "chatml", dataset, max_length=512)
    model = build_model(tokenizer, "chatml")
    model.set_attn_implementation("flex_attention")
    packed = CGDTrainer(
        model=model,
        args=make_config(tmp_path, packing=True, max_length=512),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    assert packed.padding_free and packed.model.config._attn_implementation == "flex_attention"
    assert check_dataloader(packed, records, "chatml") == set(range(len(records)))
    # LoRA starts as the identity (lora_B = 0), so both see the same function.
    assert _loss_per_trained_token(packed) == pytest.approx(_loss_per_trained_token(padded), abs=1e-5)


@pytest.mark.parametrize("packing", [False, True])
def test_trainer_logs_the_packed_attention_advice(tmp_path, tokenizers, dataset, packing, monkeypatch, caplog):
    # The advice itself needs a CUDA device; here the trainer's call is checked: what it passes and that it logs.
    import cgd_trainer.trainer as trainer_module

    calls = []
    monkeypatch.setattr(
        trainer_module, "packed_attention_advice", lambda *args: calls.append(args) or "advice for the test"
    )
    with caplog.at_level("WARNING", logger="cgd_trainer"):
        make_trainer(tmp_path, tokenizers, "chatml", dataset, packing=packing)
    assert calls == [("sdpa", packing, "cpu")]
    assert "advice for the test" in caplog.text


def test_packed_attention_advice():
    from cgd_trainer.trainer import packed_attention_advice

    for attn in ("sdpa", "eager"):
        advice = packed_attention_advice(attn, padding_free=True, device_type="cuda")
        assert f"attn_implementation={attn!r}" in advice
        assert "'flex_attention'" in advice and "'flash_attention_2'" in advice and "group_by_length" in advice
    assert packed_attention_advice("sdpa", padding_free=False, device_type="cuda") is None
    assert packed_attention_advice("sdpa", padding_free=True, device_type="cpu") is None
    for attn in ("flex_attention", "flash_attention_2", "kernels-community/flash-attn2"):
        assert packed_attention_advice(attn, padding_free=True, device_type="cuda") is None


@pytest.mark.parametrize("packing", [False, True])
def test_lora(tmp_path, tokenizers, records, dataset, packing):
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = CGDTrainer(
        model=build_model(tokenizers["chatml"], "chatml"),
        args=make_config(tmp_path, packing=packing),
        train_dataset=dataset,
        processing_class=tokenizers["chatml"],
        peft_config=peft_config,
    )
    assert hasattr(trainer.model, "peft_config")
    assert check_dataloader(trainer, records, "chatml") == set(range(len(records)))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before), "LoRA weights should move"


def test_qlora(tmp_path, tiny_dirs, tokenizers, records, dataset):
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    trainer = CGDTrainer(
        model=tiny_dirs["chatml"],
        args=make_config(tmp_path, model_init_kwargs={"dtype": "float32"}),
        train_dataset=dataset,
        processing_class=tokenizers["chatml"],
        quantization_config=quantization,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    linear_types = {type(m).__name__ for m in trainer.model.modules()}
    assert "Linear4bit" in linear_types
    assert check_dataloader(trainer, records, "chatml") == set(range(len(records)))
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))


@pytest.mark.parametrize("family", ["chatml", "plain"])
def test_eval_datasets_and_evaluate_raw(tmp_path, tokenizers, records, family):
    train = Dataset.from_list(records[:16])
    evals = {"a": Dataset.from_list(records[16:20]), "b": Dataset.from_list(records[20:])}
    trainer = CGDTrainer(
        model=build_model(tokenizers[family], family),
        args=make_config(tmp_path, eval_strategy="steps", eval_steps=1),
        train_dataset=train,
        eval_dataset=evals,
        processing_class=tokenizers[family],
    )
    for name, dataset in trainer.eval_dataset.items():
        loader = trainer.get_eval_dataloader(dataset)
        assert check_dataloader(trainer, records, family, loader) == set(
            range(16, 20) if name == "a" else range(20, 24)
        )
    trainer.train()
    metrics = trainer.evaluate(Dataset.from_list(records[:8]))
    assert "eval_loss" in metrics and metrics["eval_loss"] > 0
    # The same raw records evaluated directly give the loss of their prepared form.
    prepared = trainer._prepare_dataset(
        Dataset.from_list(records[:8]), trainer.processing_class, trainer.args, False, None, "check"
    )
    for row in prepared:
        check_segment(tokenizers[family], row["input_ids"], row["labels"], records, family)
    assert trainer.evaluate(prepared)["eval_loss"] == pytest.approx(metrics["eval_loss"], rel=1e-5)


@pytest.mark.parametrize("family", ["chatml", "plain"])
def test_streaming(tmp_path, tokenizers, records, family):
    def generate():
        yield from records

    stream = IterableDataset.from_generator(generate)
    trainer = make_trainer(tmp_path, tokenizers, family, stream, max_steps=3)
    seen = check_dataloader(trainer, records, family)
    assert seen == set(range(len(records)))
    trainer.train()
    assert trainer.cgd_stats["train"]["kept"] >= len(records)


def test_user_collator(tmp_path, tokenizers, records, dataset):
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizers["chatml"].pad_token_id, pad_to_multiple_of=64)
    trainer = CGDTrainer(
        model=build_model(tokenizers["chatml"], "chatml"),
        args=make_config(tmp_path),
        data_collator=collator,
        train_dataset=dataset,
        processing_class=tokenizers["chatml"],
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[1] % 64 == 0
    assert check_dataloader(trainer, records, "chatml") == set(range(len(records)))
    trainer.train()


def test_assistant_only_loss(tmp_path, tokenizers, records, dataset):
    tokenizer = tokenizers["chatml"]
    original = tokenizer.chat_template
    tokenizer.chat_template = CHATML_TRAINING_TEMPLATE
    try:
        trainer = make_trainer(
            tmp_path, tokenizers, "chatml", dataset, cgd_layout="multi_turn", assistant_only_loss=True
        )
        # The initial answer is an assistant turn too, but only the refined answer is trained.
        assert check_dataloader(trainer, records, "chatml") == set(range(len(records)))
        trainer.train()
    finally:
        tokenizer.chat_template = original


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_with_system_message(tmp_path, tokenizers, records, family):
    chat_records = [
        {
            **record,
            "prompt": [
                {"role": "system", "content": "You are a careful maths tutor."},
                {"role": "user", "content": record["prompt"]},
            ],
        }
        for record in records
    ]
    trainer = make_trainer(tmp_path, tokenizers, family, Dataset.from_list(chat_records))
    assert check_dataloader(trainer, records, family) == set(range(len(records)))
    text = tokenizers[family].decode(trainer.train_dataset[0]["input_ids"])
    assert "You are a careful maths tutor." in text and records[0]["prompt"] in text
    trainer.train()


@pytest.mark.parametrize("family", FAMILIES)
def test_critique_collator_standalone(tokenizers, records, family):
    tokenizer = tokenizers[family]
    collator = CritiqueCollator(tokenizer)
    batch = collator(records[:6])
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    segments = split_batch(batch)
    assert [check_segment(tokenizer, ids, labels, records, family) for ids, labels in segments] == list(range(6))
    # Pre-tokenized rows pass through with their labels.
    row = {"input_ids": segments[0][0], "labels": segments[0][1]}
    again = collator([row])
    assert again["labels"][0].tolist() == segments[0][1]


def test_critique_collator_matches_trainer_preparation(tmp_path, tokenizers, records, dataset):
    trainer = make_trainer(tmp_path, tokenizers, "llama3", dataset)
    collator = CritiqueCollator(tokenizers["llama3"])
    for record, row in zip(records, trainer.train_dataset):
        encoded = collator.encode(record)
        assert encoded["input_ids"] == row["input_ids"]
        assert encoded["labels"] == row["labels"]


@pytest.mark.parametrize("family", ["chatml", "plain"])
def test_critique_collator_on_the_fly_in_trainer(tmp_path, tokenizers, records, dataset, family):
    tokenizer = tokenizers[family]
    collator = CritiqueCollator(tokenizer, max_length=512)
    trainer = CGDTrainer(
        model=build_model(tokenizer, family),
        args=make_config(tmp_path, dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False),
        data_collator=collator,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    # The raw records reach the collator untouched.
    assert trainer.train_dataset.column_names == dataset.column_names
    assert check_dataloader(trainer, records, family) == set(range(len(records)))
    trainer.train()
    metrics = trainer.evaluate(Dataset.from_list(records[:4]))
    assert metrics["eval_loss"] > 0


def test_expected_labels_catches_a_shifted_mask(tokenizers, records):
    # The golden check itself must fail when the mask starts one token late.
    tokenizer = tokenizers["chatml"]
    encoded = CritiqueCollator(tokenizer).encode(records[0])
    labels = list(encoded["labels"])
    first = next(i for i, label in enumerate(labels) if label != -100)
    labels[first] = -100
    assert labels != expected_labels(tokenizer, encoded["input_ids"], records[0]["refined_response"])
    with pytest.raises(AssertionError):
        check_segment(tokenizer, encoded["input_ids"], labels, records, "chatml")
