"""The training entry point behind `examples/train.py` and `cgd train`, mirroring TRL's `trl/scripts/sft.py`.

Launch it the TRL way:

```bash
accelerate launch --config_file examples/accelerate_configs/zero3.yaml examples/train.py \
    --config examples/recipes/llama-3.1-8b-instruct/full.yaml
```

Flags on the command line override the YAML recipe. With neither `--config` nor `--model_name_or_path`, the offline
demo recipe is used.
"""

from __future__ import annotations

import logging
import os
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
        raise ValueError("Set `model_name_or_path` (a hub id, a local folder, or `builtin:tiny-chatml`).")
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

    # Pick up where a previous run in the same output_dir stopped (pre-emption, crash, a second launch).
    resume = training_args.resume_from_checkpoint
    if resume is None and os.path.isdir(training_args.output_dir):
        resume = get_last_checkpoint(training_args.output_dir)
        if resume is not None:
            logger.warning(f"Resuming from {resume}.")

    trainer = CGDTrainer(
        model=model_id,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=eval_dataset,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(training_args.output_dir)
    trainer.create_model_card(model_name=Path(training_args.output_dir).name)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    trainer.accelerator.print(summarize(trainer))
    # Every rank reaches this point before any of them tears the process group down.
    trainer.accelerator.wait_for_everyone()
    if hasattr(trainer, "end"):  # transformers >= 5.18 closes trackers and the process group here
        trainer.end()
    return trainer


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
