"""Same CGD loss whatever the attention kernel: padded sdpa vs packed (padding-free) sdpa / flex_attention / flash.

Builds one batch of CGD records, computes the trainer's loss on it in eval mode with each kernel, and prints the
losses and their largest gap. Run on a GPU (bf16) or, with `--cpu`, on the CPU (float32). With `--train`, it also
trains a few steps of LoRA with activation checkpointing on packed rows with each kernel (the LoRA recipes' setting)
and with `cgd_fused_lm_head=False`, and prints the losses; torch has no flex_attention backward on the CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from common import bench_config, paper_like_records, quiet  # noqa: E402
from datasets import load_dataset  # noqa: E402
from transformers import PrinterCallback, Qwen2Config, Qwen2ForCausalLM  # noqa: E402

from cgd_trainer import CGDTrainer  # noqa: E402
from cgd_trainer.demo.tiny import build_tokenizer  # noqa: E402


def build_model(attn: str, tokenizer, device: str, dtype) -> Qwen2ForCausalLM:
    """The same seeded h256 x 4-layer Qwen2 model for every kernel, so that only the attention differs."""
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=16384,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config._attn_implementation = attn
    return Qwen2ForCausalLM(config).to(device=device, dtype=dtype)


def loss_with(attn: str, packing: bool, data, tokenizer, device: str, dtype) -> float:
    model = build_model(attn, tokenizer, device, dtype).eval()
    with tempfile.TemporaryDirectory() as output_dir:
        args = bench_config(
            output_dir,
            bf16=dtype == torch.bfloat16,
            use_cpu=device == "cpu",
            packing=packing,
            max_length=8192,
            per_device_train_batch_size=8,
        )
        trainer = CGDTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
        total, items = 0.0, 0
        for batch in trainer.get_train_dataloader():
            n = int((batch["labels"][..., 1:] != -100).sum())
            with torch.no_grad():
                total += trainer.compute_loss(model, batch, num_items_in_batch=n).item() * n
            items += n
        return total / items


def train_losses(attn: str, fused: bool, data, tokenizer, device: str, dtype, steps: int) -> list[float]:
    from peft import LoraConfig

    model = build_model(attn, tokenizer, device, dtype)
    with tempfile.TemporaryDirectory() as output_dir:
        args = bench_config(
            output_dir,
            bf16=dtype == torch.bfloat16,
            use_cpu=device == "cpu",
            packing=True,
            max_length=8192,
            per_device_train_batch_size=2,
            max_steps=steps,
            learning_rate=1e-3,
            logging_steps=1,
            gradient_checkpointing=True,
            cgd_fused_lm_head=fused,
        )
        lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = CGDTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=lora)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--records", type=int, default=8)
    parser.add_argument("--train", type=int, default=0, help="also train this many LoRA steps with each kernel")
    options = parser.parse_args()
    quiet()
    device = "cpu" if options.cpu or not torch.cuda.is_available() else "cuda"
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    tokenizer = build_tokenizer("chatml")
    path = Path(tempfile.mkdtemp()) / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in paper_like_records(options.records, seed=3)))
    data = load_dataset("json", data_files=str(path), split="train")
    runs = [("padded", "sdpa", False), ("packed", "sdpa", True), ("packed", "flex_attention", True)]
    if importlib.util.find_spec("flash_attn") is not None and device == "cuda":
        runs.append(("packed", "flash_attention_2", True))
    losses = {}
    for layout, attn, packing in runs:
        try:
            losses[f"{layout} {attn}"] = loss_with(attn, packing, data, tokenizer, device, dtype)
        except Exception as error:  # report and go on
            print(f"{layout} {attn}: failed with {type(error).__name__}: {str(error)[:200]}")
    for name, loss in losses.items():
        print(f"{name:<28} loss per trained token {loss:.6f}")
    values = list(losses.values())
    print(f"largest gap: {max(values) - min(values):.2e} ({device}, {dtype})")
    if options.train:
        runs = [("sdpa", True), ("sdpa", False)] + [("flex_attention", True)] * (device == "cuda")
        if importlib.util.find_spec("flash_attn") is not None and device == "cuda":
            runs.append(("flash_attention_2", True))
        trained = {}
        for attn, fused in runs:
            name = f"packed {attn}, LoRA, checkpointing, {'fused LM head' if fused else 'full logits'}"
            try:
                trained[name] = train_losses(attn, fused, data, tokenizer, device, dtype, options.train)
            except Exception as error:  # report and go on
                print(f"{name}: failed with {type(error).__name__}: {str(error)[:200]}")
        for name, losses in trained.items():
            print(f"{name:<60} losses {' '.join(f'{x:.4f}' for x in losses)}")
        reference = next(iter(trained.values()), None)
        for name, losses in trained.items():
            gap = max(abs(a - b) / abs(b) for a, b in zip(losses, reference))
            print(f"{name:<60} largest relative gap to the first: {gap:.2e}")


if __name__ == "__main__":
    main()
