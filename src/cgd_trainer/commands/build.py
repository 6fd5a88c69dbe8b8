"""`cgd build [--config build.yaml] [flags]`: every training condition from one set of generated CGD records."""

from __future__ import annotations

from pathlib import Path
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
    config.decontaminate = decontamination_files(config.decontaminate, Path(config.output_dir) / "decontamination")
    from ..conditions import build, format_table

    summary = build(config)
    print(format_table(summary))
    return summary


def decontamination_files(entries: list[str], folder: Path) -> list[str]:
    """
    The files `--decontaminate` names: each entry that is not a file is a benchmark (a registry name such as
    `math500`, a hub dataset id or `builtin:demo`), written once to `<folder>/<name>.jsonl` and read from there.

    Raises:
        `ValueError`: naming an entry that is neither a file nor a benchmark that loads.
    """
    from .benchmarks import export

    files = []
    for entry in entries:
        if Path(entry).is_file():
            files.append(entry)
            continue
        try:
            files.append(export([entry], folder)[entry])
        except ValueError as error:
            raise ValueError(f"--decontaminate {entry}: not a file, and as a benchmark: {error}") from None
    return files


def main(argv: list[str]) -> int:
    run(argv)
    return EXIT_OK
