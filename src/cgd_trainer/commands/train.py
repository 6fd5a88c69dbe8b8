"""`cgd train` and `examples/train.py`: TRL's script, model and dataset-mixture arguments with [`CGDConfig`].

Flags on the command line override the YAML recipe. `--config` takes a file or the name of a recipe shipped with the
package (`qwen2.5-math-7b/full`). With neither `--config` nor `--model_name_or_path`, the offline CPU recipe
`tiny/cpu` is used.

Given launch settings (`--accelerate_config zero3`, `--num_processes 8`, ...; as flags or recipe keys), `cgd train`
starts the run through `accelerate launch -m cgd_trainer.scripts.train`, as `trl sft` does; without them it trains in
its own process. The launched script (`cgd_trainer.scripts.train`, which `examples/train.py` links to) never launches
again.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields

from ..scripts.train import LAUNCHED_ENV
from . import EXIT_OK
from .parser import (
    ConfigParser,
    UsageError,
    check_config_keys,
    load_yaml_config,
    setting_names,
    split_config_flag,
    unknown_args_message,
)
from .recipes import recipe_path, resolve_accelerate_config, resolve_recipe

logger = logging.getLogger(__name__)

# The recipe used when none is named: offline, CPU, shipped in the package (the demo's code is not imported for it).
DEFAULT_RECIPE = "tiny/cpu"


@dataclass
class LaunchArguments:
    """
    How `cgd train` starts the run: through `accelerate launch` when any of these is set, in its own process
    otherwise. Ignored by the launched script itself (`examples/train.py`, `cgd_trainer.scripts.train`).
    """

    accelerate_config: str | None = field(
        default=None,
        metadata={
            "help": "Accelerate config: a file, or one shipped with the package (single_gpu, multi_gpu, zero2, zero3, "
            "fsdp2, fsdp_qlora). Starts the run with `accelerate launch --config_file <it>`."
        },
    )
    num_processes: int | None = field(
        default=None, metadata={"help": "Processes in all (GPUs over all machines) for `accelerate launch`."}
    )
    num_machines: int | None = field(default=None, metadata={"help": "Machines, for `accelerate launch`."})
    machine_rank: int | None = field(default=None, metadata={"help": "This machine's rank, for `accelerate launch`."})
    main_process_ip: str | None = field(default=None, metadata={"help": "Host of rank 0, for `accelerate launch`."})
    main_process_port: int | None = field(default=None, metadata={"help": "Port of rank 0, for `accelerate launch`."})

    def is_set(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def accelerate_args(self) -> list[str]:
        """The `accelerate launch` flags these settings stand for."""
        args = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "accelerate_config":
                args += ["--config_file", resolve_accelerate_config(value)]
            else:
                args += [f"--{f.name}", str(value)]
        return args


def make_parser(prog: str | None = "cgd train", extra_types: tuple = ()):
    """
    The parser of `cgd train` and `examples/train.py`: TRL's script, model and dataset-mixture arguments with
    [`CGDConfig`], and the [`LaunchArguments`] (then `extra_types`, for commands that read training recipes).
    """
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments

    from ..config import CGDConfig

    # The one YAML-plus-flags parser of every `cgd` command, which reads a recipe as TRL's `TrlParser` does.
    types = (ScriptArguments, CGDConfig, ModelConfig, DatasetMixtureConfig, LaunchArguments, *extra_types)
    return ConfigParser(types, prog=prog)


def default_recipe() -> str:
    """The file of the recipe used when the command line names neither a recipe nor a model."""
    return recipe_path(DEFAULT_RECIPE)


def with_default_recipe(argv: list[str]) -> list[str]:
    """Falls back to the offline CPU recipe when the command line names neither a recipe nor a model."""
    if any(arg == "--config" or arg.startswith("--config=") for arg in argv):
        return argv
    if any(arg == "--model_name_or_path" or arg.startswith("--model_name_or_path=") for arg in argv):
        return argv
    return ["--config", default_recipe(), *argv]


def run(argv: list[str], prog: str | None = "cgd train"):
    """Parses the command line (and the YAML recipe), trains in this process, and returns the [`CGDTrainer`]."""
    from ..scripts.train import main as train

    script_args, training_args, model_args, dataset_args, _ = parse(argv, prog=prog)
    return train(script_args, training_args, model_args, dataset_args)


def parse(argv: list[str], prog: str | None = "cgd train", extra_types: tuple = ()) -> tuple:
    """
    Parses the command line and the YAML recipe (a file or a shipped recipe's name) into TRL's four argument
    dataclasses and the [`LaunchArguments`] (then one instance of each of `extra_types`), strictly: a key of the recipe
    or a flag that no argument has is an error naming it and the nearest valid one (TRL's own `env:` key is read as
    TRL reads it).

    Raises:
        [`UsageError`]: for an unknown key or flag or recipe, before anything is loaded.
    """
    argv = with_default_recipe(list(argv))
    path, flags = split_config_flag(argv)
    if path is not None:  # before the parser, whose imports (torch, TRL) take seconds
        path = resolve_recipe(path)
        argv = ["--config", path, *flags]
    parser = make_parser(prog=prog, extra_types=extra_types)
    settings = setting_names(parser)
    # Checked before TRL builds the dataclasses, whose own checks (e.g. bf16 on a CPU) would hide a misspelt key.
    if path is not None:
        check_config_keys(load_yaml_config(path), settings, path, parser.prog)
    _, remaining = parser.parse_known_args(flags)
    if remaining:
        raise UsageError(unknown_args_message(remaining, settings))
    return tuple(parser.parse_args_and_config(args=argv))


def without_launch_flags(argv: list[str]) -> list[str]:
    """The command line less the [`LaunchArguments`] flags, which `accelerate launch` takes instead of the script."""
    names = {f"--{f.name}" for f in fields(LaunchArguments)}
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif arg.split("=", 1)[0] not in names:
            kept.append(arg)
    return kept


def launch(argv: list[str], launch_args: LaunchArguments) -> int:
    """
    Starts `accelerate launch <launch flags> -m cgd_trainer.scripts.train <the other flags>` and waits for it.

    Returns:
        `int`: The run's exit status (that of the first process that failed, if any did).
    """
    import subprocess

    from accelerate.commands.launch import launch_command, launch_command_parser

    command = [*launch_args.accelerate_args(), "-m", "cgd_trainer.scripts.train", *without_launch_flags(argv)]
    logger.info("Running: accelerate launch %s", " ".join(command))
    try:
        launch_command(launch_command_parser().parse_args(command))
    except subprocess.CalledProcessError as error:  # one process
        return error.returncode
    except Exception as error:  # torch.distributed's ChildFailedError: several processes
        failures = getattr(error, "failures", None)
        if not failures:
            raise
        return failures[min(failures)].exitcode or 1
    return EXIT_OK


def main(argv: list[str], prog: str | None = "cgd train") -> int:
    """Trains, in this process or through `accelerate launch` (see [`LaunchArguments`]); returns the exit status."""
    *parsed, launch_args = parse(argv, prog=prog)
    if launch_args.is_set():
        if not os.environ.get(LAUNCHED_ENV):
            return launch(argv, launch_args)
        logger.info(
            "Launch settings (accelerate_config, num_processes, ...) are read by `cgd train`; this process was "
            "already launched, so they are not used here."
        )
    from ..scripts.train import main as train

    train(*parsed)
    return EXIT_OK
