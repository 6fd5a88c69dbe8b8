"""`cgd train` and `examples/train.py`: TRL's script, model and dataset-mixture arguments with [`CGDConfig`].

Flags on the command line override the YAML recipe. With neither `--config` nor `--model_name_or_path`, the offline
demo recipe is used.
"""

from __future__ import annotations

from . import EXIT_OK

# The offline demo recipe, by path inside the package: the demo's code is not imported for it.
DEMO_RECIPE = ("cgd_trainer.demo", "recipes/demo.yaml")


def make_parser(prog: str | None = None):
    """The parser of `examples/train.py`: TRL's script, model and dataset-mixture arguments with [`CGDConfig`]."""
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, TrlParser

    from ..config import CGDConfig

    return TrlParser((ScriptArguments, CGDConfig, ModelConfig, DatasetMixtureConfig), prog=prog)


def demo_recipe() -> str:
    from importlib import resources

    package, name = DEMO_RECIPE
    return str(resources.files(package).joinpath(name))


def with_default_recipe(argv: list[str]) -> list[str]:
    """Falls back to the offline demo recipe when the command line names neither a recipe nor a model."""
    if any(arg == "--config" or arg.startswith("--config=") for arg in argv):
        return argv
    if any(arg == "--model_name_or_path" or arg.startswith("--model_name_or_path=") for arg in argv):
        return argv
    return ["--config", demo_recipe(), *argv]


def run(argv: list[str], prog: str | None = None):
    """Parses the command line (and the YAML recipe), trains, and returns the [`CGDTrainer`]."""
    from ..train import main as train

    parser = make_parser(prog=prog)
    script_args, training_args, model_args, dataset_args = parser.parse_args_and_config(
        args=with_default_recipe(list(argv)), fail_with_unknown_args=False
    )
    return train(script_args, training_args, model_args, dataset_args)


def main(argv: list[str], prog: str | None = "cgd train") -> int:
    run(argv, prog=prog)
    return EXIT_OK
