"""Step time of CGDTrainer vs SFTTrainer on the same converted data vs plain prompt→refined SFT (CPU).

Every configuration is measured in the same process, interleaved and in alternating order, so the ratios compare like
with like. Prints a markdown table of medians. Run: `python benchmarks/train_step.py` (about 2 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import StepTimer, bench_config, quiet  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import PrinterCallback  # noqa: E402
from trl import SFTTrainer  # noqa: E402

from cgd_trainer import CGDConfig, CGDTrainer, CritiqueCollator  # noqa: E402
from cgd_trainer.demo_data import generate_records  # noqa: E402
from cgd_trainer.tiny import build_model, build_tokenizer  # noqa: E402

MODELS = {"tiny": (64, 2), "small": (256, 4), "20M": (512, 8)}


def _config(output_dir: str, steps: int, packing: bool) -> CGDConfig:
    return bench_config(
        output_dir,
        per_device_train_batch_size=8,
        max_steps=steps,
        learning_rate=1e-4,
        max_length=1024,
        packing=packing,
    )


def _trainer(kind: str, data: dict, tokenizer, size: tuple[int, int], steps: int, packing: bool, output_dir: str):
    """Builds one trainer and counts the tokens of the batches it will train on."""
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
    return {"trainer": trainer, "timer": timer, "tokens": tokens / steps, "trained": trained / steps, "steps": []}


def _train_once(run: dict) -> None:
    # The trainer is reused across repeats (same batches, same seed); each `train()` call is one timed run. The first
    # two steps of a run pay for thread start-up and are left out.
    run["timer"].times.clear()
    run["trainer"].train()
    run["steps"].extend(run["timer"].times[2:])


def _step_ab(runs: dict, kinds: list[str], steps: int, rounds: int) -> dict[str, float]:
    """
    Median time of one optimizer step (forward, backward, AdamW) of each trainer on its own first batches, the trainers
    taking turns step by step: a slow moment of the machine then hits both, which run-level interleaving cannot do.
    """
    batches = {kind: list(runs[kind]["trainer"].get_train_dataloader())[:steps] for kind in kinds}
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for round_index in range(rounds):
        for step in range(steps):
            shift = (round_index + step) % len(kinds)
            order = kinds[shift:] + kinds[:shift]
            for kind in order:
                trainer = runs[kind]["trainer"]
                start = time.perf_counter()
                trainer.training_step(trainer.model, batches[kind][step])
                trainer.optimizer.step()
                trainer.optimizer.zero_grad()
                times[kind].append(time.perf_counter() - start)
    return {kind: statistics.median(values) for kind, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--packed", action="store_true", help="also packed (bfd) batches: slow with sdpa on a CPU")
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--models", nargs="*", default=["tiny", "small"], choices=list(MODELS))
    options = parser.parse_args()

    quiet()
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
        f"{options.records} demo records, batch 8, {options.steps} steps per run, {options.repeats} interleaved runs; "
        "median of steps 3+ pooled over runs\n"
    )
    print(
        "| model | batches | trainer | tokens/step | trained tokens/step | ms/step | tokens/s | trained tokens/s |",
        flush=True,
    )
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for name in options.models:
        model_name = f"{name} (h{MODELS[name][0]}, {MODELS[name][1]} layers)"
        for packing in (False, True) if options.packed else (False,):
            with tempfile.TemporaryDirectory() as output_dir:
                runs = {
                    kind: _trainer(kind, data, tokenizer, MODELS[name], options.steps, packing, output_dir)
                    for kind in kinds
                }
                for repeat in range(options.repeats):
                    # Rotate the order so that every trainer runs first, second and last equally often.
                    for kind in kinds[repeat % len(kinds) :] + kinds[: repeat % len(kinds)]:
                        _train_once(runs[kind])
                # A second SFTTrainer on the same data measures the noise floor: it runs the very same code.
                control = "SFTTrainer, second instance"
                data[control] = data["SFTTrainer, same converted data"]
                runs[control] = _trainer(control, data, tokenizer, MODELS[name], options.steps, packing, output_dir)
                _train_once(runs[control])
                pair = ["CGDTrainer", "SFTTrainer, same converted data", control]
                ab = _step_ab(runs, pair, options.steps, rounds=2)
            medians = {}
            for kind in kinds:
                step = statistics.median(runs[kind]["steps"])
                tokens, trained = runs[kind]["tokens"], runs[kind]["trained"]
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
            batches = "packed (bfd)" if packing else "padded"
            print(
                f"| {model_name} | {batches} | step-interleaved: CGDTrainer {ab[pair[0]] * 1000:.1f} ms / SFTTrainer "
                f"{ab[pair[1]] * 1000:.1f} ms | | | **{ab[pair[0]] / ab[pair[1]]:.3f}** | | |"
            )
            print(
                f"| {model_name} | {batches} | noise floor: a second SFTTrainer {ab[pair[2]] * 1000:.1f} ms / "
                f"SFTTrainer {ab[pair[1]] * 1000:.1f} ms | | | {ab[pair[2]] / ab[pair[1]]:.3f} | | |"
            )


if __name__ == "__main__":
    main()
