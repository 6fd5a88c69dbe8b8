"""In-process generation with a local `transformers` model (any hub id, folder or training checkpoint)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from .base import Backend, Reply, Request, cut_at_stop, fit_budget, render_completion
from .local import (
    free_accelerator_memory,
    load_generation_config,
    model_context_length,
    model_fingerprint,
    model_stop_token_ids,
)


class TransformersBackend(Backend):
    """
    In-process generation with a local `transformers` model: length-sorted batches, left padding, greedy or sampled
    decoding, `n` outputs per request.

    Generation stops at the request's stop token ids (by default the chat template's end-of-turn token, the
    tokenizer's eos and the `generation_config` eos ids) and stop strings, which are left out of the text. A request
    whose prompt plus `max_tokens` exceeds the model's context is generated with the budget that fits; one whose
    prompt alone does not fit fails with an error that says so.

    Args:
        model (`str`): Hub id or local folder (a training checkpoint works).
        prompt_format (`str`): `auto` uses the chat template when the tokenizer has one, `chat` requires it,
            `completion` never uses it.
        batch_size (`int`): Requests generated together.
        dtype (`str`): `auto`, `bfloat16`, `float16` or `float32`.
        device (`str` or `None`): Where to run; defaults to CUDA when available.
        trust_remote_code (`bool`): Allow the model's own code.
        max_context (`int` or `None`): Context length (prompt plus answer); default: the model config's
            `max_position_embeddings`.
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
        max_context: int | None = None,
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
        self._trust_remote_code = trust_remote_code
        self.max_context = max_context or model_context_length(model, trust_remote_code)
        self._fingerprint = model_fingerprint(model)
        self._default_stops: tuple[tuple[str, ...], tuple[int, ...]] | None = None

    @property
    def fingerprint(self) -> str | None:
        return self._fingerprint

    def default_stops(self) -> tuple[tuple[str, ...], tuple[int, ...]]:
        if self._default_stops is None:  # read once: every unresolved request asks
            generation_config = load_generation_config(self.model, self._trust_remote_code)
            self._default_stops = (), model_stop_token_ids(self.tokenizer, generation_config, chat=self._chat)
        return self._default_stops

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

        prepared = []
        for request in requests:
            text, special = self._text(request)
            sampling = self.resolve(request.sampling)
            length = len(self.tokenizer(text, add_special_tokens=special)["input_ids"])
            budget, error = fit_budget(sampling.max_tokens, length, self.max_context)
            if error is not None:
                yield Reply(request, error=error, prompt_tokens=length)
                continue
            prepared.append((request, text, special, sampling, budget, length))
        # Similar lengths together: less padding, and the longest batch first so memory errors show up at once.
        prepared.sort(key=lambda entry: -entry[5])
        # Requests in one batch must share their decoding settings (and budget: only prompts near the context's end
        # get a smaller one).
        groups: dict[tuple, list[tuple]] = {}
        for entry in prepared:
            groups.setdefault((entry[3], entry[2], entry[4]), []).append(entry)
        for (sampling, special, budget), entries in groups.items():
            stop_ids = set(sampling.stop_token_ids or ())
            for start in range(0, len(entries), self.batch_size):
                batch = entries[start : start + self.batch_size]
                encoded = self.tokenizer(
                    [entry[1] for entry in batch], return_tensors="pt", padding=True, add_special_tokens=special
                ).to(self.device)
                kwargs: dict[str, Any] = {
                    "max_new_tokens": budget,
                    "num_return_sequences": sampling.n,
                    "pad_token_id": self.tokenizer.pad_token_id,
                }
                if sampling.stop_token_ids:
                    kwargs["eos_token_id"] = list(sampling.stop_token_ids)
                if sampling.stop:
                    kwargs.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
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
                    for entry in batch:
                        yield Reply(entry[0], error=f"{type(error).__name__}: {error}")
                    continue
                new = output[:, encoded["input_ids"].shape[1] :].tolist()
                pad = self.tokenizer.pad_token_id
                rows = []
                for tokens in new:
                    # The answer ends before its first stop token; what follows is padding.
                    end = next((i for i, token in enumerate(tokens) if token in stop_ids), None)
                    kept = tokens[:end] if end is not None else [t for t in tokens if t != pad]
                    rows.append((kept, len(kept) + (end is not None)))
                texts = self.tokenizer.batch_decode([kept for kept, _ in rows], skip_special_tokens=True)
                for j, entry in enumerate(batch):
                    own = range(j * sampling.n, (j + 1) * sampling.n)
                    yield Reply(
                        entry[0],
                        texts=[cut_at_stop(texts[r], sampling.stop) for r in own],
                        prompt_tokens=int(encoded["attention_mask"][j].sum()),
                        completion_tokens=sum(rows[r][1] for r in own),
                        max_tokens=budget if budget != sampling.max_tokens else None,
                    )

    def close(self) -> None:
        self._model = None
        free_accelerator_memory()
