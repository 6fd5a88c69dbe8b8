"""Train a CGD student: `accelerate launch [--config_file <accelerate config>] -m cgd_trainer.scripts.train --config
<recipe>`, or from a clone `accelerate launch ... examples/train.py --config <recipe>` (a link to this file).

Like TRL's `trl/scripts/sft.py`, this file holds the training run itself, `main(script_args, training_args,
model_args, dataset_args)`; what a launch does with its output folder (continue, start, refuse) is
`cgd_trainer.runs`, and the parser is `cgd train`'s (`cgd_trainer.commands.train.make_parser`).

`--config` takes a YAML file or the name of a recipe shipped with the package (`qwen2.5-math-7b/full`, `tiny/cpu`).
With no arguments it runs the offline `tiny/cpu` recipe (tiny local model, shipped CGD records, CPU). Every flag of
TRL's `sft.py` works (ScriptArguments, CGDConfig, ModelConfig, DatasetMixtureConfig); flags override the YAML
recipe. It is `cgd train` under another name: the same flags, exit statuses and one-line errors, except that this
process is the launched one, so launch settings (`--num_processes`, `--accelerate_config`) are not acted on here.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

# Absolute imports: `accelerate launch examples/train.py` runs this file as a script, outside its package.
from cgd_trainer.runs import prepare_output_dir, run_arguments, write_run_file
from cgd_trainer.sources import load_source, resolve_model

if TYPE_CHECKING:  # torch, TRL and the trainer load when a run starts, after the command's own set-up
    from datasets import DatasetDict, IterableDatasetDict
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments

    from cgd_trainer.config import CGDConfig
    from cgd_trainer.trainer import CGDTrainer

logger = logging.getLogger(__name__)

# Set in a process that is this script, launched: launch settings are then not acted on (it never launches again).
LAUNCHED_ENV = "CGD_LAUNCHED"


def load_datasets(
    script_args: ScriptArguments, dataset_args: DatasetMixtureConfig
) -> DatasetDict | IterableDatasetDict:
    """
    Loads the training data: a dataset mixture from the recipe's `datasets:` list, the built-in demo records
    (`dataset_name: builtin:demo`), a local JSON/JSONL/Parquet/CSV file or folder, or a hub dataset.

    Returns:
        `DatasetDict` or `IterableDatasetDict`: the splits.
    """
    from trl import get_dataset

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
    from trl import get_peft_config, get_quantization_config

    from cgd_trainer.trainer import CGDTrainer

    model_id = model_args.model_name_or_path
    if not model_id:
        raise ValueError("Set `model_name_or_path` (a hub id, a local folder, or `builtin:smollm2-135m-instruct`).")
    started = time.perf_counter()
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
        write_run_file(Path(training_args.output_dir), arguments, finished=True, seconds=time.perf_counter() - started)
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


def summarize(trainer) -> str:
    """
    A short end-of-run report: records used, shortened and dropped, trained tokens, loss first → last, where the
    model is.
    """
    import pyarrow.compute as pc

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


if __name__ == "__main__":
    # The launched process: the same flags, exit statuses and one-line errors as `cgd train`, which it is, except
    # that launch settings are not acted on here (it never launches again).
    from cgd_trainer.cli import main as cli_main

    os.environ[LAUNCHED_ENV] = "1"
    sys.exit(cli_main(["train", *sys.argv[1:]]))
