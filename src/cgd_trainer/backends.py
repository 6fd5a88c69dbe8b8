"""Generation backends behind one small interface, shared by `cgd generate` and `cgd eval`.

A backend takes [`Request`]s and yields a [`Reply`] for each, in any order, as soon as it is ready, so the caller can
write every result to disk before the next arrives (that is what makes runs resumable). Backends:

- `transformers`: in-process batched `generate` for any local model or checkpoint;
- `openai`: any OpenAI-compatible HTTP endpoint (vLLM, SGLang, TGI, `transformers serve`, hosted APIs) through the
  official `openai` client, asynchronous with bounded concurrency, retries with exponential backoff and jitter;
- `vllm`: offline batch inference with `vllm.LLM` (optional extra);
- `demo`: the offline programmatic student and teacher of the demo task (see `cgd_trainer.demo_teacher`).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import logging
import os
import queue
import random
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

BACKENDS = ("transformers", "openai", "vllm", "demo")
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


class TransformersBackend(Backend):
    """
    In-process generation with a local `transformers` model: length-sorted batches, left padding, greedy or sampled
    decoding, `n` outputs per request.

    Args:
        model (`str`): Hub id or local folder (a training checkpoint works).
        prompt_format (`str`): `auto` uses the chat template when the tokenizer has one, `chat` requires it,
            `completion` never uses it.
        batch_size (`int`): Requests generated together.
        dtype (`str`): `auto`, `bfloat16`, `float16` or `float32`.
        device (`str` or `None`): Where to run; defaults to CUDA when available.
    """

    name = "transformers"

    def __init__(
        self,
        model: str,
        prompt_format: str = "auto",
        batch_size: int = 8,
        dtype: str = "auto",
        device: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        import torch
        from transformers import AutoTokenizer

        super().__init__(model, prompt_format)
        self.batch_size = batch_size
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._load_options = {"dtype": dtype if dtype == "auto" else getattr(torch, dtype)}
        self._load_options["trust_remote_code"] = trust_remote_code
        self._model = None
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if prompt_format == "chat" and not has_template:
            raise ValueError(f"`prompt_format='chat'` but the tokenizer of {model} has no chat template.")
        self._chat = has_template and prompt_format != "completion"

    @property
    def uses_chat(self) -> bool:
        return self._chat

    @property
    def model_obj(self):
        """The model, loaded on first use: a rerun whose requests are all cached never loads it."""
        if self._model is None:
            from transformers import AutoModelForCausalLM

            self._model = AutoModelForCausalLM.from_pretrained(self.model, **self._load_options).to(self.device)
            self._model.eval()
        return self._model

    def _text(self, request: Request) -> tuple[str, bool]:
        """The prompt text, and whether the tokenizer should add its special tokens (not after a chat template)."""
        if self._chat and request.messages is not None:
            text = self.tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
            return text, False
        return (request.prompt if request.prompt is not None else render_completion(request.messages)), True

    def generate(self, requests: Sequence[Request]) -> Iterator[Reply]:
        import torch

        prepared = [(request, *self._text(request)) for request in requests]
        lengths = [len(self.tokenizer(text, add_special_tokens=special)["input_ids"]) for _, text, special in prepared]
        # Similar lengths together: less padding, and the longest batch first so memory errors show up at once.
        order = sorted(range(len(prepared)), key=lambda i: -lengths[i])
        # Requests in one batch must share their decoding settings.
        groups: dict[tuple, list[int]] = {}
        for i in order:
            request = prepared[i][0]
            groups.setdefault((request.sampling, prepared[i][2]), []).append(i)
        for (sampling, special), indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                batch = [prepared[i] for i in indices[start : start + self.batch_size]]
                encoded = self.tokenizer(
                    [text for _, text, _ in batch], return_tensors="pt", padding=True, add_special_tokens=special
                ).to(self.device)
                kwargs: dict[str, Any] = {
                    "max_new_tokens": sampling.max_tokens,
                    "num_return_sequences": sampling.n,
                    "pad_token_id": self.tokenizer.pad_token_id,
                }
                if sampling.temperature > 0:
                    kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p)
                    if sampling.seed is not None:
                        torch.manual_seed(sampling.seed + start)
                else:
                    kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
                try:
                    with torch.no_grad():
                        output = self.model_obj.generate(**encoded, **kwargs)
                except Exception as error:  # e.g. out of memory: report every request of the batch as failed
                    for request, _, _ in batch:
                        yield Reply(request, error=f"{type(error).__name__}: {error}")
                    continue
                new = output[:, encoded["input_ids"].shape[1] :]
                texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
                pad = self.tokenizer.pad_token_id
                for j, (request, _, _) in enumerate(batch):
                    rows = range(j * sampling.n, (j + 1) * sampling.n)
                    yield Reply(
                        request,
                        texts=[texts[r] for r in rows],
                        prompt_tokens=int(encoded["attention_mask"][j].sum()),
                        completion_tokens=int(sum((new[r] != pad).sum() for r in rows)),
                    )

    def close(self) -> None:
        self._model = None


# Failures worth another try: rate limits, server errors, timeouts, dropped connections, malformed replies.
def _retryable(error: BaseException) -> bool:
    import openai

    if isinstance(error, openai.APIStatusError):
        return error.status_code in (408, 409, 429) or error.status_code >= 500
    # A body that is not JSON surfaces as a JSONDecodeError from the client, one of the wrong shape as a validation
    # error: both are malformed replies.
    malformed = (MalformedReply, json.JSONDecodeError, openai.APIResponseValidationError)
    return isinstance(error, (openai.APITimeoutError, openai.APIConnectionError, *malformed))


class MalformedReply(Exception):
    """The server answered, but not with a usable completion."""


class OpenAIBackend(Backend):
    """
    Any OpenAI-compatible endpoint, through `openai.AsyncOpenAI`.

    Requests run concurrently (at most `concurrency` at a time). A request that fails with a rate limit, a 5xx, a
    timeout, a lost connection or a malformed reply is retried up to `max_retries` times after an exponential backoff
    with full jitter (and at least the server's `Retry-After`, up to 10 minutes); other errors (400, 401, 404) fail at
    once. With `n > 1`, the `n` samples are sent as `n` requests (with seeds `seed, seed + 1, ...`), which every
    server supports.

    The API key is read from the environment variable `api_key_env` and lives only in the client object: it is never
    logged or written, and it is masked in error messages.

    Args:
        model (`str`): Model name the server knows.
        base_url (`str` or `None`): e.g. `http://localhost:8000/v1`; `None` uses the client's default and
            `OPENAI_BASE_URL`.
        prompt_format (`str`): `chat` (and `auto`) use `/chat/completions`; `completion` uses `/completions`.
        api_key_env (`str`): Environment variable holding the key; servers that need none get a placeholder.
        concurrency (`int`): Requests in flight at once.
        max_retries (`int`): Retries after the first attempt.
        timeout (`float`): Seconds per attempt.
        backoff_base (`float`), backoff_max (`float`): The n-th retry waits a random time in
            `[0, min(backoff_max, backoff_base * 2**n)]`.
        extra_body (`dict` or `None`): Extra JSON fields for every request (e.g. `chat_template_kwargs`).
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        prompt_format: str = "auto",
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 32,
        max_retries: int = 6,
        timeout: float = 600.0,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(model, prompt_format)
        if concurrency < 1:
            raise ValueError(f"`concurrency` must be at least 1, got {concurrency}.")
        self.base_url = base_url
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env) or None
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.extra_body = extra_body or None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "base_url": self.base_url}

    def _mask(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    def _client(self):
        import openai

        # Retries are ours (with jitter and a failure record), so the client's own are off.
        return openai.AsyncOpenAI(
            api_key=self._api_key or "not-needed", base_url=self.base_url, max_retries=0, timeout=self.timeout
        )

    async def _send(self, client, request: Request, seed: int | None) -> tuple[str, int, int]:
        sampling = request.sampling
        kwargs: dict[str, Any] = {"model": self.model, "max_tokens": sampling.max_tokens}
        kwargs["temperature"] = sampling.temperature
        if sampling.temperature > 0 and sampling.top_p < 1:
            kwargs["top_p"] = sampling.top_p
        if seed is not None:
            kwargs["seed"] = seed
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        if self.uses_chat and request.messages is not None:
            response = await client.chat.completions.create(messages=request.messages, **kwargs)
            choices = getattr(response, "choices", None)
            text = choices[0].message.content if choices else None
        else:
            prompt = request.prompt if request.prompt is not None else render_completion(request.messages)
            response = await client.completions.create(prompt=prompt, **kwargs)
            choices = getattr(response, "choices", None)
            text = choices[0].text if choices else None
        if not isinstance(text, str):
            raise MalformedReply(f"the reply has no completion text: {str(response)[:200]!r}")
        usage = getattr(response, "usage", None)
        return text, getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0

    async def _one(self, client, request: Request) -> Reply:
        reply = Reply(request, attempts=0)
        base_seed = request.sampling.seed
        seeds = [None if base_seed is None else base_seed + i for i in range(request.sampling.n)]
        for seed in seeds:
            for attempt in range(self.max_retries + 1):
                reply.attempts += 1
                try:
                    text, prompt_tokens, completion_tokens = await self._send(client, request, seed)
                except Exception as error:  # noqa: BLE001 - every failure is either retried or recorded
                    message = self._mask(f"{type(error).__name__}: {error}")
                    if attempt == self.max_retries or not _retryable(error):
                        return Reply(request, error=message, attempts=reply.attempts)
                    delay = random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))
                    retry_after = _retry_after(error)
                    if retry_after is not None:  # the server knows best, up to a sanity limit
                        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
                    logger.debug("Request %s failed (%s); retrying in %.2fs", request.id, message, delay)
                    await asyncio.sleep(delay)
                    continue
                # A server may cut a reply inside a surrogate pair; such text cannot be written as UTF-8.
                reply.texts.append(text.encode("utf-8", "replace").decode("utf-8"))
                reply.prompt_tokens += prompt_tokens
                reply.completion_tokens += completion_tokens
                break
        return reply

    async def _run(self, requests: Sequence[Request], results: queue.Queue) -> None:
        # `concurrency` workers take requests from one queue: the cost per reply does not grow with the run's size.
        todo = collections.deque(requests)
        client = self._client()

        async def worker() -> None:
            while todo:
                results.put(await self._one(client, todo.popleft()))

        try:
            await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(todo)))))
        finally:
            await client.close()

    def generate(self, requests: Sequence[Request]) -> Iterator[Reply]:
        if not requests:
            return
        # The event loop runs in its own thread: generation goes on while the caller writes results, and the backend
        # works the same where an event loop is already running (notebooks).
        results: queue.Queue = queue.Queue()
        loop = asyncio.new_event_loop()
        main = loop.create_task(self._run(requests, results))
        failure: list[BaseException] = []

        def run_loop() -> None:
            try:
                loop.run_until_complete(main)
            except asyncio.CancelledError:
                pass
            except BaseException as error:  # noqa: BLE001 - handed to the caller's thread below
                failure.append(error)
            finally:
                loop.close()
                results.put(_FINISHED)

        thread = threading.Thread(target=run_loop, name="cgd-openai-backend", daemon=True)
        thread.start()
        try:
            yield from iter(results.get, _FINISHED)
        finally:
            if thread.is_alive():  # the caller stopped early: cancel what is still in flight
                loop.call_soon_threadsafe(main.cancel)
            thread.join()
        if failure:
            raise failure[0]


