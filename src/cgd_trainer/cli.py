"""The `cgd` command. Each subcommand lives in `cgd_trainer.commands` (or `cgd_trainer.demo.run`) and is imported only
when it runs, so that `cgd --help` and `cgd build --help` start at once, without torch or TRL.

Exit statuses: 0 done, 2 a usage or configuration error (one line on stderr, no traceback; set `CGD_TRACEBACK=1` to
see it anyway), 3 work left undone (see `cgd_trainer.commands`), 1 a bug (with its traceback).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from .errors import USER_ERRORS  # imports nothing: `cgd --help` stays fast

EXIT_USAGE = 2  # the same value as cgd_trainer.commands.EXIT_USAGE, kept here so that `--help` imports nothing

# name -> (module with `main(argv) -> int`, one-line help).
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("cgd_trainer.commands.train", "train a CGD student (same flags and YAML recipes as examples/train.py)"),
    "inspect": (
        "cgd_trainer.commands.inspect",
        "show records as a training recipe trains them: the trained tokens marked, token counts, truncation",
    ),
    "demo": ("cgd_trainer.demo.run", "the paper's comparison in miniature, offline on a CPU, on held-out questions"),
    "generate": (
        "cgd_trainer.commands.generate",
        "generate CGD data: probe (student) -> critique -> refine (teacher), resumable",
    ),
    "build": (
        "cgd_trainer.commands.build",
        "build training sets for every condition (CGD, SFT, CFT, ablations, verdict ratios)",
    ),
    "eval": (
        "cgd_trainer.commands.eval",
        "evaluate models or checkpoints on math benchmarks (math-verify, pass@k, format drift)",
    ),
    "benchmarks": (
        "cgd_trainer.commands.benchmarks",
        "list the benchmark registry, or write benchmarks to JSONL files (offline eval, decontamination)",
    ),
    "models": (
        "cgd_trainer.commands.models",
        "list the built-in models; fetch and convert a real pretrained one (SmolLM2-135M-Instruct) ahead of time",
    ),
    "diagnose": (
        "cgd_trainer.commands.diagnose",
        "refinement uncertainty: NLL/entropy of refined answers with and without the critique",
    ),
}


def _missing_cpu_kernels(record: logging.LogRecord) -> bool:
    """
    False for bitsandbytes' notice that its optional CPU 4-bit kernels (the `kernels` package) are not installed. peft
    imports bitsandbytes whenever it is installed, so the notice came with every `cgd` run, though only QLoRA on a CPU
    would use those kernels. Every other bitsandbytes message passes.
    """
    return "No module named 'kernels'" not in record.getMessage()


def _own_import_failed(error: ImportError) -> bool:
    """Whether an import error is about this package's own modules, or was raised by its own code."""
    if (error.name or "").split(".")[0] == "cgd_trainer":
        return True
    frame = error.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    package = os.path.dirname(os.path.abspath(__file__))
    return frame is not None and os.path.abspath(frame.tb_frame.f_code.co_filename).startswith(package + os.sep)


def usage() -> str:
    rows = "\n".join(f"  {name:<8} {help_text}" for name, (_, help_text) in COMMANDS.items())
    return (
        f"usage: cgd <command> [flags]\n\ncommands:\n{rows}\n\nRun `cgd <command> --help` for its flags.\n"
        "Exit status: 0 done, 2 usage or configuration error, 3 work left undone (rerun to continue)."
    )


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cgd` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"cgd: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return EXIT_USAGE
    if not logging.getLogger().handlers:  # once, for every command; a caller's own logging set-up is kept
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_missing_cpu_kernels)
    try:
        return importlib.import_module(COMMANDS[command][0]).main(rest)
    except USER_ERRORS as error:
        if os.environ.get("CGD_TRACEBACK"):
            raise
        print(f"cgd {command}: error: {_one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as error:
        # A package that is not installed (an extra's: vllm; bitsandbytes or flash-attn, which transformers asks for
        # with its own ImportError) is the user's to install. An import of this package's own code that fails is a
        # broken install or a bug, and keeps its traceback.
        if os.environ.get("CGD_TRACEBACK") or _own_import_failed(error):
            raise
        print(
            f"cgd {command}: error: {_one_line(error)} (a package this needs is not installed; see the extras of "
            "`pip install 'cgd-trainer[...]'`).",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"cgd {command}: interrupted; rerun the same command to continue.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
