"""Generation backends behind one small interface, shared by `cgd generate` and `cgd eval`.

- `transformers`: in-process batched `generate` for any local model or checkpoint;
- `openai`: any OpenAI-compatible HTTP endpoint (vLLM, SGLang, TGI, `transformers serve`, hosted APIs) through the
  official `openai` client, asynchronous with bounded concurrency, retries with exponential backoff and jitter;
- `vllm`: offline batch inference with `vllm.LLM` (optional extra);
- `demo`: the offline programmatic student and teacher of the demo task (`cgd_trainer.demo.teacher`).
"""

from __future__ import annotations

from .base import (
    PROMPT_FORMATS,
    Backend,
    Reply,
    Request,
    Sampling,
    identity_of,
    render_completion,
    request_key,
)
from .registry import BACKENDS, LOCAL_BACKENDS, REGISTRY, backend_class, local_model, make_backend
from .settings import BackendSettings, check_overrides


def __getattr__(name: str):
    # `from cgd_trainer.backends import OpenAIBackend` keeps working without importing every backend up front.
    for kind, path in REGISTRY.items():
        if path.endswith(f":{name}") and kind != "demo":
            return backend_class(kind)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKENDS",
    "LOCAL_BACKENDS",
    "PROMPT_FORMATS",
    "REGISTRY",
    "Backend",
    "BackendSettings",
    "Reply",
    "Request",
    "Sampling",
    "backend_class",
    "check_overrides",
    "identity_of",
    "local_model",
    "make_backend",
    "render_completion",
    "request_key",
]
