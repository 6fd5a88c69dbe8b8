"""The backends by name. Each class is named by module path, so that a backend's heavy imports (torch, openai, vllm)
and the demo's code load only when that backend is used."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from ..sources import is_builtin, resolve_model
from .base import Backend

REGISTRY: dict[str, str] = {
    "transformers": "cgd_trainer.backends.transformers:TransformersBackend",
    "openai": "cgd_trainer.backends.openai:OpenAIBackend",
    "vllm": "cgd_trainer.backends.vllm:VLLMBackend",
    "demo": "cgd_trainer.demo.teacher:DemoBackend",
}
BACKENDS = tuple(REGISTRY)
# Backends that load the model in this process: a `builtin:` model name becomes its local folder for them (built or
# converted once); a server's backend (`openai`) sends the name as it is, as the served model's name.
LOCAL_BACKENDS = ("transformers", "vllm")


def local_model(kind: str, model: str | None, builtin_dir: str | os.PathLike) -> str | None:
    """
    The model a backend loads: for a local backend, a `builtin:` name becomes its folder (a tiny model built once
    under `<builtin_dir>/<name>`, a packaged one converted once into the shared cache); any other name is kept.
    """
    if kind not in LOCAL_BACKENDS or not is_builtin(model):
        return model
    return resolve_model(model, Path(builtin_dir) / model.partition(":")[2])


def backend_class(kind: str) -> type[Backend]:
    """The class of a backend by name."""
    if kind not in REGISTRY:
        raise ValueError(f"Unknown backend {kind!r}; choose one of {BACKENDS}.")
    module, _, name = REGISTRY[kind].partition(":")
    return getattr(importlib.import_module(module), name)


def make_backend(kind: str, model: str | None, **options: Any) -> Backend:
    """
    Builds a backend by name.

    Args:
        kind (`str`): `transformers`, `openai`, `vllm` or `demo`.
        model (`str`): Model id, folder or served name (`demo` needs none).
        **options: Keyword arguments of the backend's class; `None` values are left to the class defaults.

    Returns:
        [`Backend`]
    """
    options = {key: value for key, value in options.items() if value is not None}
    cls = backend_class(kind)
    if kind == "demo":
        return cls(model or "cgd-demo", **options)
    if not model:
        raise ValueError(f"The {kind!r} backend needs a model (a hub id, a local folder or a served model name).")
    return cls(model, **options)
