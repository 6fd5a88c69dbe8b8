"""Offline batch inference with `vllm.LLM` (the `vllm` extra, CUDA)."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import MissingDependency
from .base import Backend, Reply, Request, fit_budget, render_completion
from .local import (
    free_accelerator_memory,
    load_generation_config,
    model_context_length,
    model_fingerprint,
    model_stop_token_ids,
)

logger = logging.getLogger(__name__)

# How to run vLLM data-parallel: `vllm.LLM` runs one engine replica per process.
DATA_PARALLEL_HELP = (
    "`vllm.LLM` runs one engine replica per process, so offline data parallelism is several `cgd generate` "
    "processes: `--shard i/N` with `CUDA_VISIBLE_DEVICES` set per process, then `--merge` (docs/pipeline.md, "
    "'Sharding'); or serve the model with `vllm serve --data-parallel-size N` and use the `openai` backend."
)


class VLLMBackend(Backend):
    """
    Offline batch inference with `vllm.LLM` (`pip install "cgd-trainer[vllm]"`, CUDA).

    Requests are sent in chunks of `chunk_size` so that results reach the disk as they finish. `LLM.chat` applies the
    model's chat template; `completion` prompts go through `LLM.generate`. Each request gets its own
    `SamplingParams`: its stops (by default the chat template's end-of-turn token and every eos id) and a budget that
    fits the engine's `max_model_len` (a prompt that alone does not fit fails with an error that says so).
    [`close`] shuts the engine down and frees the GPU for the next model.

    Args:
        model (`str`): Hub id or local folder.
        prompt_format (`str`): `auto` (chat when the tokenizer has a chat template), `chat` or `completion`.
        tensor_parallel_size (`int`): Passed to `vllm.LLM`.
        chunk_size (`int`): Requests per `LLM.chat` call.
        llm_kwargs (`dict` or `None`): Any other `vllm.LLM` arguments (`max_model_len`, `gpu_memory_utilization`...);
            not `data_parallel_size` (see `DATA_PARALLEL_HELP`).
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        prompt_format: str = "auto",
        tensor_parallel_size: int = 1,
        chunk_size: int = 1024,
        llm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(model, prompt_format)
        kwargs = dict(llm_kwargs or {})
        if kwargs.get("data_parallel_size", 1) != 1:
            raise ValueError(f"The `vllm` backend does not take `data_parallel_size`: {DATA_PARALLEL_HELP}")
        try:
            import vllm
        except ImportError as error:
            raise MissingDependency(
                'The `vllm` backend needs vLLM: `pip install "cgd-trainer[vllm]"` on a CUDA machine, or use the '
                "`openai` backend against a `vllm serve` server."
            ) from error
        from transformers import AutoTokenizer

        self._vllm = vllm
        kwargs.setdefault("tensor_parallel_size", tensor_parallel_size)
        self._llm_kwargs = kwargs
        self._llm = None
        self.chunk_size = chunk_size
        trust = kwargs.get("trust_remote_code", False)
        # The tokenizer gives the chat/completion choice, the default stop ids and the prompt lengths for the budget.
        self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust)
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        if prompt_format == "chat" and not has_template:
            raise ValueError(f"`prompt_format='chat'` but the tokenizer of {model} has no chat template.")
        # Base models have no chat template: like the `transformers` backend, `auto` then sends completion prompts.
        self._chat = has_template and prompt_format != "completion"
        self.max_context = kwargs.get("max_model_len") or model_context_length(model, trust)
        generation_config = load_generation_config(model, trust)
        self._default_stop_ids = model_stop_token_ids(self.tokenizer, generation_config, chat=self._chat)
        self._fingerprint = model_fingerprint(model)

    @property
    def uses_chat(self) -> bool:
        return self._chat

    @property
    def fingerprint(self) -> str | None:
        return self._fingerprint

    def default_stops(self) -> tuple[tuple[str, ...], tuple[int, ...]]:
        return (), self._default_stop_ids

    @property
    def llm(self):
        """The vLLM engine, started on first use: a rerun whose requests are all cached never starts it."""
        if self._llm is None:
            self._llm = self._vllm.LLM(model=self.model, **self._llm_kwargs)
        return self._llm

    def _prompt_tokens(self, request: Request) -> int:
        if self._chat:
            ids = self.tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=True)
            return len(ids if isinstance(ids, list) else ids["input_ids"])  # a list, or a BatchEncoding
        prompt = request.prompt if request.prompt is not None else render_completion(request.messages)
        return len(self.tokenizer(prompt)["input_ids"])

    def _params(self, request: Request, budget: int):
        sampling = self.resolve(request.sampling)
        return self._vllm.SamplingParams(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p if sampling.temperature > 0 else 1.0,
            max_tokens=budget,
            seed=sampling.seed,
            stop=list(sampling.stop or ()),
            stop_token_ids=list(sampling.stop_token_ids or ()),
        )

    def generate(self, requests: Sequence[Request]) -> Iterator[Reply]:
        for start in range(0, len(requests), self.chunk_size):
            group, params, budgets = [], [], []
            for request in requests[start : start + self.chunk_size]:
                length = self._prompt_tokens(request)
                budget, error = fit_budget(request.sampling.max_tokens, length, self.max_context)
                if error is not None:
                    yield Reply(request, error=error, prompt_tokens=length)
                    continue
                group.append(request)
                params.append(self._params(request, budget))
                budgets.append(budget)
            if not group:
                continue
            try:
                if self._chat:
                    outputs = self.llm.chat([r.messages for r in group], params, use_tqdm=False)
                else:
                    prompts = [r.prompt if r.prompt is not None else render_completion(r.messages) for r in group]
                    outputs = self.llm.generate(prompts, params, use_tqdm=False)
            except Exception as error:  # noqa: BLE001 - a failed chunk is recorded, not lost
                for request in group:
                    yield Reply(request, error=f"{type(error).__name__}: {error}")
                continue
            for request, output, budget in zip(group, outputs, budgets):
                yield Reply(
                    request,
                    texts=[o.text for o in output.outputs],
                    prompt_tokens=len(output.prompt_token_ids or []),
                    completion_tokens=sum(len(o.token_ids) for o in output.outputs),
                    max_tokens=budget if budget != request.sampling.max_tokens else None,
                )

    def close(self) -> None:
        """
        Shuts the engine down and returns its GPU memory, so that the next model (the teacher after the student, the
        next checkpoint in `cgd eval`) can load in the same process. Safe to call more than once.
        """
        llm, self._llm = self._llm, None
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        # vLLM's V1 engine runs its core in a child process that `shutdown` stops; older engines have no such method.
        for part in (engine, getattr(engine, "engine_core", None)):
            shutdown = getattr(part, "shutdown", None)
            if callable(shutdown):
                try:
                    shutdown()
                except Exception as error:  # noqa: BLE001 - best effort: the memory is freed below either way
                    logger.warning(f"vLLM engine shutdown: {type(error).__name__}: {error}")
        del llm, engine
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
        except ImportError:
            pass
        else:
            try:
                destroy_model_parallel()
                destroy_distributed_environment()
            except Exception as error:  # noqa: BLE001 - nothing was set up (single GPU) or already torn down
                logger.debug("vLLM distributed teardown: %s", error)
        free_accelerator_memory()
