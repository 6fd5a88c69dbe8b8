"""The `cgd` command: `cgd train`, `cgd demo`, the data pipeline and the evaluation commands."""

from __future__ import annotations

import sys
from collections.abc import Callable


def _train(argv: list[str]) -> None:
    from .train import cli_main

    cli_main(argv, prog="cgd train")


def _demo(argv: list[str]) -> None:
    from .demo import cli_main

    cli_main(argv)


def _generate(argv: list[str]) -> None:
    from .generate import cli_main

    cli_main(argv)


def _build(argv: list[str]) -> None:
    from .build import cli_main

    cli_main(argv)


def _eval(argv: list[str]) -> None:
    from .evaluate import cli_main

    cli_main(argv)


def _diagnose(argv: list[str]) -> None:
    from .diagnose import cli_main

    cli_main(argv)


# name -> (handler, one-line help). Each handler parses its own arguments, TrlParser-style with `--config`.
COMMANDS: dict[str, tuple[Callable[[list[str]], None], str]] = {
    "train": (_train, "train a CGD student (same flags and YAML recipes as examples/train.py)"),
    "demo": (_demo, "run the offline demo: tiny local model, shipped CGD records, CPU"),
    "generate": (_generate, "generate CGD data: probe (student) -> critique -> refine (teacher), resumable"),
    "build": (_build, "build training sets for every condition (CGD, SFT, CFT, ablations, verdict ratios)"),
    "eval": (_eval, "evaluate models or checkpoints on math benchmarks (math-verify, pass@k, format drift)"),
    "diagnose": (_diagnose, "refinement uncertainty: NLL/entropy of refined answers with and without the critique"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:<8} {help_text}" for name, (_, help_text) in COMMANDS.items())
    return f"usage: cgd <command> [flags]\n\ncommands:\n{rows}\n\nRun `cgd <command> --help` for its flags."


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cgd` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"cgd: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    COMMANDS[command][0](rest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
