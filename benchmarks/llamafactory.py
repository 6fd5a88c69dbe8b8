"""CGDTrainer vs LLaMA-Factory (the framework the paper's authors trained with) on the same CGD records (CPU).

The same tiny ChatML model, the same 256 demo CGD records (`cgd build --export alpaca` gives LLaMA-Factory the Alpaca
file the authors' setup uses), the same hyperparameters (full fine-tuning, batch 8, max length 1024, constant LR,
fp32, no packing), each framework in its own process so that peak memory (max RSS) is its own. Reported: median step
time, tokens/s (non-padding tokens), trained tokens/s (labels != -100) and peak RSS, interleaved over repeats.

LLaMA-Factory pins its own versions of transformers/trl/peft, so it lives in a separate virtualenv:

```bash
python -m venv /work/lf-venv && /work/lf-venv/bin/pip install torch llamafactory==0.9.5
python benchmarks/llamafactory.py --lf_python /work/lf-venv/bin/python    # about 2 minutes
```
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs inside LLaMA-Factory's virtualenv: its own SFT workflow, with a callback timing each optimizer step.
LF_DRIVER = r"""
import json, resource, sys, time
from transformers import TrainerCallback
from llamafactory.train.tuner import run_exp

config, out = json.loads(sys.argv[1]), sys.argv[2]

class Timer(TrainerCallback):
    def __init__(self):
        self.times, self.tokens, self.trained, self.padded = [], [], [], []
    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()
    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.start)

timer = Timer()
# Count the tokens of every batch the trainer builds (the collator's output is what the model sees).
import llamafactory.train.sft.workflow as workflow
original = workflow.SFTDataCollatorWith4DAttentionMask.__call__
def counting_call(self, features):
    batch = original(self, features)
    timer.tokens.append(int(batch["attention_mask"].bool().sum()))
    timer.padded.append(batch["input_ids"].numel())
    timer.trained.append(int((batch["labels"] != -100).sum()))
    return batch
workflow.SFTDataCollatorWith4DAttentionMask.__call__ = counting_call
run_exp(config, callbacks=[timer])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
result = {"times": timer.times, "tokens": timer.tokens, "trained": timer.trained, "padded": timer.padded}
json.dump({**result, "peak_mib": peak}, open(out, "w"))
"""

# Runs in this project's environment: CGDTrainer on the CGD columns, same settings, same timing.
CGD_DRIVER = r"""
import json, resource, sys, time
from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from cgd_trainer import CGDConfig, CGDTrainer

settings, out = json.loads(sys.argv[1]), sys.argv[2]

class Timer(TrainerCallback):
    def __init__(self):
        self.times = []
    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()
    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.start)

tokenizer = AutoTokenizer.from_pretrained(settings["model"])
model = AutoModelForCausalLM.from_pretrained(settings["model"], dtype="float32")
data = load_dataset("json", data_files=settings["data"], split="train")
args = CGDConfig(
    output_dir=settings["output_dir"], per_device_train_batch_size=settings["batch"], max_steps=settings["steps"],
    learning_rate=settings["lr"], lr_scheduler_type="constant", max_length=settings["max_length"], packing=False,
    bf16=False, use_cpu=True, report_to="none", save_strategy="no", logging_steps=1000, disable_tqdm=True,
    gradient_checkpointing=False, seed=0, dataloader_num_workers=0,
)
timer = Timer()
trainer = CGDTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, callbacks=[timer])
tokens, trained, padded = [], [], []
collate = trainer.data_collator
def counting(features):
    batch = collate(features)
    tokens.append(int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel())
    trained.append(int((batch["labels"] != -100).sum()))
    padded.append(batch["input_ids"].numel())
    return batch
