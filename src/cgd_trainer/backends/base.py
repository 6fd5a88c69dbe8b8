"""The interface every backend implements: [`Sampling`], [`Request`], [`Reply`] and [`Backend`].

A backend takes requests and yields a reply for each, in any order, as soon as it is ready, so that the caller can
write every result to disk before the next arrives (that is what makes runs resumable).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
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
        stop (`tuple[str]` or `None`): Strings that end the output (not included in it). `None`: the backend's
            defaults (none); `()`: none.
        stop_token_ids (`tuple[int]` or `None`): Token ids that end the output (not included in it). `None`: the
            backend's defaults (a local model's end-of-turn and eos tokens; a server's own); `()`: none beyond the
            model's own eos.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 16384
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] | None = None
    stop_token_ids: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        # Lists from configs become tuples: a `Sampling` is hashable (backends group requests by it).
        for name in ("stop", "stop_token_ids"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if self.max_tokens < 1:
            raise ValueError(f"`max_tokens` must be at least 1, got {self.max_tokens}.")

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        for name in ("stop", "stop_token_ids"):
            if not values[name]:  # unset or none: the keys of requests without stops stay what they were
                del values[name]
            else:  # lists, as they read back from JSON
                values[name] = list(values[name])
        return values


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
        max_tokens (`int` or `None`): The budget the request was sent with when it was shrunk to fit the model's
            context (else `None`: the request's own `max_tokens`).
    """

    request: Request
    texts: list[str] = field(default_factory=list)
    error: str | None = None
    attempts: int = 1
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_tokens: int | None = None

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

    def identity(self) -> dict[str, Any]:
        """
        What identifies the model behind a text: the one rule for reruns (request keys) and shard merges. A model
        with local files is their fingerprint, wherever the folder is (another path, another node's disk); a model
        known by name only (a hub id for a server, a served name) is that name. The extra fields sent with every
        request count too. The backend kind and a server's address do not: the same model served at another URL (a
        restarted server, one server per shard) gives the same texts, so serve a retrained model under a new name.
        """
        fingerprint = self.fingerprint
        identity: dict[str, Any] = {"fingerprint": fingerprint} if fingerprint is not None else {"model": self.model}
        if getattr(self, "extra_body", None):
            identity["extra_body"] = self.extra_body
        return identity

    def describe(self) -> dict[str, Any]:
        """
        Provenance of the backend: what produced the texts (never credentials). Its [`~Backend.identity`] keys, and
        the prompt format, decide whether two runs used the same model; the other keys are for the reader.
        """
        described = {"backend": self.name, "model": self.model, **self.identity()}
        return {**described, "prompt_format": "chat" if self.uses_chat else "completion"}

    @property
    def fingerprint(self) -> str | None:
        """A hash of the model's local files (weights, config, tokenizer), or `None` for a model known by name only."""
        return None

    def default_stops(self) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """The stop strings and stop token ids a request gets when its [`Sampling`] leaves them unset."""
        return (), ()

    def resolve(self, sampling: Sampling) -> Sampling:
        """
        The decoding settings as this backend sends them: unset stops replaced by the backend's defaults. Request keys
        and provenance hash the resolved settings, so a change of the defaults (a new tokenizer) regenerates.
        """
        if sampling.stop is not None and sampling.stop_token_ids is not None:
            return sampling
        stop, ids = self.default_stops()
        return replace(
            sampling,
            stop=stop if sampling.stop is None else sampling.stop,
            stop_token_ids=ids if sampling.stop_token_ids is None else sampling.stop_token_ids,
        )

    def close(self) -> None:  # noqa: B027 - most backends hold nothing to release
        """Releases what the backend holds (models, connections)."""


def fit_budget(max_tokens: int, prompt_tokens: int, context: int | None) -> tuple[int, str | None]:
    """
    The largest budget up to `max_tokens` with which a prompt of `prompt_tokens` tokens fits a context of `context`.

    Returns:
        `tuple[int, str | None]`: The budget, and an error when the prompt alone leaves no room for one new token.
    """
    if context is None or prompt_tokens + max_tokens <= context:
        return max_tokens, None
    if prompt_tokens >= context:
        return 0, (
            f"the prompt alone ({prompt_tokens} tokens) does not fit the model's context ({context} tokens); shorten "
            "the input or use a model with a longer context"
        )
    return context - prompt_tokens, None


def cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """The text up to the first stop string (servers leave the stop string out; so do the local backends)."""
    cut = min((index for index in (text.find(s) for s in stop or ()) if index >= 0), default=-1)
    return text if cut < 0 else text[:cut]


def render_completion(messages: list[dict[str, str]]) -> str:
    """Flattens chat messages into one plain prompt for a model without a chat template."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    user = "\n\n".join(m["content"] for m in messages if m["role"] != "system")
    return f"{system}\n\n{user}\n\n### Response\n" if system else f"{user}\n\n### Response\n"


def identity_of(described: dict[str, Any]) -> dict[str, Any]:
    """
    The part of a [`Backend.describe`] record that says which model made a text (its [`~Backend.identity`] and the
    prompt format), without what only says where it ran (the backend kind, a server address).
    """
    name = ("fingerprint",) if "fingerprint" in described else ("model",)  # as in `Backend.identity`
    return {key: described[key] for key in (*name, "extra_body", "prompt_format") if key in described}


def request_key(backend: Backend, request: Request) -> str:
    """
    Hash of what determines a completion, the key under which `cgd generate` and `cgd eval` store a result so that a
    rerun sends nothing twice: the model's [`~Backend.identity`] (the fingerprint of a local model's files, so that a
    model retrained into the same folder regenerates and a copied folder does not, or the name of a served model, and
    any extra request fields such as `top_k` or `chat_template_kwargs`), the exact prompt as sent, and the decoding
    settings with their stops.
    """
    payload = {
        **backend.identity(),
        "input": request.messages if backend.uses_chat and request.messages is not None else request.prompt,
        "sampling": request.sampling.to_dict(),
    }
    if payload["input"] is None:  # a chat-only request to a completion backend: rendered by the backend
        payload["input"] = request.messages
        payload["rendered"] = "completion"
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()
