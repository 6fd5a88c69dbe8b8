"""The parser of `cgd generate`, `build`, `eval` and `diagnose`: dataclass flags, a YAML `--config`, strict keys.

It reads YAML the way TRL's `TrlParser` does (the file gives the defaults, flags override them, an `env:` mapping sets
environment variables), is built on `transformers.HfArgumentParser`, and imports neither torch nor TRL, so that
`cgd build --help` starts at once. A key of the YAML file or a flag that no setting has is refused, naming the key and
the nearest valid one.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from transformers import HfArgumentParser

from ..errors import UsageError

__all__ = ["ConfigParser", "UsageError", "did_you_mean", "load_yaml_config"]


def did_you_mean(key: str, valid: Iterable[str]) -> str:
    """` Did you mean `x`?` for the nearest valid name, or an empty string."""
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f" Did you mean `{close[0]}`?" if close else ""


def setting_names(parser: argparse.ArgumentParser) -> list[str]:
    """The settings a parser takes (its destinations, less `--help` and `--config`)."""
    return [action.dest for action in parser._actions if action.dest not in ("help", "config")]


def check_config_keys(config: dict[str, Any], settings: Sequence[str], path: str, prog: str) -> None:
    """
    Raises:
        [`UsageError`]: naming the first key of a YAML config that is not a setting, and the nearest one that is.
    """
    unknown = [key for key in config if key not in settings]
    if unknown:
        raise UsageError(
            f"--config {path}: unknown key `{unknown[0]}`.{did_you_mean(unknown[0], settings)} "
            f"Run `{prog} --help` for the settings."
        )


def unknown_args_message(remaining: Sequence[str], settings: Sequence[str]) -> str:
    """The message for command-line arguments no setting takes, suggesting the flag nearest to the first one."""
    first = next((arg for arg in remaining if arg.startswith("--")), None)
    hint = did_you_mean(first.split("=", 1)[0][2:], settings).replace("`", "`--", 1) if first else ""
    return f"unrecognized arguments: {' '.join(remaining)}.{hint}"


def load_yaml_config(path: str) -> dict[str, Any]:
    """Reads a YAML recipe into a mapping, with one-line errors for a missing or malformed file."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except FileNotFoundError:
        raise UsageError(f"--config: no such file {path!r}.") from None
    except yaml.YAMLError as error:
        raise UsageError(f"--config {path}: not valid YAML ({error}).".replace("\n", " ")) from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise UsageError(
            f"--config {path}: the file must hold a YAML mapping of settings, not a {type(config).__name__}."
        )
    env = config.pop("env", None) or {}
    if not isinstance(env, dict):
        raise UsageError(f"--config {path}: `env` must be a mapping of environment variables.")
    for key, value in env.items():
        os.environ[str(key)] = str(value)
    return config


def split_config_flag(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Takes `--config PATH` (or `--config=PATH`) out of the arguments."""
    args, path = list(argv), None
    for index, arg in enumerate(args):
        if arg == "--config":
            if index + 1 >= len(args):
                raise UsageError("--config needs a path to a YAML file.")
            path = args[index + 1]
            del args[index : index + 2]
            break
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
            del args[index]
            break
    return path, args


class ConfigParser(HfArgumentParser):
    """
    Flags from dataclasses, defaults from a YAML `--config`, and no unknown keys.

    Args:
        dataclass_types: The configuration dataclasses.
        prog (`str`, *optional*): The command's name in messages.
    """

    def __init__(self, dataclass_types, prog: str | None = None, **kwargs: Any) -> None:
        super().__init__(dataclass_types, prog=prog, **kwargs)
        # `--config` appears in `--help`; it is taken out of the arguments before they are parsed.
        self.add_argument("--config", metavar="PATH", help="YAML file of settings; flags override it.")

    def parse_args_and_config(self, args: Sequence[str] | None = None, fail_with_unknown_args: bool = True):
        """
        Parses the YAML file named by `--config` and the flags into the dataclasses.

        Returns:
            `tuple`: One instance per dataclass.

        Raises:
            [`UsageError`]: for a key of the YAML file that is not a setting (unless `fail_with_unknown_args=False`).
        """
        path, argv = split_config_flag(sys.argv[1:] if args is None else args)
        if path is not None:
            config = load_yaml_config(path)
            if fail_with_unknown_args:
                check_config_keys(config, setting_names(self), path, self.prog)
            for action in self._actions:
                if action.dest in config:
                    action.default = config[action.dest]
                    action.required = False
        namespace, remaining = self.parse_known_args(argv)
        if remaining:
            self.error(unknown_args_message(remaining, setting_names(self)))
        del namespace.config
        outputs = []
        for dtype in self.dataclass_types:
            names = {f.name for f in dataclasses.fields(dtype) if f.init}
            values = {k: v for k, v in vars(namespace).items() if k in names}
            outputs.append(dtype(**values))
        return tuple(outputs)
