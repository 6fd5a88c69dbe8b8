"""`cgd diagnose --model M --dataset D`: NLL and entropy of refined answers with and without the critique."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import EXIT_OK
from .parser import ConfigParser


def make_parser(prog: str | None = "cgd diagnose") -> ConfigParser:
    """The `cgd diagnose` parser: [`DiagnoseConfig`] flags and `--config diagnose.yaml`."""
    from ..evaluation.diagnose import DiagnoseConfig

    return ConfigParser((DiagnoseConfig,), prog=prog)


def run(argv: list[str]) -> dict[str, Any]:
    """Runs `cgd diagnose`, prints the table and returns the summary."""
    (config,) = make_parser().parse_args_and_config(argv)
    from ..evaluation.diagnose import diagnose, render_markdown

    summary = diagnose(config)
    print(render_markdown(summary))
    print(f"Written to {Path(config.output_dir) / 'diagnose.md'}")
    return summary


def main(argv: list[str]) -> int:
    run(argv)
    return EXIT_OK