_FINISHED = object()
# Longest wait a server's `Retry-After` may ask for (seconds).
MAX_RETRY_AFTER = 600.0


def _retry_after(error: BaseException) -> float | None:
    response = getattr(error, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class VLLMBackend(Backend):
    """
    Offline batch inference with `vllm.LLM` (`pip install "cgd-trainer[vllm]"`, CUDA).

    Requests are sent in chunks of `chunk_size` so that results reach the disk as they finish. `LLM.chat` applies the
    model's chat template; `completion` prompts go through `LLM.generate`.

    Args:
        model (`str`): Hub id or local folder.
        prompt_format (`str`): `auto` (chat when the tokenizer has a chat template), `chat` or `completion`.
        tensor_parallel_size (`int`), data_parallel_size (`int`): Passed to `vllm.LLM`.
        chunk_size (`int`): Requests per `LLM.chat` call.
        llm_kwargs (`dict` or `None`): Any other `vllm.LLM` arguments (`max_model_len`, `gpu_memory_utilization`...).
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        prompt_format: str = "auto",
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        chunk_size: int = 1024,
        llm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(model, prompt_format)
        try:
            import vllm
        except ImportError as error:
            raise ImportError(
                'The `vllm` backend needs vLLM: `pip install "cgd-trainer[vllm]"` on a CUDA machine, or use the '
                "`openai` backend against a `vllm serve` server."
            ) from error
        self._vllm = vllm
        kwargs = dict(llm_kwargs or {})
        kwargs.setdefault("tensor_parallel_size", tensor_parallel_size)
        if data_parallel_size > 1:
            kwargs.setdefault("data_parallel_size", data_parallel_size)
        self._llm_kwargs = kwargs
        self._llm = None
        self.chunk_size = chunk_size
        self._chat = prompt_format == "chat"
        if prompt_format == "auto":
            # Base models have no chat template: like the `transformers` backend, `auto` then sends completion prompts.
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=kwargs.get("trust_remote_code", False))
            self._chat = bool(getattr(tokenizer, "chat_template", None))

    @property
    def uses_chat(self) -> bool:
        return self._chat

    @property
    def llm(self):
        """The vLLM engine, started on first use: a rerun whose requests are all cached never starts it."""
        if self._llm is None:
            self._llm = self._vllm.LLM(model=self.model, **self._llm_kwargs)
        return self._llm

    def generate(self, requests: Sequence[Request]) -> Iterator[Reply]:
        for start in range(0, len(requests), self.chunk_size):
            chunk = list(requests[start : start + self.chunk_size])
            groups: dict[Sampling, list[Request]] = {}
            for request in chunk:
                groups.setdefault(request.sampling, []).append(request)
            for sampling, group in groups.items():
                params = self._vllm.SamplingParams(
                    n=sampling.n,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
                    max_tokens=sampling.max_tokens,
                    seed=sampling.seed,
                )
                try:
                    if self.uses_chat:
                        outputs = self.llm.chat([r.messages for r in group], params, use_tqdm=False)
                    else:
                        prompts = [r.prompt if r.prompt is not None else render_completion(r.messages) for r in group]
                        outputs = self.llm.generate(prompts, params, use_tqdm=False)
                except Exception as error:  # noqa: BLE001 - a failed chunk is recorded, not lost
                    for request in group:
                        yield Reply(request, error=f"{type(error).__name__}: {error}")
                    continue
                for request, output in zip(group, outputs):
                    yield Reply(
                        request,
                        texts=[o.text for o in output.outputs],
                        prompt_tokens=len(output.prompt_token_ids or []),
                        completion_tokens=sum(len(o.token_ids) for o in output.outputs),
                    )


def _backend_class(kind: str) -> type[Backend]:
    if kind == "demo":
        from .demo_teacher import DemoBackend

        return DemoBackend
    classes = {"transformers": TransformersBackend, "openai": OpenAIBackend, "vllm": VLLMBackend}
    if kind not in classes:
        raise ValueError(f"Unknown backend {kind!r}; choose one of {BACKENDS}.")
    return classes[kind]


def options_for(kind: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """
    The settings a backend kind takes, picked from a flat mapping of every backend's settings (a command's config):
    the keyword arguments of the backend's class, other than `model`.

    Returns:
        `dict`: Keyword arguments for [`make_backend`].
    """
    accepted = inspect.signature(_backend_class(kind).__init__).parameters
    return {key: value for key, value in settings.items() if key in accepted and key not in ("self", "model")}


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
    cls = _backend_class(kind)
    if kind == "demo":
        return cls(model or "cgd-demo", **options)
    if not model:
        raise ValueError(f"The {kind!r} backend needs a model (a hub id, a local folder or a served model name).")
    return cls(model, **options)
