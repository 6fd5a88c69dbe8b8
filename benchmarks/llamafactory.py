"""CGDTrainer vs LLaMA-Factory (the framework the paper's authors trained with) on the same CGD records (CPU).

The same tiny ChatML model, the same 256 demo CGD records (`cgd build --export alpaca` gives LLaMA-Factory the Alpaca
file the authors' setup uses), the same hyperparameters (full fine-tuning, batch 8, max length 1024, constant LR,
fp32, no packing, activation checkpointing off in both: LLaMA-Factory turns it on unless told not to, TRL does not;
`--checkpointing` turns it on in both), each framework in its own process so that peak memory (max RSS) is its own.
CGDTrainer runs on LLaMA-Factory's own torch and transformers (this project's trl and datasets are added from a cache
folder), so that only the trainers differ, once with TRL's fused LM head and once with `cgd_fused_lm_head=False`.
Reported: median step time, tokens/s (non-padding tokens), trained tokens/s (labels != -100) and peak RSS,
interleaved over repeats.

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
    gradient_checkpointing=settings["checkpointing"], seed=0, dataloader_num_workers=0,
    cgd_fused_lm_head=settings["fused"],
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


def run(python: str, driver: str, payload: dict, workdir: Path, name: str, pythonpath: str | None = None) -> dict:
    script, out = workdir / f"{name}_driver.py", workdir / f"{name}.json"
    script.write_text(driver, "utf-8")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "WANDB_DISABLED": "true"}
    env.update(TOKENIZERS_PARALLELISM="false", DISABLE_VERSION_CHECK="1", LLAMAFACTORY_VERBOSITY="WARN")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    result = subprocess.run(
        [python, str(script), json.dumps(payload), str(out)], env=env, capture_output=True, text=True, cwd=workdir
    )
    if result.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads(out.read_text("utf-8"))


def overlay(lf_python: str) -> str | None:
    """
    A folder with this project's trl and datasets for LLaMA-Factory's Python (which pins older ones), so that
    CGDTrainer can also run on LLaMA-Factory's torch and transformers: then only the frameworks differ. `None` if pip
    cannot install them.
    """
    from importlib.metadata import version

    pins = [f"{name}=={version(name)}" for name in ("trl", "datasets", "dill", "multiprocess")]
    folder = Path.home() / ".cache" / "cgd-trainer" / ("lf-overlay-" + "-".join(pins).replace("==", ""))
    if not (folder / "trl").is_dir():
        command = [lf_python, "-m", "pip", "install", "-q", "--no-deps", "--target", str(folder), *pins]
        if subprocess.run(command, capture_output=True, text=True).returncode != 0:
            return None
    return f"{folder}{os.pathsep}{ROOT / 'src'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lf_python", default="/work/lf-venv/bin/python", help="Python of LLaMA-Factory's venv.")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing on, in both")
    parser.add_argument("--own_stack", action="store_true", help="also run CGDTrainer on this environment's libraries")
    parser.add_argument(
        "--same_stack",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run CGDTrainer on LLaMA-Factory's torch/transformers (installs trl/datasets into a cache folder)",
    )
    options = parser.parse_args()
    if not Path(options.lf_python).exists():
        sys.exit(f"No LLaMA-Factory Python at {options.lf_python}; see the instructions at the top of this file.")

    from cgd_trainer.commands.build import run as build_main
    from cgd_trainer.demo.problems import demo_data_path
    from cgd_trainer.demo.tiny import build_model, build_tokenizer

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
    common = {
        "batch": 8,
        "steps": options.steps,
        "lr": 1e-4,
        "max_length": 1024,
        "checkpointing": options.checkpointing,
    }
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
        # LLaMA-Factory turns activation checkpointing on unless told not to; TRL leaves it off. Same for both here.
        "disable_gradient_checkpointing": not options.checkpointing,
    }
    cgd_settings = {**common, "model": str(model_dir), "data": str(sets / "cgd.jsonl"), "output_dir": str(workdir)}

    lf_versions = subprocess.run(
        [options.lf_python, "-c", "import torch, transformers; print(torch.__version__, transformers.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    lf_stack = f"torch {lf_versions[0]}, transformers {lf_versions[1]}"
    import torch
    import transformers

    lf_name = f"LLaMA-Factory 0.9.5 (Alpaca export; {lf_stack})"
    runners = {lf_name: lambda: run(options.lf_python, LF_DRIVER, lf_config, workdir, "lf")}
    # CGDTrainer on LLaMA-Factory's own torch and transformers, so that only the trainers differ; and on this
    # environment's libraries with --own_stack (or when trl/datasets cannot be added to LLaMA-Factory's Python).
    path = overlay(options.lf_python) if options.same_stack else None
    if options.same_stack and not path:
        print("Could not install trl/datasets for LLaMA-Factory's Python: CGDTrainer runs on this environment only.")
    stacks = []
    if path:
        stacks.append((f"LLaMA-Factory's {lf_stack}", options.lf_python, path))
    if options.own_stack or not path:
        stacks.append((f"torch {torch.__version__}, transformers {transformers.__version__}", sys.executable, None))
    for stack, python, pythonpath in stacks:
        for fused in (True, False):
            head = "fused LM head" if fused else "cgd_fused_lm_head=False"
            settings = {**cgd_settings, "fused": fused}
            tag = f"cgd-{len(runners)}"
            runners[f"CGDTrainer ({head}; {stack})"] = (
                lambda python=python, settings=settings, tag=tag, pythonpath=pythonpath: run(
                    python, CGD_DRIVER, settings, workdir, tag, pythonpath=pythonpath
                )
            )
    names = list(runners)
    results: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(options.repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(runners[name]())

    print(
        f"model h{options.hidden} x {options.layers} layers (ChatML), 256 demo CGD records, batch 8, max length 1024, "
        f"fp32, activation checkpointing {'on' if options.checkpointing else 'off'}, CPU ({os.cpu_count()} cores); "
        f"{options.steps} steps x {options.repeats} runs, median of steps 3+\n"
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
    lf_rate, lf_trained = rates[lf_name]
    print()
    for name in names[1:]:
        cgd_rate, cgd_trained = rates[name]
        print(
            f"{name} / LLaMA-Factory: tokens/s {cgd_rate / lf_rate:.2f}, trained tokens/s "
            f"{cgd_trained / lf_trained:.2f}"
        )


if __name__ == "__main__":
    main()
