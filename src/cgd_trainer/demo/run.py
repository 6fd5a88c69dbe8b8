"""`cgd demo`: generate (probe → critique → refine) with the demo backends, build the training sets, then train."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEMO_DATA_DIR = "outputs/cgd-demo/data"


def demo_recipe_path() -> Path:
    """Path of the demo's training recipe, shipped in the package (`tiny/cpu`; `examples/recipes/tiny` links to it)."""
    from ..commands.train import demo_recipe

    return Path(demo_recipe())


def pipeline_demo_recipe_path() -> Path:
    """Path of the offline pipeline recipe shipped inside the package (`examples/pipeline/demo.yaml` links to it)."""
    return Path(str(resources.files("cgd_trainer.demo") / "recipes" / "pipeline-demo.yaml"))


def make_demo_data(data_dir: str = DEMO_DATA_DIR, max_records: int | None = None) -> Path:
    """
    Runs the offline data pipeline: `cgd generate` with the demo student and teacher, then `cgd build`.

    Returns:
        `Path`: The CGD training set (`<data_dir>/sets/cgd.jsonl`).

    Raises:
        `RuntimeError`: when a command does not finish its work.
    """
    from ..commands import build, generate

    limit = [] if max_records is None else ["--max_records", str(max_records)]
    status = generate.main(["--config", str(pipeline_demo_recipe_path()), "--output_dir", data_dir, *limit])
    if status != 0:
        raise RuntimeError(f"`cgd generate` ended with status {status}; see the messages above.")
    sets = Path(data_dir) / "sets"
    status = build.main(["--input", str(Path(data_dir) / "records.jsonl"), "--output_dir", str(sets)])
    if status != 0:
        raise RuntimeError(f"`cgd build` ended with status {status}; see the messages above.")
    return sets / "cgd.jsonl"


def main(argv: list[str]) -> int:
    """
    `cgd demo [flags]`: the whole method offline; any flag overrides the training recipe (e.g. `--max_steps 5`).
    The data goes under the training run's folder: `<output_dir>/data`.
    """
    from ..commands import train

    recipe = ["--config", str(demo_recipe_path())]
    _, training_args, *_ = train.make_parser().parse_args_and_config(
        args=[*recipe, *argv], fail_with_unknown_args=False
    )
    cgd_file = make_demo_data(str(Path(training_args.output_dir) / "data"))
    return train.main([*recipe, "--dataset_name", str(cgd_file), *argv], prog="cgd demo")
