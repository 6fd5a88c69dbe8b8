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
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from transformers import PrinterCallback  # noqa: E402
from trl import SFTTrainer  # noqa: E402

from cgd_trainer import CGDConfig, CGDTrainer, CritiqueCollator  # noqa: E402
from cgd_trainer.demo.problems import generate_records  # noqa: E402
from cgd_trainer.demo.tiny import build_model, build_tokenizer  # noqa: E402

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


def _step_ab(runs: dict, kinds: list[str], steps: int, rounds: int) -> dict[str, list[float]]:
    """
    Times of one optimizer step (forward, backward, AdamW) of each trainer on its own first batches, the trainers
    taking turns step by step: a slow moment of the machine then hits both, which run-level interleaving cannot do.
    Entry i of every list is the same (round, step), so lists can be compared pairwise.
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
    return times


def _paired(times: list[float], reference: list[float]) -> tuple[float, float, float]:
    """Median and quartiles of the per-step ratios `times[i] / reference[i]` (same batch, same moment)."""
    ratios = sorted(a / b for a, b in zip(times, reference))
    low, median, high = statistics.quantiles(ratios, n=4)
    return median, low, high


def _flops(run: dict) -> float:
    """FLOPs of one training step (forward and backward) on the trainer's first batch, counted by torch."""
    trainer = run["trainer"]
    batch = next(iter(trainer.get_train_dataloader()))
    with FlopCounterMode(display=False) as counter:
        trainer.training_step(trainer.model, batch)
    trainer.optimizer.zero_grad()
    return counter.get_total_flops()


def _loading(runs: dict, kinds: list[str], steps: int, rounds: int = 5) -> dict[str, float]:
    """Fastest time to draw and collate one batch from each trainer's dataloader, interleaved over rounds."""
    best = dict.fromkeys(kinds, float("inf"))
    for _ in range(rounds):
        for kind in kinds:
            start = time.perf_counter()
            for index, _batch in enumerate(runs[kind]["trainer"].get_train_dataloader()):
                if index + 1 == steps:
                    break
            best[kind] = min(best[kind], (time.perf_counter() - start) / steps)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=None, help="rounds of the step-interleaved comparison")
    parser.add_argument("--ab_seconds", type=float, default=10, help="time for it per model when --rounds is unset")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--packed", action="store_true", help="also packed (bfd) batches: slow with sdpa on a CPU")
    parser.add_argument("--records", type=int, default=256)
    parser.add_argument("--models", nargs="*", default=["tiny", "small"], choices=list(MODELS))
    options = parser.parse_args()

    quiet()
    torch.manual_seed(0)
    if options.threads:
        torch.set_num_threads(options.threads)

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
    comparisons = []
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
                # Small models have short, noisy steps: give every model about the same time, hence more rounds.
                step_time = statistics.median(runs[pair[1]]["steps"])
                rounds = options.rounds or max(2, round(options.ab_seconds / (len(pair) * options.steps * step_time)))
                ab = _step_ab(runs, pair, options.steps, rounds=rounds)
                flops = {kind: _flops(runs[kind]) for kind in pair}
                loading = _loading(runs, pair, options.steps)
                loaders = [runs[kind]["trainer"].get_train_dataloader() for kind in pair[:2]]
                identical = all(
                    torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
                    for a, b in zip(*loaders)
                )
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
                f"| {model_name} | {'packed (bfd)' if packing else 'padded'} | CGDTrainer / SFTTrainer, whole runs "
                f"(noisy: see the step-by-step table) | | | {ratio:.3f} | | |"
            )
            comparisons.append(
                (model_name, "packed (bfd)" if packing else "padded", pair, ab, flops, loading, identical, rounds)
            )

    print("\nSame batches, step by step (forward, backward, AdamW), trainers taking turns; ratios to SFTTrainer:\n")
    print(
        "| model | batches | trainer | per-step time ratio, median (quartiles) | FLOPs/step (ratio) | "
        "batch loading ms (ratio) |"
    )
    print("|---|---|---|---|---|---|")
    for model_name, batches, pair, ab, flops, loading, identical, rounds in comparisons:
        reference = pair[1]
        for kind, label in zip(pair, ("CGDTrainer", "SFTTrainer (reference)", "noise floor: a second SFTTrainer")):
            median, low, high = _paired(ab[kind], ab[reference])
            bold = "**" if kind == pair[0] else ""
            print(
                f"| {model_name} | {batches} | {label} | {bold}{median:.3f}{bold} ({low:.3f}-{high:.3f}) | "
                f"{flops[kind] / 1e9:.2f} G ({flops[kind] / flops[reference]:.4f}) | "
                f"{loading[kind] * 1000:.1f} ({loading[kind] / loading[reference]:.2f}) |"
            )
        print(
            f"| {model_name} | {batches} | {rounds} rounds × {len(ab[reference])} steps; every batch (ids and labels) "
            f"identical to SFTTrainer's: {identical} ||||"
        )


if __name__ == "__main__":
    main()
