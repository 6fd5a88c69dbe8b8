"""CGDTrainer on one CUDA GPU: tokens/s, MFU and peak memory for a Qwen2-0.5B-shaped model (one run, < 5 minutes).

The model is built from config in bf16 (no download); the records have the paper's length mix (questions 100-300
tokens, drafts and critiques 300-1500, refined answers 300-2000). Compared in the same process:

- packed (TRL's padding-free bfd) vs padded batches, with sdpa (and flash_attention_2 when flash-attn is installed);
- TRL's fused LM head (projects only the trained positions) vs a plain loss on the full logits.

Run: `python benchmarks/gpu.py [--out gpu.md]`. MFU uses TRL's `compute_flops_per_token` with the mean document
length and the device's dense bf16 peak from TRL's table.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from common import StepTimer, bench_config, paper_like_records, quiet  # noqa: E402
from datasets import load_dataset  # noqa: E402
from transformers import PrinterCallback, Qwen2Config, Qwen2ForCausalLM  # noqa: E402
from trl.trainer.utils import compute_flops_per_token, get_peak_flops  # noqa: E402

from cgd_trainer import CGDTrainer  # noqa: E402
from cgd_trainer.demo.tiny import build_tokenizer  # noqa: E402

# Qwen2-0.5B's shape; the vocabulary is its full size, so the LM head costs what it costs there.
QWEN2_0_5B = dict(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1e6,
    tie_word_embeddings=True,
)


def run(name, records, tokenizer, attn, packing, full_logits, steps, max_length, rows, batch, smoke=False):
    cuda = torch.cuda.is_available() and not smoke
    if cuda:
        torch.cuda.empty_cache()
    shape = (
        dict(
            QWEN2_0_5B,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        if smoke
        else QWEN2_0_5B
    )
    with tempfile.TemporaryDirectory() as output_dir:
        args = bench_config(
            output_dir,
            bf16=cuda,
            use_cpu=not cuda,
            max_steps=steps,
            learning_rate=1e-5,
            packing=packing,
            max_length=max_length,
            per_device_train_batch_size=rows if packing else batch,
            dataloader_num_workers=2,
            cgd_fused_lm_head=not full_logits,
        )
        config = Qwen2Config(**shape, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        config._attn_implementation = attn
        with torch.device("cuda" if cuda else "cpu"):
            model = Qwen2ForCausalLM(config).to(torch.bfloat16 if cuda else torch.float32)
        trainer = CGDTrainer(model=model, args=args, train_dataset=records, processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        timer = StepTimer(sync=torch.cuda.synchronize if cuda else None)
        trainer.add_callback(timer)

        tokens = trained = slots = 0
        documents = []
        for batch_index, batch in enumerate(trainer.get_train_dataloader()):
            if batch_index == steps:
                break
            if "attention_mask" in batch:
                lengths = batch["attention_mask"].sum(dim=1).tolist()
            else:
                starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["input_ids"].shape[1]]
                lengths = [b - a for a, b in zip(starts, starts[1:])]
            documents += lengths
            tokens += sum(lengths)
            slots += batch["input_ids"].numel()
            trained += int((batch["labels"] != -100).sum())
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        stats = trainer.cgd_stats["train"]
    step = statistics.median(timer.times[3:])
    mean_doc = statistics.mean(documents)
    tokens_per_s = tokens / steps / step
    flops = compute_flops_per_token(config, seq_len=int(mean_doc))
    peak_flops = get_peak_flops(torch.cuda.get_device_name(), "bfloat16") if cuda else None
    mfu = 100 * flops * tokens_per_s / peak_flops if peak_flops else float("nan")
    return {
        "name": name,
        "step_ms": step * 1000,
        "tokens_per_step": tokens / steps,
        "padding": 1 - tokens / slots,
        "tokens_per_s": tokens_per_s,
        "trained_per_s": trained / steps / step,
        "mfu": mfu,
        "peak_gib": peak,
        "shortened": stats["shortened"],
        "dropped": stats["dropped"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--records", type=int, default=192)
    parser.add_argument("--max_length", type=int, default=8192)
    parser.add_argument("--rows", type=int, default=2, help="packed rows of max_length tokens per step")
    parser.add_argument("--batch", type=int, default=4, help="records per padded step")
    parser.add_argument("--out", default=None)
    parser.add_argument("--smoke", action="store_true", help="a tiny model on the CPU, to check the script itself")
    options = parser.parse_args()
    if not torch.cuda.is_available() and not options.smoke:
        sys.exit("benchmarks/gpu.py needs a CUDA GPU (or --smoke).")
    quiet()

    tokenizer = build_tokenizer("chatml")
    # Loaded from a JSONL file as users do (`Dataset.from_list` failed to fingerprint its table on one CUDA image:
    # datasets 5.2 + pyarrow 26 + Python 3.12 could not pickle pyarrow's MonthDayNano type).
    data_file = Path(tempfile.mkdtemp()) / "records.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in paper_like_records(options.records, seed=0)))
    records = load_dataset("json", data_files=str(data_file), split="train")
    plan = [
        ("packed, sdpa, fused LM head", "sdpa", True, False),
        ("packed, sdpa, full logits (cgd_fused_lm_head=False)", "sdpa", True, True),
        ("padded, sdpa, fused LM head", "sdpa", False, False),
    ]
    if not options.smoke:
        # torch's flex attention reads the packed document boundaries without a dense mask and needs no extra package.
        plan.insert(1, ("packed, flex_attention, fused LM head", "flex_attention", True, False))
    if importlib.util.find_spec("flash_attn") is not None:
        plan.insert(1, ("packed, flash_attention_2, fused LM head", "flash_attention_2", True, False))
    results = []
    for name, attn, packing, full_logits in plan:
        settings = (options.steps, options.max_length, options.rows, options.batch)
        try:
            result = run(name, records, tokenizer, attn, packing, full_logits, *settings, smoke=options.smoke)
        except Exception as error:  # one failing kernel should not hide the other numbers
            print(f"{name}: failed with {type(error).__name__}: {str(error)[:300]}", flush=True)
            continue
        results.append(result)
        print(result, flush=True)

    lines = [
        f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, "
        f"torch {torch.__version__}, flash-attn "
        f"{'installed' if importlib.util.find_spec('flash_attn') else 'not installed'}",
        f"model: {'tiny smoke-test' if options.smoke else 'Qwen2-0.5B'} shape, {options.records} records, "
        f"max_length {options.max_length}, {options.steps} steps (median of steps 4+)",
        "",
        "| run | ms/step | tokens/step | padding | tokens/s | trained tokens/s | MFU % | peak GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['step_ms']:.0f} | {r['tokens_per_step']:.0f} | {100 * r['padding']:.1f}% | "
            f"{r['tokens_per_s']:.0f} | {r['trained_per_s']:.0f} | {r['mfu']:.1f} | {r['peak_gib']:.1f} |"
        )
    base = results[0]
    for r in results[1:]:
        lines.append(
            f"\n{r['name']} vs {base['name']}: tokens/s × {r['tokens_per_s'] / base['tokens_per_s']:.2f}, "
            f"peak memory × {r['peak_gib'] / base['peak_gib']:.2f}"
        )
    lines.append(f"\nrecords shortened to fit: {base['shortened']}, dropped: {base['dropped']}")
    report = "\n".join(lines)
    print(report)
    if options.out:
        Path(options.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
