"""`cgd train` and `examples/train.py`: TRL's script, model and dataset-mixture arguments with [`CGDConfig`].

Flags on the command line override the YAML recipe. With neither `--config` nor `--model_name_or_path`, the offline
demo recipe is used.
"""

from __future__ import annotations

from . import EXIT_OK
from .parser import (
    UsageError,
    check_config_keys,
    load_yaml_config,
    setting_names,
    split_config_flag,
    unknown_args_message,
)

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

    script_args, training_args, model_args, dataset_args = parse(argv, prog=prog)
    return train(script_args, training_args, model_args, dataset_args)


def parse(argv: list[str], prog: str | None = None) -> tuple:
    """
    Parses the command line and the YAML recipe into TRL's four argument dataclasses, strictly: a key of the recipe
    or a flag that no argument has is an error naming it and the nearest valid one (TRL's own `env:` key is read as
    TRL reads it).

    Raises:
        [`UsageError`]: for an unknown key or flag, before anything is loaded.
    """
    parser = make_parser(prog=prog)
    argv = with_default_recipe(list(argv))
    settings = setting_names(parser)
    # Checked before TRL builds the dataclasses, whose own checks (e.g. bf16 on a CPU) would hide a misspelt key.
    path, flags = split_config_flag(argv)
    if path is not None:
        check_config_keys(load_yaml_config(path), settings, path, parser.prog)
    _, remaining = parser.parse_known_args(flags)
    if remaining:
        raise UsageError(unknown_args_message(remaining, settings))
    return tuple(parser.parse_args_and_config(args=argv))


def main(argv: list[str], prog: str | None = "cgd train") -> int:
    run(argv, prog=prog)
    return EXIT_OK
