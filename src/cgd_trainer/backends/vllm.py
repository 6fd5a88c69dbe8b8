"""Offline batch inference with `vllm.LLM` (the `vllm` extra, CUDA)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from .base import Backend, Reply, Request, Sampling, render_completion


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
