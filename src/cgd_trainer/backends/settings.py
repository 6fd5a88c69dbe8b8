"""The backends' settings, declared once: `cgd generate` and `cgd eval` both inherit [`BackendSettings`].

A setting has one name and one default everywhere: in a YAML recipe, on the command line, and as a per-model override
in `cgd eval`'s `models:` list. [`BackendSettings.backend_options`] turns the settings that apply to one backend into
the keyword arguments of its class, and [`check_overrides`] refuses a per-model key that its backend does not take.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..sources import loads_object
from .registry import backend_class

# The settings of a single model, which have no shared default: `cgd generate` prefixes them with `student_` and
# `teacher_`, `cgd eval` takes them at the top level and per model.
MODEL_SETTINGS = ("base_url", "api_key_env", "prompt_format")

# Which settings each backend uses, and under which keyword of its class. vLLM's engine settings are gathered into
# its `llm_kwargs`.
_VLLM_ENGINE = ("dtype", "trust_remote_code", "max_model_len", "gpu_memory_utilization", "vllm_kwargs")
BACKEND_SETTINGS: dict[str, dict[str, str]] = {
    "transformers": {
        "prompt_format": "prompt_format",
        "batch_size": "batch_size",
        "dtype": "dtype",
        "device": "device",
        "trust_remote_code": "trust_remote_code",
        "max_context": "max_context",
    },
    "openai": {
        "prompt_format": "prompt_format",
        "base_url": "base_url",
        "api_key_env": "api_key_env",
        "concurrency": "concurrency",
        "max_retries": "max_retries",
        "request_timeout": "timeout",
        "backoff_base": "backoff_base",
        "backoff_max": "backoff_max",
        "extra_body": "extra_body",
        "max_context": "max_context",
    },
    "vllm": {
        "prompt_format": "prompt_format",
        "tensor_parallel_size": "tensor_parallel_size",
        **{name: "llm_kwargs" for name in _VLLM_ENGINE},
    },
    "demo": {"prompt_format": "prompt_format"},
}


def _json_object(value: Any, name: str) -> dict[str, Any] | None:
    if not isinstance(value, str):
        return value
    return loads_object(value, f"`{name}`", """give a JSON object such as '{"top_k": 20}'""")


@dataclass
class BackendSettings:
    """
    Settings of the generation backends, shared by `cgd generate` and `cgd eval`. Each applies to the backends named
    in its help; the others ignore it.
    """

    batch_size: int = field(default=8, metadata={"help": "`transformers` backend: requests per generate call."})
    dtype: str = field(
        default="auto", metadata={"help": "`transformers` and `vllm` backends: auto, bfloat16, float16, float32."}
    )
    device: str | None = field(default=None, metadata={"help": "`transformers` backend: device (default CUDA/CPU)."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "`transformers` and `vllm` backends: allow custom model code."}
    )
    concurrency: int = field(default=32, metadata={"help": "`openai` backend: requests in flight at once."})
    max_retries: int = field(default=6, metadata={"help": "`openai` backend: retries after the first attempt."})
    request_timeout: float = field(
        default=1800.0, metadata={"help": "`openai` backend: seconds per attempt (long answers take minutes)."}
    )
    backoff_base: float = field(default=1.0, metadata={"help": "`openai` backend: first backoff ceiling (s)."})
    backoff_max: float = field(default=60.0, metadata={"help": "`openai` backend: largest backoff (s)."})
    extra_body: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": '`openai` backend: extra JSON fields for every request, e.g. `{"top_k": 20}`.'},
    )
    tensor_parallel_size: int = field(default=1, metadata={"help": "`vllm` backend: tensor-parallel GPUs."})
    max_model_len: int | None = field(default=None, metadata={"help": "`vllm` backend: context length."})
    gpu_memory_utilization: float | None = field(
        default=None, metadata={"help": "`vllm` backend: fraction of GPU memory for the engine."}
    )
    vllm_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "`vllm` backend: other `vllm.LLM` arguments (JSON), e.g. `enforce_eager`."}
    )

    def __post_init__(self) -> None:
        self.extra_body = _json_object(self.extra_body, "extra_body")
        self.vllm_kwargs = _json_object(self.vllm_kwargs, "vllm_kwargs")
        for name in ("batch_size", "concurrency", "tensor_parallel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1, got {getattr(self, name)}.")
        if self.max_retries < 0 or self.request_timeout <= 0:
            raise ValueError("`max_retries` must be >= 0 and `request_timeout` > 0.")

    def backend_options(
        self,
        kind: str,
        overrides: Mapping[str, Any] | None = None,
        engine_defaults: Mapping[str, Any] | None = None,
        **model_settings: Any,
    ) -> dict[str, Any]:
        """
        The keyword arguments of one backend's class, from these settings.

        Args:
            kind (`str`): The backend.
            overrides (`Mapping`, *optional*): Per-model settings (checked with [`check_overrides`]) that replace the
                shared ones.
            engine_defaults (`Mapping`, *optional*): `vllm.LLM` arguments the command sets unless the settings do
                (e.g. `cgd eval`'s seed).
            **model_settings: The model's own `base_url`, `api_key_env` and `prompt_format`.

        Returns:
            `dict`: Options for [`make_backend`]; `None` values are left to the class defaults.
        """
        backend_class(kind)  # an unknown name fails here, with the list of backends
        overrides = dict(overrides or {})
        check_overrides(kind, overrides)
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(BackendSettings)}
        values.update(model_settings)
        values.update(overrides)
        for name in ("extra_body", "vllm_kwargs"):
            values[name] = _json_object(values.get(name), name)
        options: dict[str, Any] = {}
        llm_kwargs: dict[str, Any] = dict(engine_defaults or {})
        for setting, keyword in BACKEND_SETTINGS[kind].items():
            value = values.get(setting)
            if keyword != "llm_kwargs":
                options[keyword] = value
            elif setting == "vllm_kwargs":
                continue
            elif value is not None and not (setting == "dtype" and value == "auto"):
                llm_kwargs[setting] = value
        if kind == "vllm":
            llm_kwargs.update(values.get("vllm_kwargs") or {})  # the explicit engine arguments win
            options["llm_kwargs"] = llm_kwargs
        return options


def settings_of(kind: str) -> list[str]:
    """The setting names one backend takes (per model or shared)."""
    return list(BACKEND_SETTINGS[kind])


def check_overrides(kind: str, overrides: Mapping[str, Any], where: str = "") -> None:
    """
    Refuses per-model settings that the model's backend does not take.

    Args:
        kind (`str`): The model's backend.
        overrides (`Mapping`): The per-model settings.
        where (`str`): Where they come from (`models[0]`), for the message.

    Raises:
        `ValueError`: naming the bad key, the nearest valid one and every valid one.
    """
    valid = settings_of(kind)
    for key in overrides:
        if key in valid:
            continue
        known = [f.name for f in dataclasses.fields(BackendSettings)] + list(MODEL_SETTINGS)
        close = difflib.get_close_matches(key, valid, n=1) or difflib.get_close_matches(key, known, n=1)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        other = " (it is a setting of another backend)" if key in known else ""
        prefix = f"{where}: " if where else ""
        raise ValueError(
            f"{prefix}`{key}` is not a setting of the {kind} backend{other}.{hint} Its settings are: "
            f"{', '.join(valid)}."
        )
