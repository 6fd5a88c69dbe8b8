"""
The output folder of a training run, and the one record of what ran there (`cgd_run.json`): the arguments that make
the run this run, and whether it finished. `cgd train` (and `examples/train.py`) decides with it whether a launch
continues, starts or must not touch a run; `cgd demo` reuses a run that finished with the same arguments.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# The file in `output_dir` that records what makes a run this run, and the arguments it holds: those that change the
# losses a relaunch would continue (logging, saving and evaluation settings may change between launches).
RUN_FILE = "cgd_run.json"
RUN_SCRIPT_KEYS = ("dataset_name", "dataset_config", "dataset_train_split")
RUN_MODEL_KEYS = (
    "model_name_or_path",
    "model_revision",
    "dtype",
    "attn_implementation",
    "use_peft",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "use_rslora",
    "use_dora",
    "load_in_4bit",
    "load_in_8bit",
)
RUN_TRAINING_KEYS = (
    "learning_rate",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "weight_decay",
    "optim",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "bf16",
    "fp16",
    "loss_type",
    "assistant_only_loss",
    "chat_template_path",
    "eos_token",
    "pad_token",
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


def run_arguments(script_args: Any, training_args: Any, model_args: Any) -> dict:
    """
    The arguments that make a run this run: `RUN_*_KEYS` of TRL's script, model and training arguments, every `cgd_*`
    field, and the sha256 of the training data when it is a local file (an edited file is another run).
    """
    values = {key: getattr(script_args, key, None) for key in RUN_SCRIPT_KEYS}
    values.update({key: getattr(model_args, key, None) for key in RUN_MODEL_KEYS})
    values.update({key: getattr(training_args, key, None) for key in RUN_TRAINING_KEYS})
    values.update({key: value for key, value in vars(training_args).items() if key.startswith("cgd_")})
    data = Path(str(values.get("dataset_name") or ""))
    if data.is_file():
        from .pretrained import sha256_of

        values["dataset_sha256"] = sha256_of(data)
    return json.loads(json.dumps(values, default=str))  # as it reads back from the file


def _resumable(checkpoint: str) -> bool:
    names = os.listdir(checkpoint)
    return any(name in _OPTIMIZER_FILES or name.startswith(("global_step", "optimizer_")) for name in names)


def prepare_output_dir(training_args: Any, arguments: dict) -> str | None:
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
    from transformers.trainer_utils import get_last_checkpoint

    output_dir = Path(training_args.output_dir)
    resume = training_args.resume_from_checkpoint
    last = get_last_checkpoint(str(output_dir)) if resume is None and output_dir.is_dir() else None
    state = PartialState()
    problem = None
    if last is not None:
        problem = _relaunch_problem(output_dir, last, arguments)
    elif resume is None and saved_run(output_dir).get("finished"):
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


def write_run_file(output_dir: Path, arguments: dict, finished: bool, seconds: float | None = None) -> None:
    """Records the run's arguments in `output_dir`, and whether (and in how many seconds) it finished."""
    from . import __version__

    record = {"arguments": arguments, "finished": finished, "cgd_trainer": __version__}
    if seconds is not None:
        record["seconds"] = round(seconds, 1)
    (Path(output_dir) / RUN_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", "utf-8")


def saved_run(output_dir: str | Path) -> dict:
    """The run file of `output_dir` (`{"arguments": ..., "finished": ..., ...}`), or `{}` when there is none."""
    saved_file = Path(output_dir) / RUN_FILE
    try:
        return json.loads(saved_file.read_text("utf-8")) if saved_file.is_file() else {}
    except ValueError:  # cut short by a crash while it was written
        return {}


def finished_run(output_dir: str | Path, arguments: dict) -> dict | None:
    """
    The record of a run that finished in `output_dir` with exactly these arguments, by this version of cgd-trainer
    (its model saved there), else `None`: what `cgd demo` reuses instead of training again.
    """
    from . import __version__

    record = saved_run(output_dir)
    if not record.get("finished") or record.get("arguments") != arguments:
        return None
    if record.get("cgd_trainer") != __version__:  # the trainer itself may have changed what a run learns
        return None
    return record if (Path(output_dir) / "config.json").is_file() else None


def _relaunch_problem(output_dir: Path, checkpoint: str, arguments: dict) -> str | None:
    """Why a launch must not resume from `checkpoint`, or `None` when it continues the same, unfinished run."""
    record = saved_run(output_dir)
    if record:
        saved = record["arguments"]
        # Only what both know: an argument an older version did not record does not stop its unfinished run.
        changed = [key for key in sorted(set(saved) & set(arguments)) if saved[key] != arguments[key]]
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
