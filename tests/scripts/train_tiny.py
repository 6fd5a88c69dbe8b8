"""Trains a saved tiny model with CGDTrainer and writes the logged losses; run under torchrun by the tests."""

import argparse
import json
import os
import sys
from pathlib import Path

from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from cgd_trainer import CGDTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests folder, for helpers
from helpers import make_config  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--packing", action="store_true")
    options = parser.parse_args()

    args = make_config(
        Path(options.output),
        output_dir=options.output,
        # accelerate fails on a backend without a process group, so name it only when distributed
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        per_device_train_batch_size=options.batch,
        max_steps=options.steps,
        packing=options.packing,
    )
    tokenizer = AutoTokenizer.from_pretrained(options.model)
    model = AutoModelForCausalLM.from_pretrained(options.model, dtype="float32")
    dataset = load_dataset("json", data_files=options.data, split="train")
    trainer = CGDTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.train()
    if trainer.is_world_process_zero():
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        result = {"losses": losses, "world_size": trainer.args.world_size, "stats": trainer.cgd_stats}
        with open(os.path.join(options.output, "losses.json"), "w") as handle:
            json.dump(result, handle)


if __name__ == "__main__":
    main()
