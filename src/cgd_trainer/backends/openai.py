"""Any OpenAI-compatible endpoint (vLLM, SGLang, TGI, `transformers serve`, hosted APIs), through the `openai`
client."""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import queue
import random
import re
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from .base import Backend, Reply, Request, cut_at_stop, fit_budget, render_completion

logger = logging.getLogger(__name__)


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


# vLLM's (and the OpenAI API's) words when prompt plus `max_tokens` exceed the context, in their known forms:
#   "'max_tokens' or 'max_completion_tokens' is too large: 16384. This model's maximum context length is 32768 tokens
#    and your request has 20000 input tokens (16384 > 32768 - 20000)."
#   "This model's maximum context length is 32768 tokens. However, you requested 36384 tokens (20000 in the messages,
#    16384 in the completion). Please reduce the length of the messages or completion."
#   "This model's maximum context length is 8192 tokens. However, your request has 9000 input tokens. ..."
_CONTEXT_RE = re.compile(r"maximum context length is (\d+) tokens")
_INPUT_RES = (
    re.compile(r"request has (\d+) input tokens"),
    re.compile(r"\((\d+) in the messages"),
    re.compile(r"(\d+) input tokens"),
)


def context_error(error: BaseException) -> tuple[int, int | None] | None:
    """`(context, input tokens)` from a server's 400 "maximum context length" error, else `None`."""
    import openai

    if not isinstance(error, openai.BadRequestError):
        return None
    body = getattr(error, "body", None)
    message = body.get("message") if isinstance(body, dict) else None
    text = f"{message or ''} {error}"
    match = _CONTEXT_RE.search(text)
    if match is None:
        return None
    for pattern in _INPUT_RES:
        found = pattern.search(text)
        if found:
            return int(match.group(1)), int(found.group(1))
    return int(match.group(1)), None


class OpenAIBackend(Backend):
    """
    Any OpenAI-compatible endpoint, through `openai.AsyncOpenAI`.

    Requests run concurrently (at most `concurrency` at a time). A request that fails with a rate limit, a 5xx, a
    timeout, a lost connection or a malformed reply is retried up to `max_retries` times after an exponential backoff
    with full jitter (and at least the server's `Retry-After`, up to 10 minutes); other errors (400, 401, 404) fail at
    once. With `n > 1`, the `n` samples are sent as `n` requests (with seeds `seed, seed + 1, ...`), which every
    server supports.

    Stops: `stop` strings go out as the API's `stop`; `stop_token_ids` (a vLLM/SGLang extension) go out in the
    request body only when set. The server applies its own model's end-of-turn and eos, so the default stops are none.

    Context: a request whose prompt plus `max_tokens` exceeds the model's context is refused by the server with a 400
    that names the context and the prompt's length; it is sent again at once with the budget that fits, and fails only
    when the prompt alone does not fit. The context is also read from vLLM's `/v1/models` (`max_model_len`), or set
    with `max_context`; the budget never exceeds it.

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
        max_context (`int` or `None`): The served model's context length, when the server does not report it.
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
        max_context: int | None = None,
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
        self.max_context = max_context
        self._context_checked = max_context is not None

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

    async def _server_context(self, client) -> None:
        """Reads the model's context length from `/v1/models` once (vLLM reports `max_model_len`; others nothing)."""
        if self._context_checked:
            return
        self._context_checked = True
        try:
            models = await client.models.list()
        except Exception as error:  # noqa: BLE001 - optional metadata: a server without it is fine
            logger.debug("No model list from %s (%s)", self.base_url, self._mask(str(error)))
            return
        for entry in getattr(models, "data", None) or []:
            length = (getattr(entry, "model_extra", None) or {}).get("max_model_len")
            if getattr(entry, "id", None) == self.model and isinstance(length, int) and length > 0:
                self.max_context = length
                logger.info("%s: context length %d (from the server's model list)", self.model, length)

    async def _send(self, client, request: Request, seed: int | None, max_tokens: int) -> tuple[str, int, int]:
        sampling = request.sampling
        kwargs: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens}
        kwargs["temperature"] = sampling.temperature
        if sampling.temperature > 0 and sampling.top_p < 1:
            kwargs["top_p"] = sampling.top_p
        if seed is not None:
            kwargs["seed"] = seed
        if sampling.stop:
            kwargs["stop"] = list(sampling.stop)
        extra = dict(self.extra_body or {})
        if sampling.stop_token_ids:
            extra["stop_token_ids"] = list(sampling.stop_token_ids)
        if extra:
            kwargs["extra_body"] = extra
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
        budget = request.sampling.max_tokens
        if self.max_context is not None:
            budget = min(budget, self.max_context - 1)
        for seed in seeds:
            attempt = 0
            while attempt <= self.max_retries:
                reply.attempts += 1
                try:
                    text, prompt_tokens, completion_tokens = await self._send(client, request, seed, budget)
                except Exception as error:  # noqa: BLE001 - every failure is either retried or recorded
                    message = self._mask(f"{type(error).__name__}: {error}")
                    limits = context_error(error)
                    if limits is not None:
                        context, prompt_tokens = limits
                        fitted, problem = (
                            fit_budget(budget, prompt_tokens, context) if prompt_tokens is not None else (0, None)
                        )
                        if prompt_tokens is None:
                            problem = f"the request does not fit the model's context ({context} tokens): {message}"
                        if problem is not None:
                            return Reply(
                                request, error=problem, attempts=reply.attempts, prompt_tokens=prompt_tokens or 0
                            )
                        if fitted < budget:  # sent again at once with the budget that fits; not a retry
                            logger.debug(
                                "Request %s: budget %d -> %d to fit %d tokens", request.id, budget, fitted, context
                            )
                            budget = fitted
                            continue
                    if attempt == self.max_retries or not _retryable(error):
                        return Reply(request, error=message, attempts=reply.attempts)
                    delay = random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))
                    retry_after = _retry_after(error)
                    if retry_after is not None:  # the server knows best, up to a sanity limit
                        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
                    logger.debug("Request %s failed (%s); retrying in %.2fs", request.id, message, delay)
                    await asyncio.sleep(delay)
                    attempt += 1
                    continue
                # A server may cut a reply inside a surrogate pair; such text cannot be written as UTF-8. A server
                # that ignores `stop` gets its reply cut here, as one that honours it would have.
                text = cut_at_stop(text, request.sampling.stop)
                reply.texts.append(text.encode("utf-8", "replace").decode("utf-8"))
                reply.prompt_tokens += prompt_tokens
                reply.completion_tokens += completion_tokens
                break
        if budget != request.sampling.max_tokens:
            reply.max_tokens = budget
        return reply

    async def _run(self, requests: Sequence[Request], results: queue.Queue) -> None:
        # `concurrency` workers take requests from one queue: the cost per reply does not grow with the run's size.
        todo = collections.deque(requests)
        client = self._client()

        async def worker() -> None:
            while todo:
                results.put(await self._one(client, todo.popleft()))

        try:
            await self._server_context(client)
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
                try:
                    loop.call_soon_threadsafe(main.cancel)
                except RuntimeError:  # the loop finished (and closed) in the meantime: nothing left to cancel
                    pass
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
