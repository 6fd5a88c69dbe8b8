"""The interface every backend implements: [`Sampling`], [`Request`], [`Reply`] and [`Backend`].

A backend takes requests and yields a reply for each, in any order, as soon as it is ready, so that the caller can
write every result to disk before the next arrives (that is what makes runs resumable).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PROMPT_FORMATS = ("auto", "chat", "completion")


@dataclass(frozen=True)
class Sampling:
    """
    Decoding settings of one request.

    Args:
        temperature (`float`, defaults to 0.0): 0 means greedy decoding (the paper's setting for every stage).
        top_p (`float`, defaults to 1.0): Nucleus sampling mass; used only when sampling.
        max_tokens (`int`, defaults to 16384): Largest number of new tokens.
        n (`int`, defaults to 1): Number of outputs for the request (pass@k sampling).
        seed (`int` or `None`): Sampling seed, when the backend supports one.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 16384
    n: int = 1
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Request:
    """
    One generation request.

    Args:
        id (`str`): Identifier of the item (record id, or record id and stage), used in logs and failure files.
        messages (`list[dict]` or `None`): The chat form: `[{"role": ..., "content": ...}, ...]`.
        prompt (`str` or `None`): The completion form, for models without a chat template.
        sampling ([`Sampling`]): Decoding settings.
        meta (`dict`): The stage and the raw fields behind the prompt. Only the `demo` backend reads it.
    """

    id: str
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.messages is None and self.prompt is None:
            raise ValueError(f"Request {self.id!r} needs `messages` or `prompt`.")


@dataclass
class Reply:
    """
    What a backend returns for one request.

    Args:
        request ([`Request`]): The request.
        texts (`list[str]`): `request.sampling.n` outputs; empty when the request failed.
        error (`str` or `None`): Why the request failed (after retries), else `None`.
        attempts (`int`): Number of times the request was sent.
        prompt_tokens (`int`), completion_tokens (`int`): Token usage, when the backend reports it.
    """

    request: Request
    texts: list[str] = field(default_factory=list)
    error: str | None = None
    attempts: int = 1
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


class Backend(ABC):
    """A source of completions for a list of requests."""

    name: str = ""

    def __init__(self, model: str, prompt_format: str = "auto") -> None:
        if prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"`prompt_format` must be one of {PROMPT_FORMATS}, got {prompt_format!r}.")
        self.model = model
        self.prompt_format = prompt_format

    @property
    def uses_chat(self) -> bool:
        """Whether requests go out as chat messages (else as completion prompts)."""
        return self.prompt_format != "completion"

    @abstractmethod
    def generate(self, requests: Sequence[Request]) -> Iterator[Reply]:
        """Yields one [`Reply`] per request, in any order, each as soon as it is ready."""

    def describe(self) -> dict[str, Any]:
        """Provenance of the backend: what produced the texts (never credentials)."""
        return {"backend": self.name, "model": self.model, "prompt_format": "chat" if self.uses_chat else "completion"}

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Releases what the backend holds (models, connections)."""


def render_completion(messages: list[dict[str, str]]) -> str:
    """Flattens chat messages into one plain prompt for a model without a chat template."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    user = "\n\n".join(m["content"] for m in messages if m["role"] != "system")
    return f"{system}\n\n{user}\n\n### Response\n" if system else f"{user}\n\n### Response\n"
