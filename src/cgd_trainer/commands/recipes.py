"""The training recipes and accelerate configs shipped inside the package, and how a name given on the command line
finds one.

They live in `cgd_trainer/recipes/` (the repository's `examples/recipes/*` and `examples/accelerate_configs/` link
there), so that a plain `pip install cgd-trainer` can launch the paper's runs without a clone of the repository:

```bash
cgd train --config qwen2.5-math-7b/full --accelerate_config zero3 --num_processes 8
```
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .parser import UsageError, did_you_mean

ACCELERATE_DIR = "accelerate_configs"


def _root() -> Path:
    return Path(str(resources.files("cgd_trainer") / "recipes"))


def recipe_names() -> list[str]:
    """The shipped training recipes, by name (`<model>/<recipe>`, e.g. `qwen2.5-math-7b/full`)."""
    root = _root()
    return sorted(
        str(path.relative_to(root).with_suffix(""))
        for path in root.glob("*/*.yaml")
        if path.parent.name != ACCELERATE_DIR
    )


def accelerate_config_names() -> list[str]:
    """The shipped accelerate configs, by name (e.g. `zero3`, `fsdp2`, `single_gpu`)."""
    return sorted(path.stem for path in (_root() / ACCELERATE_DIR).glob("*.yaml"))


def recipe_path(name: str) -> str:
    """The file of a shipped recipe given by name (`tiny/cpu` or `tiny/cpu.yaml`)."""
    return str(_root() / f"{name.removesuffix('.yaml')}.yaml")


def resolve_recipe(value: str) -> str:
    """
    Finds the YAML recipe that `--config` names: a file that exists, or the name of a recipe shipped with the package.

    Args:
        value: A path, or a shipped recipe's name such as `qwen2.5-math-7b/full` (`.yaml` optional).

    Returns:
        `str`: The path of the file.

    Raises:
        [`UsageError`]: when it is neither, listing the shipped recipes and the nearest one.
    """
    return _resolve(value, recipe_names(), recipe_path, "--config", "a recipe", "recipes")


def resolve_accelerate_config(value: str) -> str:
    """
    Finds the accelerate config that `--accelerate_config` names: a file that exists, or a shipped config's name.

    Args:
        value: A path, or a shipped config's name such as `zero3` (`.yaml` optional).

    Returns:
        `str`: The path of the file.

    Raises:
        [`UsageError`]: when it is neither, listing the shipped configs and the nearest one.
    """
    return _resolve(
        value,
        accelerate_config_names(),
        lambda name: str(_root() / ACCELERATE_DIR / f"{name}.yaml"),
        "--accelerate_config",
        "an accelerate config",
        "configs",
    )


def _resolve(value: str, names: list[str], path_of, flag: str, what: str, plural: str) -> str:
    if Path(value).is_file():
        return value
    name = value.removesuffix(".yaml")
    if name in names:
        return path_of(name)
    raise UsageError(
        f"{flag} {value}: no such file, nor {what} shipped with cgd-trainer.{did_you_mean(name, names)} "
        f"Shipped {plural}: {', '.join(names)}."
    )
