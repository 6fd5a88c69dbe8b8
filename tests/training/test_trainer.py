"""Layouts, templates, pass-through of TRL data, parity with SFTTrainer, the model card."""

import inspect
import logging

import pytest
import torch
from datasets import Dataset
from transformers import TrainingArguments
from trl import SFTConfig, SFTTrainer

from cgd_trainer import DEFAULT_INSTRUCTION, CGDConfig, CGDTrainer, CritiqueCollator
from cgd_trainer.trainer import rounded_away_share
from helpers import build_model, check_dataloader, make_config, make_records


def test_single_turn_layout_renders_the_papers_sections():
    record = make_records(1)[0]
    formatted = CritiqueCollator().format(record, "single_turn")
    assert formatted["completion"] == [{"role": "assistant", "content": record["refined_response"]}]
    (user,) = formatted["prompt"]
    assert user["role"] == "user"
    text = user["content"]
    # Instruction first, then the three labelled sections in the paper's order.
    positions = [
        text.index(part)
        for part in (
            DEFAULT_INSTRUCTION,
            "### Question\n" + record["prompt"],
            "### Student's initial answer\n" + record["initial_response"],
            "### Teacher's critique\n" + record["critique"],
        )
    ]
    assert positions == sorted(positions) and positions[0] == 0
    assert record["refined_response"] not in text


def test_multi_turn_layout():
    record = make_records(1)[0]
    formatted = CritiqueCollator(instruction="Now write it again, correctly.").format(record, "multi_turn")
    assert [m["role"] for m in formatted["prompt"]] == ["user", "assistant", "user"]
    assert formatted["prompt"][0]["content"] == record["prompt"]
    assert formatted["prompt"][1]["content"] == record["initial_response"]
    assert record["critique"] in formatted["prompt"][2]["content"]
    assert formatted["prompt"][2]["content"].endswith("Now write it again, correctly.")
    assert formatted["completion"] == [{"role": "assistant", "content": record["refined_response"]}]


def test_plain_layout_with_system_message():
    record = {**make_records(1)[0]}
    record["prompt"] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": record["prompt"]}]
    formatted = CritiqueCollator().format(record, "plain")
    assert formatted["prompt"].startswith("Be brief.\n\n" + DEFAULT_INSTRUCTION)
    assert formatted["prompt"].endswith("\n\n### Improved answer\n")
    assert formatted["completion"] == record["refined_response"]


def test_custom_template_keeps_braces_and_ignores_placeholders_in_values():
    template = "Q: {question}\nDraft: {initial_response}\nReview: {critique}\nAnswer in \\boxed{}. {instruction}"
    record = {**make_records(1)[0], "critique": "Wrong; see {question} above.\nConclusion: wrong"}
    collator = CritiqueCollator(template=template, instruction="Go.")
    text = collator.format(record, "single_turn")["prompt"][0]["content"]
    assert text == (
        f"Q: {record['prompt']}\nDraft: {record['initial_response']}\nReview: {record['critique']}\n"
        "Answer in \\boxed{}. Go."
    )


def test_config_fields_reach_the_trainer(tmp_path, tokenizers, records, dataset):
    trainer = CGDTrainer(
        model=build_model(tokenizers["chatml"], "chatml"),
        args=make_config(
            tmp_path,
            cgd_layout="multi_turn",
            cgd_instruction="Please fix it.",
            cgd_critique_template="Feedback: {critique}\n{instruction}",
        ),
        train_dataset=dataset,
        processing_class=tokenizers["chatml"],
    )
    text = tokenizers["chatml"].decode(trainer.train_dataset[0]["input_ids"])
    assert f"Feedback: {records[0]['critique']}\nPlease fix it.<|im_end|>" in text
    assert check_dataloader(trainer, records, "chatml") == set(range(len(records)))


