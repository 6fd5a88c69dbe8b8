"""Step time of CGDTrainer vs SFTTrainer on the same converted data vs plain prompt→refined SFT (CPU).

Every configuration is measured in the same process, interleaved and in alternating order, so the ratios compare like
with like. Prints a markdown table of medians. Run: `python benchmarks/train_step.py` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from datasets import Dataset, disable_progress_bars  # noqa: E402
from transformers import PrinterCallback, TrainerCallback  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402
from trl import SFTTrainer  # noqa: E402

from cgd_trainer import CGDConfig, CGDTrainer, CritiqueCollator  # noqa: E402
from cgd_trainer.demo_data import generate_records  # noqa: E402
from cgd_trainer.tiny import build_model, build_tokenizer  # noqa: E402

MODELS = {"tiny": (64, 2), "small": (256, 4), "20M": (512, 8)}


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step, and the tokens it saw."""

    def __init__(self):
        self.times, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)


def _config(output_dir: str, steps: int, packing: bool) -> CGDConfig:
    return CGDConfig(
        output_dir=output_dir,
        bf16=False,
        use_cpu=True,
        per_device_train_batch_size=8,
        max_steps=steps,
        learning_rate=1e-4,
        logging_steps=1000,
        save_strategy="no",
        report_to="none",
        gradient_checkpointing=False,
        max_length=1024,
        packing=packing,
        disable_tqdm=True,
        seed=0,
    )


def _run(kind: str, data: dict, tokenizer, size: tuple[int, int], steps: int, packing: bool) -> dict:
    with tempfile.TemporaryDirectory() as output_dir:
        args = _config(output_dir, steps, packing)
        model = build_model(tokenizer, "chatml", hidden_size=size[0], num_layers=size[1])
        trainer_cls = CGDTrainer if kind == "CGDTrainer" else SFTTrainer
        trainer = trainer_cls(model=model, args=args, train_dataset=data[kind], processing_class=tokenizer)
        timer = StepTimer()
        trainer.add_callback(timer)
        trainer.remove_callback(PrinterCallback)
        tokens = trained = 0
        for batch in list(trainer.get_train_dataloader())[:steps]:
            mask = batch.get("attention_mask")
            tokens += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
            trained += int((batch["labels"] != -100).sum())
        trainer.train()
    warm = timer.times[2:]  # the first steps pay for allocation and thread start-up
    return {"step": statistics.median(warm), "tokens": tokens / steps, "trained": trained / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--models", nargs="*", default=["tiny", "small"], choices=list(MODELS))
    options = parser.parse_args()

    disable_progress_bars()
    hf_logging.set_verbosity_error()
    logging.getLogger("cgd_trainer").setLevel(logging.ERROR)
    torch.manual_seed(0)

    tokenizer = build_tokenizer("chatml")
    records = generate_records(options.records)
    collator = CritiqueCollator(tokenizer)
    converted = [collator.format(record, "single_turn") for record in records]
    data = {
        "CGDTrainer": Dataset.from_list(records),
        "SFTTrainer, same converted data": Dataset.from_list(converted),
        "SFTTrainer, prompt → refined": Dataset.from_list(
            [
                {
                    "prompt": [{"role": "user", "content": r["prompt"]}],
                    "completion": [{"role": "assistant", "content": r["refined_response"]}],
                }
                for r in records
            ]
        ),
    }
    kinds = list(data)

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        flush=True,
    )
    print(
        f"{options.records} demo records, batch 8, {options.steps} steps per run (median of steps 3+), "
        f"{options.repeats} interleaved repeats\n"
    )
    print(
        "| model | batches | trainer | tokens/step | trained tokens/step | ms/step | tokens/s | trained tokens/s |",
        flush=True,
    )
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for name in options.models:
        model_name = f"{name} (h{MODELS[name][0]}, {MODELS[name][1]} layers)"
        for packing in (False, True):
            results = {kind: [] for kind in kinds}
            for repeat in range(options.repeats):
                order = kinds if repeat % 2 == 0 else kinds[::-1]
                for kind in order:
                    results[kind].append(_run(kind, data, tokenizer, MODELS[name], options.steps, packing))
            medians = {}
            for kind in kinds:
                step = statistics.median(r["step"] for r in results[kind])
                tokens, trained = results[kind][0]["tokens"], results[kind][0]["trained"]
                medians[kind] = step
                print(
                    f"| {model_name} | {'packed (bfd)' if packing else 'padded'} | {kind} | {tokens:.0f} | "
                    f"{trained:.0f} | {step * 1000:.1f} | {tokens / step:.0f} | {trained / step:.0f} |"
                )
            ratio = medians["CGDTrainer"] / medians["SFTTrainer, same converted data"]
            print(
                f"| {model_name} | {'packed (bfd)' if packing else 'padded'} | **CGDTrainer / SFTTrainer** | | | "
                f"**{ratio:.3f}** | | |"
            )


if __name__ == "__main__":
    main()
