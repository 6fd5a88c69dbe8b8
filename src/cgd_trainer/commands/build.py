"""`cgd build [--config build.yaml] [flags]`: every training condition from one set of generated CGD records."""

from __future__ import annotations

from typing import Any

from . import EXIT_OK
from .parser import ConfigParser


def make_parser(prog: str | None = "cgd build") -> ConfigParser:
    """The `cgd build` parser: [`BuildConfig`] flags and `--config build.yaml`."""
    from ..conditions import BuildConfig

    return ConfigParser((BuildConfig,), prog=prog)


def run(argv: list[str]) -> dict[str, Any]:
    """Builds the training sets, prints a short table and returns the summary."""
    (config,) = make_parser().parse_args_and_config(argv)
    from ..conditions import build, format_table

    summary = build(config)
    print(format_table(summary))
    return summary


def main(argv: list[str]) -> int:
    run(argv)
    return EXIT_OK
