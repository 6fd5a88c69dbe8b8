"""`cgd benchmarks [--write NAME ...] [--output_dir DIR]`: the benchmark registry, and benchmarks written to JSONL.

Without `--write` it lists the registry (name, hub dataset, split, size). With it, each benchmark (a registry name, a
hub dataset id or `builtin:demo`) is loaded once and written to `<output_dir>/<name>.jsonl` (`id`, `question`,
`answer`), a file that `cgd eval --benchmarks` and `cgd build --decontaminate` read offline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import EXIT_OK
from .parser import ConfigParser


@dataclass
class BenchmarksConfig:
    """What `cgd benchmarks` writes."""

    write: list[str] = field(
        default_factory=list,
        metadata={"help": "Benchmarks to write: registry names, hub dataset ids (`owner/name[:config][@split]`)."},
    )
    output_dir: str = field(default="benchmarks", metadata={"help": "Folder of the written `<name>.jsonl` files."})


def make_parser(prog: str | None = "cgd benchmarks") -> ConfigParser:
    return ConfigParser((BenchmarksConfig,), prog=prog)


def export(names: list[str], output_dir: str | Path) -> dict[str, str]:
    """
    Writes benchmarks to `<output_dir>/<name>.jsonl`.

    Returns:
        `dict[str, str]`: The file written for each name given.

    Raises:
        `ValueError`: for a name that is no benchmark, or one that cannot be loaded (offline, say).
    """
    from ..evaluation.benchmarks import load_problems, resolve_benchmark, write_problems

    written = {}
    for name in names:
        benchmark = resolve_benchmark(name)
        path = Path(output_dir) / f"{benchmark.name}.jsonl"
        write_problems(load_problems(benchmark), path)
        written[name] = str(path)
    return written


def run(argv: list[str]) -> dict[str, str]:
    (config,) = make_parser().parse_args_and_config(argv)
    if not config.write:
        from ..evaluation.benchmarks import REGISTRY

        for benchmark in REGISTRY.values():
            print(f"{benchmark.name:<14} {benchmark.path}@{benchmark.split}  {benchmark.note}")
        return {}
    written = export(config.write, config.output_dir)
    for name, path in written.items():
        print(f"{name}: {path}")
    return written


def main(argv: list[str]) -> int:
    run(argv)
    return EXIT_OK
