"""In-process generation with a local `transformers` model (any hub id, folder or training checkpoint)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from .base import Backend, Reply, Request, render_completion


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