@pytest.mark.parametrize("family, expected", [("chatml", "single_turn"), ("plain", "plain")])
def test_auto_layout_is_logged(tmp_path, tokenizers, dataset, family, expected, caplog):
    with caplog.at_level(logging.INFO, logger="cgd_trainer"):
        CGDTrainer(
            model=build_model(tokenizers[family], family),
            args=make_config(tmp_path),
            train_dataset=dataset,
            processing_class=tokenizers[family],
        )
    assert f"CGD layout: '{expected}'" in caplog.text


@pytest.mark.parametrize("config_class", [SFTConfig, TrainingArguments])
def test_plain_trl_and_transformers_configs_work(tmp_path, tokenizers, records, dataset, config_class):
    # The CGD fields then take their defaults; SFTTrainer turns TrainingArguments into an SFTConfig itself.
    args = config_class(
        output_dir=str(tmp_path),
        bf16=False,
        use_cpu=True,
        max_steps=1,
        report_to="none",
        per_device_train_batch_size=4,
        save_strategy="no",
    )
    trainer = CGDTrainer(
        model=build_model(tokenizers["llama3"], "llama3"),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizers["llama3"],
    )
    assert type(trainer.args) is SFTConfig
    assert check_dataloader(trainer, records, "llama3") == set(range(len(records)))
    trainer.train()


def test_same_signature_and_loss_code_as_sft_trainer():
    ours = list(inspect.signature(CGDTrainer.__init__).parameters.items())
    theirs = list(inspect.signature(SFTTrainer.__init__).parameters.items())
    assert [(n, p.kind, p.default) for n, p in ours] == [(n, p.kind, p.default) for n, p in theirs]
    # The training step is TRL's own; `compute_loss` hands over to TRL's unless `cgd_fused_lm_head=False` (the losses
    # are compared with SFTTrainer's below).
    for name in ("training_step", "prediction_step", "evaluate"):
        assert getattr(CGDTrainer, name) is getattr(SFTTrainer, name)


