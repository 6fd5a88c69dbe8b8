"""The offline demo: built-in tiny models and demo records, the demo recipe, and the end-of-run summary."""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path

import pyarrow.compute as pc

from .demo_data import demo_data_path

BUILTIN_PREFIX = "builtin:"
BUILTIN_DATASETS = ("builtin:demo",)
# The built-in model: small enough for a CPU, big enough that its loss visibly falls in the demo.
BUILTIN_SIZE = {"hidden_size": 128, "num_layers": 4}


DEMO_DATA_DIR = "outputs/cgd-demo/data"


def demo_recipe_path() -> Path:
    """Path of the demo recipe shipped inside the package (`examples/recipes/tiny/cpu.yaml` links to it)."""
    return Path(str(resources.files("cgd_trainer") / "recipes" / "demo.yaml"))


def pipeline_demo_recipe_path() -> Path:
    """Path of the offline pipeline recipe shipped inside the package (`examples/pipeline/demo.yaml` links to it)."""
    return Path(str(resources.files("cgd_trainer") / "recipes" / "pipeline-demo.yaml"))


def make_demo_data(data_dir: str = DEMO_DATA_DIR, max_records: int | None = None) -> Path:
    """
    Runs the offline data pipeline: `cgd generate` with the demo student and teacher, then `cgd build`.

    Returns:
        `Path`: The CGD training set (`<data_dir>/sets/cgd.jsonl`).
    """
    from .build import cli_main as build_main
    from .generate import cli_main as generate_main

    limit = [] if max_records is None else ["--max_records", str(max_records)]
    generate_main(["--config", str(pipeline_demo_recipe_path()), "--output_dir", data_dir, *limit])
    sets = Path(data_dir) / "sets"
    build_main(["--input", str(Path(data_dir) / "records.jsonl"), "--output_dir", str(sets)])
    return sets / "cgd.jsonl"


def load_builtin_dataset(name: str, streaming: bool = False):
    """
    Loads a built-in dataset: `builtin:demo` is the arithmetic CGD records shipped with the package.

    Returns:
        `DatasetDict`: with a `train` split.
    """
    from datasets import load_dataset

    if name not in BUILTIN_DATASETS:
        raise ValueError(f"Unknown built-in dataset {name!r}; the built-in datasets are {BUILTIN_DATASETS}.")
    return load_dataset("json", data_files={"train": str(demo_data_path())}, streaming=streaming)


def prepare_builtin_model(name: str, output_dir: str) -> str:
    """
    Builds a tiny model from config and a tokenizer trained locally, saved under `<output_dir>/base-model`.

    `builtin:tiny-chatml`, `builtin:tiny-llama3` and `builtin:tiny-plain` name the tokenizer family. The build is
    deterministic and runs once: a folder from an earlier run (or another process) is reused.

    Returns:
        `str`: The folder, usable as `model_name_or_path`.
    """
    from accelerate import PartialState

    from .tiny import FAMILIES, build_model, build_tokenizer

    family = name.removeprefix(BUILTIN_PREFIX).removeprefix("tiny-")
    if family not in FAMILIES:
        choices = [f"{BUILTIN_PREFIX}tiny-{f}" for f in FAMILIES]
        raise ValueError(f"Unknown built-in model {name!r}; the built-in models are {choices}.")
    path = Path(output_dir) / "base-model"
    with PartialState().main_process_first():
        if not (path / "config.json").exists():
            tokenizer = build_tokenizer(family)
            model = build_model(tokenizer, family, **BUILTIN_SIZE)
            model.save_pretrained(path)
            tokenizer.save_pretrained(path)
    return str(path)


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


def cli_main(argv: list[str] | None = None) -> None:
    """
    `cgd demo [flags]`: the whole method offline — generate (probe → critique → refine), build the training sets, then
    train with the demo recipe; any flag overrides the training recipe (e.g. `--max_steps 5`).
    """
    from .train import cli_main as train_main
    from .train import make_parser

    argv = list(sys.argv[1:] if argv is None else argv)
    # The data goes under the training run's folder: `<output_dir>/data`.
    _, training_args, _, _ = make_parser().parse_args_and_config(
        args=["--config", str(demo_recipe_path()), *argv], fail_with_unknown_args=False
    )
    cgd_file = make_demo_data(str(Path(training_args.output_dir) / "data"))
    train_main(["--config", str(demo_recipe_path()), "--dataset_name", str(cgd_file), *argv], prog="cgd demo")