trainer.data_collator = counting
trainer.train()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
result = {"times": timer.times, "tokens": tokens, "trained": trained, "padded": padded}
json.dump({**result, "peak_mib": peak}, open(out, "w"))
"""


def run(python: str, driver: str, payload: dict, workdir: Path, name: str) -> dict:
    script, out = workdir / f"{name}_driver.py", workdir / f"{name}.json"
    script.write_text(driver, "utf-8")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "WANDB_DISABLED": "true"}
    env.update(TOKENIZERS_PARALLELISM="false", DISABLE_VERSION_CHECK="1", LLAMAFACTORY_VERBOSITY="WARN")
    result = subprocess.run(
        [python, str(script), json.dumps(payload), str(out)], env=env, capture_output=True, text=True, cwd=workdir
    )
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(out.read_text("utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lf_python", default="/work/lf-venv/bin/python", help="Python of LLaMA-Factory's venv.")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    options = parser.parse_args()
    if not Path(options.lf_python).exists():
        sys.exit(f"No LLaMA-Factory Python at {options.lf_python}; see the instructions at the top of this file.")

    from cgd_trainer.build import cli_main as build_main
    from cgd_trainer.demo_data import demo_data_path
    from cgd_trainer.tiny import build_model, build_tokenizer

    workdir = Path(tempfile.mkdtemp(prefix="cgd-lf-bench-"))
    model_dir = workdir / "model"
    tokenizer = build_tokenizer("chatml")
    build_model(tokenizer, "chatml", hidden_size=options.hidden, num_layers=options.layers).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    sets = workdir / "sets"
    build_main(
        [
            "--input", str(demo_data_path()), "--output_dir", str(sets), "--conditions", "cgd",
            "--ratios", "none", "--export", "alpaca",
        ]
    )  # fmt: skip
    common = {"batch": 8, "steps": options.steps, "lr": 1e-4, "max_length": 1024}
    lf_config = {
        "model_name_or_path": str(model_dir),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "cgd",
        "dataset_dir": str(sets / "alpaca"),
        # ChatML without a default system prompt: the same rendering as the tiny model's own template.
        "template": "chatml",
        "cutoff_len": common["max_length"],
        "overwrite_cache": True,
        "preprocessing_num_workers": 1,
        "output_dir": str(workdir / "lf-out"),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": common["batch"],
        "gradient_accumulation_steps": 1,
        "learning_rate": common["lr"],
        "lr_scheduler_type": "constant",
        "max_steps": options.steps,
        "logging_steps": 1000,
        "save_strategy": "no",
        "bf16": False,
        "report_to": "none",
        "use_cpu": True,
        "seed": 0,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }
    cgd_settings = {**common, "model": str(model_dir), "data": str(sets / "cgd.jsonl"), "output_dir": str(workdir)}

    results: dict[str, list[dict]] = {"LLaMA-Factory 0.9.5 (Alpaca export)": [], "CGDTrainer (CGD columns)": []}
    runners = {
        "LLaMA-Factory 0.9.5 (Alpaca export)": lambda: run(options.lf_python, LF_DRIVER, lf_config, workdir, "lf"),
        "CGDTrainer (CGD columns)": lambda: run(sys.executable, CGD_DRIVER, cgd_settings, workdir, "cgd"),
    }
    names = list(runners)
    for repeat in range(options.repeats):
        for name in names[repeat % 2 :] + names[: repeat % 2]:
            results[name].append(runners[name]())

    print(
        f"model h{options.hidden} x {options.layers} layers (ChatML), 256 demo CGD records, batch 8, max length 1024, "
        f"fp32, CPU ({os.cpu_count()} cores); {options.steps} steps x {options.repeats} runs, median of steps 3+\n"
    )
    print(
        "| framework | tokens/step | padded batch size (tokens) | trained tokens/step | ms/step | tokens/s | "
        "trained tokens/s | peak RSS (MiB) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    rates = {}
    for name, runs in results.items():
        step = statistics.median(t for r in runs for t in r["times"][2:])
        tokens = statistics.mean(t for r in runs for t in r["tokens"][: options.steps])
        trained = statistics.mean(t for r in runs for t in r["trained"][: options.steps])
        padded = statistics.mean(t for r in runs for t in r["padded"][: options.steps])
        peak = max(r["peak_mib"] for r in runs)
        rates[name] = (tokens / step, trained / step)
        print(
            f"| {name} | {tokens:.0f} | {padded:.0f} | {trained:.0f} | {step * 1000:.1f} | {tokens / step:.0f} | "
            f"{trained / step:.0f} | {peak:.0f} |"
        )
    (lf_rate, lf_trained), (cgd_rate, cgd_trained) = rates[names[0]], rates[names[1]]
    print(
        f"\nCGDTrainer / LLaMA-Factory: tokens/s {cgd_rate / lf_rate:.2f}, trained tokens/s "
        f"{cgd_trained / lf_trained:.2f}"
    )


if __name__ == "__main__":
    main()