def _losses(trainer):
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_identical_losses_to_sft_trainer_on_converted_data(tmp_path, tokenizers, dataset):
    tokenizer = tokenizers["chatml"]
    cgd = CGDTrainer(
        model=build_model(tokenizer, "chatml"),
        args=make_config(tmp_path, max_steps=4),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    collator = CritiqueCollator(tokenizer)
    converted = dataset.map(
        lambda r: collator.format(r, "single_turn"),
        remove_columns=["initial_response", "critique", "refined_response"],
    )
    sft = SFTTrainer(
        model=build_model(tokenizer, "chatml"),
        args=make_config(tmp_path, max_steps=4),
        train_dataset=converted,
        processing_class=tokenizer,
    )
    assert cgd.train_dataset["input_ids"] == sft.train_dataset["input_ids"]
    assert cgd.train_dataset["labels"] == sft.train_dataset["labels"]
    assert _losses(cgd) == _losses(sft)


def _logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


@pytest.mark.parametrize("packing", [False, True])
def test_full_logits_loss_equals_the_fused_lm_head(tmp_path, tokenizers, dataset, packing):
    # `cgd_fused_lm_head=False` trades memory for speed; it must train the same thing and log the same metrics, with
    # gradient accumulation, padded or padding-free.
    tokenizer = tokenizers["chatml"]
    trainers = [
        CGDTrainer(
            model=build_model(tokenizer, "chatml"),
            args=make_config(
                tmp_path, max_steps=3, gradient_accumulation_steps=2, packing=packing, cgd_fused_lm_head=fused
            ),
            train_dataset=dataset,
            eval_dataset=dataset.select(range(8)),
            processing_class=tokenizer,
        )
        for fused in (True, False)
    ]
    batch = next(iter(trainers[0].get_train_dataloader()))
    for trainer in trainers:
        trainer.model.eval()
    with torch.no_grad():
        fused_loss, outputs = trainers[0].compute_loss(trainers[0].model, dict(batch), return_outputs=True)
        full_loss, full_outputs = trainers[1].compute_loss(trainers[1].model, dict(batch), return_outputs=True)
    assert full_loss.item() == pytest.approx(fused_loss.item(), rel=1e-5)
    assert full_outputs.logits.shape == (*batch["input_ids"].shape, trainers[1].model.config.vocab_size)
    for trainer in trainers:
        trainer.model.train()
        trainer._metrics["train"].clear()
        trainer.train()
    fused, full = trainers
    assert _logged(full, "loss") == pytest.approx(_logged(fused, "loss"), rel=1e-4)
    assert _logged(full, "entropy") == pytest.approx(_logged(fused, "entropy"), rel=1e-4)
    assert _logged(full, "mean_token_accuracy") == pytest.approx(_logged(fused, "mean_token_accuracy"), abs=1e-6)
    assert _logged(full, "num_tokens") == _logged(fused, "num_tokens")
    assert _logged(full, "num_tokens")[-1] > 0
    fused_eval, full_eval = fused.evaluate(), full.evaluate()
    assert full_eval["eval_loss"] == pytest.approx(fused_eval["eval_loss"], rel=1e-5)
    assert full_eval["eval_mean_token_accuracy"] == pytest.approx(fused_eval["eval_mean_token_accuracy"], abs=1e-6)


def test_full_logits_with_label_smoothing_and_compute_metrics(tmp_path, tokenizers, dataset):
    # `Trainer.compute_loss` takes the labels out of its inputs for label smoothing: the smoothed loss must equal the
    # fused head's, and `compute_metrics` must still receive the labels at evaluation.
    tokenizer = tokenizers["chatml"]
    seen = []

    def metrics(prediction):
        seen.append(prediction.label_ids.shape)
        return {"seen": 1.0}

    trainers = [
        CGDTrainer(
            model=build_model(tokenizer, "chatml"),
            args=make_config(tmp_path, label_smoothing_factor=0.1, cgd_fused_lm_head=fused),
            train_dataset=dataset,
            eval_dataset=dataset.select(range(4)),
            processing_class=tokenizer,
            compute_metrics=metrics,
        )
        for fused in (True, False)
    ]
    batch = next(iter(trainers[0].get_train_dataloader()))
    with torch.no_grad():
        losses = [t.compute_loss(t.model.eval(), dict(batch)).item() for t in trainers]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    no_smoothing = CGDTrainer(
        model=build_model(tokenizer, "chatml"),
        args=make_config(tmp_path, cgd_fused_lm_head=False),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    with torch.no_grad():
        assert no_smoothing.compute_loss(no_smoothing.model.eval(), dict(batch)).item() != pytest.approx(losses[1])
    result = trainers[1].evaluate()
    assert result["eval_seen"] == 1.0 and len(seen) == 1
    trainers[1].train()
    assert len(_logged(trainers[1], "entropy")) == 2


def test_full_logits_refuses_dft_and_router_losses(tmp_path, tokenizers, dataset):
    with pytest.raises(ValueError, match="loss_type='nll'"):
        make_config(tmp_path, cgd_fused_lm_head=False, loss_type="dft")
    from transformers import MixtralConfig, MixtralForCausalLM

    tokenizer = tokenizers["chatml"]
    config = MixtralConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=2,
        num_experts_per_tok=1,
        output_router_logits=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    with pytest.raises(ValueError, match="mixture-of-experts"):
        CGDTrainer(
            model=MixtralForCausalLM(config),
            args=make_config(tmp_path, cgd_fused_lm_head=False),
            train_dataset=dataset,
            processing_class=tokenizer,
        )


def test_full_logits_metrics_with_prompt_tuning(tmp_path, tokenizers, dataset):
    # Prompt tuning prepends virtual tokens to the logits but not to the labels.
    from peft import PromptTuningConfig

    tokenizer = tokenizers["chatml"]
    model = build_model(tokenizer, "chatml")
    with torch.no_grad():
        model.lm_head.weight.mul_(40)  # peaked predictions, so that a shifted position changes the metrics
    trainer = CGDTrainer(
        model=model,
        args=make_config(tmp_path),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=8),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    metrics = []
    for fused in (True, False):
        trainer.args.cgd_fused_lm_head = fused
        trainer._metrics["eval"].clear()
        with torch.no_grad():
            trainer.compute_loss(trainer.model, dict(batch))
        metrics.append((trainer._metrics["eval"]["entropy"][0], trainer._metrics["eval"]["mean_token_accuracy"][0]))
    assert metrics[1][0] == pytest.approx(metrics[0][0], rel=1e-4)
    assert metrics[1][1] == pytest.approx(metrics[0][1], abs=1e-6)


def test_trained_token_stats_in_chunks():
    from cgd_trainer.trainer import _trained_token_stats

    torch.manual_seed(0)
    logits = torch.randn(2, 7, 11)
    labels = torch.randint(0, 11, (2, 7))
    labels[0, :3] = -100
    labels[1, 5] = -100
    mask, entropy, correct = _trained_token_stats(logits, labels, chunk=3)
    expected_mask = labels[:, 1:] != -100
    picked = logits[:, :-1][expected_mask]
    log_probs = picked.log_softmax(-1)
    assert torch.equal(mask, expected_mask)
    assert entropy.item() == pytest.approx(-(log_probs.exp() * log_probs).sum().item(), rel=1e-6)
    assert correct.item() == int((picked.argmax(-1) == labels[:, 1:][expected_mask]).sum())


@pytest.mark.parametrize("kind", ["prompt_completion", "messages", "text"])
def test_trl_data_passes_through(tmp_path, tokenizers, records, kind):
    tokenizer = tokenizers["chatml"]
    if kind == "prompt_completion":
        rows = [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "completion": [{"role": "assistant", "content": r["refined_response"]}],
            }
            for r in records
        ]
    elif kind == "messages":
        rows = [
            {
                "messages": [
                    {"role": "user", "content": r["prompt"]},
                    {"role": "assistant", "content": r["refined_response"]},
                ]
            }
            for r in records
        ]
    else:
        rows = [{"text": r["prompt"] + "\n" + r["refined_response"]} for r in records]
    data = Dataset.from_list(rows)
    cgd = CGDTrainer(
        model=build_model(tokenizer, "chatml"),
        args=make_config(tmp_path),
        train_dataset=data,
        processing_class=tokenizer,
    )
    sft = SFTTrainer(
        model=build_model(tokenizer, "chatml"),
        args=make_config(tmp_path),
        train_dataset=data,
        processing_class=tokenizer,
    )
    assert cgd.train_dataset["input_ids"] == sft.train_dataset["input_ids"]
    assert cgd.train_dataset["labels"] == sft.train_dataset["labels"]
    assert cgd.cgd_stats == {}


def test_model_card_names_cgd_and_the_paper(tmp_path, tokenizers, dataset):
    # TRL writes the card into output_dir with every checkpoint.
    trainer = CGDTrainer(
        model=build_model(tokenizers["chatml"], "chatml"),
        args=make_config(tmp_path, max_steps=1, save_strategy="steps", save_steps=1),
        train_dataset=dataset,
        processing_class=tokenizers["chatml"],
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    card = (tmp_path / "out" / "README.md").read_text()
    assert "CGD" in card
    assert "2505.11628" in card
    assert "Critique-Guided Distillation" in card
    assert "- cgd" in card  # tag in the YAML header
    assert (tmp_path / "saved" / "model.safetensors").exists()


def test_default_args_are_a_cgd_config(tokenizers, dataset, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    # TRL's defaults ask for bf16, which a CPU cannot do; the error shows a CGDConfig was built.
    with pytest.raises(ValueError, match="bf16"):
        CGDTrainer(
            model=build_model(tokenizers["chatml"], "chatml"),
            train_dataset=dataset,
            processing_class=tokenizers["chatml"],
        )
    assert CGDConfig.__mro__[1] is SFTConfig


def test_loss_only_on_refined_tokens_numerically(tmp_path, tokenizers, dataset):
    # The loss equals a direct cross-entropy over the refined-answer positions only.
    tokenizer = tokenizers["chatml"]
    trainer = CGDTrainer(
        model=build_model(tokenizer, "chatml"),
        args=make_config(tmp_path),
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"][:, 1:]
    direct = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
    )
    assert loss == pytest.approx(direct.item(), rel=1e-4)


def test_records_are_tokenized_once_by_the_trainer(tmp_path, tokenizers, records, dataset):
    # The trainer hands TRL finished rows: TRL then skips its own tokenization, and the rows equal TRL's.
    trainer = CGDTrainer(
        model=build_model(tokenizers["chatml"], "chatml"),
        args=make_config(tmp_path),
        train_dataset=dataset,
        processing_class=tokenizers["chatml"],
    )
    converted = trainer._convert(dataset, trainer.processing_class, trainer.args, "check")
    assert "input_ids" in converted.column_names and "labels" in converted.column_names
    assert not {"prompt", "initial_response", "critique", "refined_response"} & set(converted.column_names)
    assert converted["input_ids"] == trainer.train_dataset["input_ids"]


def test_explicit_completion_only_loss_false_warns_and_trains_everything(tmp_path, tokenizers, dataset, caplog):
    with caplog.at_level(logging.WARNING, logger="cgd_trainer"):
        trainer = CGDTrainer(
            model=build_model(tokenizers["chatml"], "chatml"),
            args=make_config(tmp_path, completion_only_loss=False),
            train_dataset=dataset,
            processing_class=tokenizers["chatml"],
        )
    assert "is not CGD" in caplog.text
    row = trainer.train_dataset[0]
    assert row["labels"] == row["input_ids"]


@pytest.mark.parametrize(
    "dtype, learning_rate, warned",
    [(torch.bfloat16, 1e-6, True), (torch.float32, 1e-6, False), (torch.bfloat16, 1e-2, False)],
)
def test_warns_when_updates_round_away_in_16_bit_weights(
    tmp_path, tokenizers, dataset, caplog, dtype, learning_rate, warned
):
    """bf16 weights with the paper's learning rate and no float32 master copy barely move: a warning says so and how
    to fix it. Float32 weights, or steps large enough for bf16, train without it."""
    model = build_model(tokenizers["chatml"], "chatml").to(dtype)
    before = [param.detach().clone() for param in model.parameters()]
    trainer = CGDTrainer(
        model=model,
        args=make_config(tmp_path, learning_rate=learning_rate, max_steps=1),
        train_dataset=dataset,
        processing_class=tokenizers["chatml"],
    )
    with caplog.at_level(logging.WARNING, logger="cgd_trainer"):
        trainer.train()
    assert ("updates round away" in caplog.text) == warned
    if warned:
        assert "`dtype: float32`" in caplog.text and "DeepSpeed" in caplog.text
    # The premise, checked on the real update: the share of weights the step changed.
    changed = sum(int((p.detach() != b).sum()) for p, b in zip(model.parameters(), before))
    share = changed / sum(b.numel() for b in before)
    assert (share < 0.5) == warned, share


def test_rounded_away_share_matches_bf16_rounding():
    weights = torch.nn.Parameter(torch.tensor([0.02, -0.02, 1.0, 0.0, 3e-5], dtype=torch.bfloat16))
    for step in (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2):
        rounded = [float((w + step).to(torch.bfloat16)) == float(w) for w in weights.detach().float()]
        assert rounded_away_share([weights], step) == (sum(rounded) / len(rounded), torch.bfloat16), step
    assert rounded_away_share([torch.nn.Parameter(torch.ones(3))], 1e-9) == (0.0, None)
    assert rounded_away_share(
        [torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16), requires_grad=False)], 1e-9
    ) == (
        0.0,
        None,
    )
