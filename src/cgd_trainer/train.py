"""The training entry point behind `examples/train.py` and `cgd train`, mirroring TRL's `trl/scripts/sft.py`.

Launch it the TRL way:

```bash
accelerate launch --config_file examples/accelerate_configs/zero3.yaml examples/train.py \
    --config examples/recipes/llama-3.1-8b-instruct/full.yaml
```

Flags on the command line override the YAML recipe. With neither `--config` nor `--model_name_or_path`, the offline
`tiny/cpu` recipe is used.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pyarrow.compute as pc
from datasets import DatasetDict, IterableDatasetDict
from transformers.trainer_utils import get_last_checkpoint
from trl import (
    DatasetMixtureConfig,
    ModelConfig,
    ScriptArguments,
    get_dataset,
    get_peft_config,
    get_quantization_config,
)

from .config import CGDConfig
from .sources import load_source, resolve_model
from .trainer import CGDTrainer

logger = logging.getLogger(__name__)


def load_datasets(
    script_args: ScriptArguments, dataset_args: DatasetMixtureConfig
) -> DatasetDict | IterableDatasetDict:
    """
    Loads the training data: a dataset mixture from the recipe's `datasets:` list, the built-in demo records
    (`dataset_name: builtin:demo`), a local JSON/JSONL/Parquet/CSV file or folder, or a hub dataset.

    Returns:
        `DatasetDict` or `IterableDatasetDict`: the splits.
    """
    if dataset_args.datasets:
        if script_args.dataset_name:
            logger.warning("Both `datasets` and `dataset_name` are set; the `datasets` mixture is used.")
        return get_dataset(dataset_args)
    name = script_args.dataset_name
    if not name:
        raise ValueError("Set `dataset_name` (a hub id or a local file) or a `datasets:` mixture in the recipe.")
    return load_source(name, script_args.dataset_config, streaming=script_args.dataset_streaming)


def main(
    script_args: ScriptArguments,
    training_args: CGDConfig,
    model_args: ModelConfig,
    dataset_args: DatasetMixtureConfig,
) -> CGDTrainer:
    """
    Trains a CGD student from parsed arguments: loads the model and data, resumes from the last checkpoint in
    `output_dir`, saves the model, tokenizer and model card, optionally pushes to the hub, and prints a summary.

    Returns:
        [`CGDTrainer`]: The trainer after training.
    """
    model_id = model_args.model_name_or_path
    if not model_id:
        raise ValueError("Set `model_name_or_path` (a hub id, a local folder, or `builtin:smollm2-135m-instruct`).")
    # Before any work: does this launch continue a run, start one, or meet a run it must not touch?
    arguments = run_arguments(script_args, training_args, model_args)
    resume = prepare_output_dir(training_args, arguments)
    model_id = resolve_model(model_id, training_args.output_dir)

    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

    dataset = load_datasets(script_args, dataset_args)
    if script_args.dataset_train_split not in dataset:
        raise ValueError(f"The data has no '{script_args.dataset_train_split}' split; it has {list(dataset)}.")
    eval_dataset = None
    if training_args.eval_strategy != "no":
        if script_args.dataset_test_split not in dataset:
            raise ValueError(
                f"`eval_strategy={training_args.eval_strategy}` needs a '{script_args.dataset_test_split}' split; "
                f"the data has {list(dataset)}. Set `test_split_size` in the recipe or `eval_strategy: 'no'`."
            )
        eval_dataset = dataset[script_args.dataset_test_split]

    trainer = CGDTrainer(
        model=model_id,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=eval_dataset,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    warning = sharding_warning(str(trainer.accelerator.distributed_type), trainer.accelerator.num_processes)
    if warning:
        logger.warning(warning)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        write_run_file(Path(training_args.output_dir), arguments, finished=True)
    trainer.create_model_card(model_name=Path(training_args.output_dir).name)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    trainer.accelerator.print(summarize(trainer))
    # Every rank reaches this point before any of them tears the process group down.
    trainer.accelerator.wait_for_everyone()
    if hasattr(trainer, "end"):  # transformers >= 5.18 closes trackers and the process group here
        trainer.end()
    return trainer


def sharding_warning(distributed_type: str, num_processes: int) -> str | None:
    """
    Says when an accelerate config asks for FSDP but accelerate runs the job otherwise. Accelerate (1.15) turns FSDP on
    for GPU-like devices only: on CPUs it runs data parallel (`use_cpu: true`) or single processes, silently.

    Args:
        distributed_type: The accelerator's `distributed_type`.
        num_processes: The number of processes.

    Returns:
        The warning to log, or `None`.
    """
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" or distributed_type.endswith("FSDP"):
        return None
    return (
        f"The accelerate config asks for FSDP, but accelerate runs this job as {distributed_type.split('.')[-1]} "
        f"with {num_processes} process(es): accelerate shards with FSDP on GPUs only, so here every process holds the "
        "whole model and optimizer state."
    )


# The file in `output_dir` that records what makes a run this run, and the arguments it holds: those that change the
# losses a relaunch would continue (logging, saving and evaluation settings may change between launches).
RUN_FILE = "cgd_run.json"
RUN_SCRIPT_KEYS = ("dataset_name", "dataset_config", "dataset_train_split")
RUN_MODEL_KEYS = ("model_name_or_path", "model_revision", "use_peft", "lora_r", "lora_alpha", "load_in_4bit")
RUN_TRAINING_KEYS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "seed",
    "max_length",
    "packing",
    "padding_free",
    "completion_only_loss",
    "save_only_model",
)
# What a checkpoint holds when it can be resumed exactly: an optimizer state (plain, DeepSpeed or FSDP).
_OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin", "optimizer.safetensors")


def run_arguments(script_args: ScriptArguments, training_args: CGDConfig, model_args: ModelConfig) -> dict:
    """The arguments that make a run this run (see `RUN_*_KEYS`, and every `cgd_*` field)."""
    values = {key: getattr(script_args, key, None) for key in RUN_SCRIPT_KEYS}
    values.update({key: getattr(model_args, key, None) for key in RUN_MODEL_KEYS})
    values.update({key: getattr(training_args, key, None) for key in RUN_TRAINING_KEYS})
    values.update({key: value for key, value in vars(training_args).items() if key.startswith("cgd_")})
    return json.loads(json.dumps(values, default=str))  # as it reads back from the file


def _resumable(checkpoint: str) -> bool:
    names = os.listdir(checkpoint)
    return any(name in _OPTIMIZER_FILES or name.startswith(("global_step", "optimizer_")) for name in names)


def prepare_output_dir(training_args: CGDConfig, arguments: dict) -> str | None:
    """
    Decides what a launch does with its `output_dir`, before any work, and records the run's arguments there.

    - an explicit `resume_from_checkpoint` is used as given;
    - no checkpoint: a new run;
    - the last checkpoint of an unfinished run with the same arguments, saved with its optimizer state: resumed,
      exactly;
    - a finished run, a run with other arguments, or a model-only checkpoint (`save_only_model`), which would
      restart the optimizer and the schedule: refused with the ways on, unless `overwrite_output_dir` (then the old
      checkpoints are deleted and the run starts afresh).

    Returns:
        `str` or `None`: The checkpoint to resume from.

    Raises:
        `ValueError`: one message naming the folder, what it holds and what to do.
    """
    from accelerate import PartialState

    output_dir = Path(training_args.output_dir)
    resume = training_args.resume_from_checkpoint
    last = get_last_checkpoint(str(output_dir)) if resume is None and output_dir.is_dir() else None
    state = PartialState()
    problem = None
    if last is not None:
        problem = _relaunch_problem(output_dir, last, arguments)
    elif resume is None and _saved_run(output_dir).get("finished"):
        # No checkpoint to resume from (e.g. `save_strategy: no`), but the folder holds a trained model.
        problem = "holds a finished run (its model, no checkpoints)"
    if last is not None and problem is None:
        logger.warning(f"Resuming from {last}.")
        resume = last
    elif problem is not None:
        if not getattr(training_args, "overwrite_output_dir", False):
            explicit = f", or pass `--resume_from_checkpoint {last}` to continue from it anyway" if last else ""
            raise ValueError(
                f"{output_dir} {problem}. To go on: choose a new `--output_dir` or add `--overwrite_output_dir true` "
                f"to start afresh there (its checkpoints are deleted){explicit}."
            )
        else:
            logger.warning(f"{output_dir} {problem}; `overwrite_output_dir`: its checkpoints are deleted.")
            with state.main_process_first():
                if state.is_main_process:
                    for checkpoint in output_dir.glob("checkpoint-*"):
                        shutil.rmtree(checkpoint, ignore_errors=True)
    state.wait_for_everyone()  # every rank has read the folder (and decided the same) before it is written
    if state.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_run_file(output_dir, arguments, finished=False)
    return resume


def write_run_file(output_dir: Path, arguments: dict, finished: bool) -> None:
    record = {"arguments": arguments, "finished": finished}
    (Path(output_dir) / RUN_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", "utf-8")


def _saved_run(output_dir: Path) -> dict:
    """The run file of `output_dir` (`{"arguments": ..., "finished": ...}`), or `{}` when there is none."""
    saved_file = output_dir / RUN_FILE
    return json.loads(saved_file.read_text("utf-8")) if saved_file.is_file() else {}


def _relaunch_problem(output_dir: Path, checkpoint: str, arguments: dict) -> str | None:
    """Why a launch must not resume from `checkpoint`, or `None` when it continues the same, unfinished run."""
    record = _saved_run(output_dir)
    if record:
        saved = record["arguments"]
        changed = [key for key in sorted(set(saved) | set(arguments)) if saved.get(key) != arguments.get(key)]
        if changed:
            listed = ", ".join(f"{key} {saved.get(key)!r} -> {arguments.get(key)!r}" for key in changed)
            return f"holds a run with other arguments ({listed})"
        if record.get("finished"):
            return "holds a finished run"
    state_file = Path(checkpoint) / "trainer_state.json"
    if state_file.is_file():
        state = json.loads(state_file.read_text("utf-8"))
        if state.get("max_steps") and state.get("global_step", 0) >= state["max_steps"]:
            step = f"step {state['global_step']} of {state['max_steps']}"
            return f"holds a finished run ({Path(checkpoint).name}, {step})"
    if not _resumable(checkpoint):
        return (
            f"holds model-only checkpoints ({Path(checkpoint).name}, `save_only_model: true`): without the optimizer, "
            "scheduler and RNG state a relaunch would not continue the run, it would restart its optimizer and "
            "learning-rate schedule"
        )
    return None


def summarize(trainer) -> str:
    """
    A short end-of-run report: records used, shortened and dropped, trained tokens, loss first → last, where the
    model is.
    """
    lines = ["", "CGD training summary"]
    stats = trainer.cgd_stats.get("train")
    if stats:
        used = stats["kept"] + stats["shortened"]
        lines.append(f"  records used: {used} ({stats['shortened']} shortened to fit, {stats['dropped']} dropped)")
    dataset = trainer.train_dataset
    if hasattr(dataset, "__len__") and "labels" in (dataset.column_names or []):
        # Counted in Arrow (through the dataset's index mapping, if any): 100K records hold ~10^8 labels.
        labels = pc.list_flatten(dataset.with_format("arrow")[:]["labels"])
        trained = pc.sum(pc.not_equal(labels, -100)).as_py() or 0
        lines.append(f"  trained tokens per epoch: {trained} (refined answers and their end-of-turn tokens)")
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    average = [entry["train_loss"] for entry in history if "train_loss" in entry]
    if losses:
        lines.append(f"  loss: {losses[0]:.3f} → {losses[-1]:.3f} over {trainer.state.global_step} steps")
    elif average:  # fewer steps than logging_steps: only the run's mean loss exists
        lines.append(f"  loss: {average[-1]:.3f} on average over {trainer.state.global_step} steps")
    lines.append(f"  model saved to: {os.path.abspath(trainer.args.output_dir)}")
    return "\n".join(lines)
