"""Tokenizing rendered examples exactly as TRL's dataset preparation does, with one pass over each record's text.

TRL 1.16 tokenizes a prompt-completion example twice, one example at a time: the prompt alone, then the prompt with
its completion, and the completion starts where the two token sequences diverge. For CGD records the prompt is most of
the text (question, initial answer, critique), so that doubles the work. [`ExampleEncoder`] renders each example to the
text TRL would tokenize and encodes a whole batch of texts in one call to the fast tokenizer. The completion's start
is then read from that one encoding: the prompt's tokens are the example's own tokens up to a point where tokenization
cannot depend on what follows (the end of a special token such as `<|im_start|>`, or the start of a word two words
before the prompt's end), followed by the tokens of the short text after that point, which is the same for most
records (the chat template's generation prompt) and is tokenized once. Where no such point can be relied on (a slow
tokenizer, a processor, a template that renders the prompt alone differently), the prompt is tokenized on its own, as
TRL does; the result is the same either way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase, ProcessorMixin

from .templates import CHAT_LAYOUTS
from .trl_boundary import common_prefix_length
from .trl_boundary import tokenize as trl_tokenize

# How far back from the prompt's end to look for a point where the prompt's tokens cannot depend on what follows it.
_LOOK_BACK = 64
# The start of a word this many words before the word holding the prompt's last character is such a point: only the
# last word's split can change when text follows (a pre-tokenizer's match may run on or look one character ahead).
_WORDS_BACK = 2
# Tails of prompts (usually the generation prompt) kept tokenized; the cache is emptied when it grows past this.
_TAIL_CACHE = 4096


@dataclass
class Encoded:
    """
    One example tokenized as TRL tokenizes it.

    Args:
        ids (`list[int]`): The tokens of the prompt followed by the completion.
        text (`str`, *optional*): The text those tokens encode (not for processors, which TRL tokenizes from messages).
        prompt_text (`str`, *optional*): The prompt alone as TRL tokenizes it (with the generation prompt for chats).
        encoding (*optional*): The fast tokenizer's `tokenizers.Encoding` of `text`, which maps tokens to characters.
        formatted (`Mapping`): The `{"prompt", "completion"}` example.
        template_kwargs (`Mapping`): Its `apply_chat_template` arguments.
        offsets (`list`, *optional*): Each token's character span in `text`, read from the encoding when needed.
    """

    ids: list[int]
    text: str | None
    prompt_text: str | None
    encoding: Any
    formatted: Mapping[str, Any]
    template_kwargs: Mapping[str, Any]
    offsets: list[tuple[int, int]] | None = None


class ExampleEncoder:
    """
    Tokenizes `{"prompt", "completion"}` examples of one layout as TRL's `SFTTrainer` does, in batches.

    Args:
        processing_class ([`~transformers.PreTrainedTokenizerBase`] or [`~transformers.ProcessorMixin`]):
            The tokenizer or processor.
        layout (`str`): `single_turn`, `multi_turn` (chat messages) or `plain` (text).
    """

    def __init__(self, processing_class: PreTrainedTokenizerBase | ProcessorMixin, layout: str):
        self.processing_class = processing_class
        self.chat = layout in CHAT_LAYOUTS
        # A processor may turn messages into text its own way: TRL's tokenization of messages is used as it is.
        self.by_text = not isinstance(processing_class, ProcessorMixin)
        self.tokenizer = processing_class if self.by_text else processing_class.tokenizer
        self.fast = self.by_text and bool(getattr(self.tokenizer, "is_fast", False))
        # TRL tokenizes a rendered chat without special tokens (the template wrote them) and plain text with them.
        self.add_special_tokens = not self.chat
        self._tails: dict[tuple[str | None, str], list[int] | None] = {}
        if self.fast:
            added = self.tokenizer.added_tokens_decoder
            self._added = {token_id: token.content for token_id, token in added.items()}
        eos = self.tokenizer.eos_token
        # Text a prompt's tail is tokenized after when the tail does not start at a special token: one that the
        # tokenizer always keeps whole, so that the tail is tokenized as text that follows other text.
        self._context = eos if eos and self.fast and self.tokenizer.convert_tokens_to_ids(eos) in self._added else None

    def texts(self, formatted: Mapping[str, Any], template_kwargs: Mapping[str, Any]) -> tuple[str, str]:
        """The text TRL tokenizes for the whole example, and for its prompt alone."""
        prompt, completion = formatted["prompt"], formatted["completion"]
        if self.chat:
            render = self.tokenizer.apply_chat_template
            whole = render(list(prompt) + list(completion), tokenize=False, **template_kwargs)
            alone = render(list(prompt), tokenize=False, add_generation_prompt=True, **template_kwargs)
            return whole, alone
        # TRL appends the eos token to plain-text completions that lack it.
        eos = self.tokenizer.eos_token
        if eos and not completion.endswith(eos):
            completion = completion + eos
        return prompt + completion, prompt

    def encode(
        self, examples: Sequence[Mapping[str, Any]], template_kwargs: Sequence[Mapping[str, Any]]
    ) -> list[Encoded]:
        """
        Tokenizes examples, all in one call to the tokenizer when it is fast.

        Args:
            examples (`Sequence[Mapping]`): `{"prompt", "completion"}` examples.
            template_kwargs (`Sequence[Mapping]`): Each example's `apply_chat_template` arguments.

        Returns:
            `list[Encoded]`: One per example, in order.
        """
        if not examples:
            return []
        if not self.by_text:
            return [
                Encoded(
                    list(trl_tokenize(self.processing_class, self._joined(example), **kwargs)["input_ids"]),
                    None,
                    None,
                    None,
                    example,
                    kwargs,
                )
                for example, kwargs in zip(examples, template_kwargs, strict=True)
            ]
        texts = [self.texts(example, kwargs) for example, kwargs in zip(examples, template_kwargs, strict=True)]
        batch = self.tokenizer([whole for whole, _ in texts], add_special_tokens=self.add_special_tokens)
        encodings = batch.encodings if self.fast else None
        return [
            Encoded(
                list(batch["input_ids"][i]),
                whole,
                alone,
                encodings[i] if encodings is not None else None,
                examples[i],
                template_kwargs[i],
            )
            for i, (whole, alone) in enumerate(texts)
        ]

    def completion_start(self, encoded: Encoded) -> int:
        """
        Where the completion starts in `encoded.ids`: the length of the common prefix of the prompt's tokens and the
        whole example's tokens, as TRL computes it.
        """
        start = self._start_from_encoding(encoded)
        if start is not None:
            return start
        return common_prefix_length(self.prompt_ids(encoded), encoded.ids)

    def prompt_ids(self, encoded: Encoded) -> list[int]:
        """The prompt alone, tokenized on its own as TRL tokenizes it."""
        if not self.by_text:
            prompt = encoded.formatted["prompt"]
            kwargs = dict(encoded.template_kwargs)
            if isinstance(prompt, list):
                kwargs["add_generation_prompt"] = True
            return list(trl_tokenize(self.processing_class, prompt, **kwargs)["input_ids"])
        return list(self.tokenizer(encoded.prompt_text, add_special_tokens=self.add_special_tokens)["input_ids"])

    def field_token_ends(self, encoded: Encoded, value: str) -> tuple[str, list[int]] | None:
        """
        The tokens of one context field inside the example, read from its encoding.

        Args:
            encoded ([`Encoded`]): The example, with its encoding.
            value (`str`): The field's text as given to the renderer.

        Returns:
            `tuple` or `None`: the field's text as it appears in the example (a template may strip it) and, for each of
            its tokens, where the token ends in that text. `None` when the field cannot be located unambiguously (then
            the field is tokenized on its own).
        """
        if encoded.encoding is None or not value:
            return None
        text = encoded.text
        for candidate in (value, value.strip()):
            if candidate and text.count(candidate) == 1:
                break
        else:
            return None
        start = text.find(candidate)
        end = start + len(candidate)
        first, last = encoded.encoding.char_to_token(start), encoded.encoding.char_to_token(end - 1)
        if first is None or last is None:
            return None
        if encoded.offsets is None:
            encoded.offsets = encoded.encoding.offsets
        offsets = encoded.offsets
        ends = [min(offsets[k][1], end) - start for k in range(first, last + 1)]
        return candidate, ends

    def _joined(self, example: Mapping[str, Any]) -> Any:
        prompt, completion = example["prompt"], example["completion"]
        if isinstance(prompt, list):
            return list(prompt) + list(completion)
        eos = self.tokenizer.eos_token
        return prompt + completion + (eos if eos and not completion.endswith(eos) else "")

    def _start_from_encoding(self, encoded: Encoded) -> int | None:
        # The prompt's tokens are the example's tokens up to a point where tokenization cannot depend on what follows,
        # then the tokens of the text after that point. None: no such point; the caller tokenizes the prompt.
        encoding, prompt, ids = encoded.encoding, encoded.prompt_text, encoded.ids
        if encoding is None or not prompt or not encoded.text.startswith(prompt):
            return None
        last = encoding.char_to_token(len(prompt) - 1)
        if last is None:
            return None
        last_word = encoding.token_to_word(last)
        for j in range(last, max(-1, last - _LOOK_BACK), -1):
            if ids[j] in self._added:
                # A special token is matched before anything else is split: the text after it is tokenized apart.
                span = encoding.token_to_chars(j)
                if span is None or span[1] > len(prompt):
                    return None
                tail = self._tail(self._added[ids[j]], prompt[span[1] :])
                if tail is None:
                    return None
                return j + 1 + common_prefix_length(tail, ids[j + 1 : j + 2 + len(tail)])
            word = encoding.token_to_word(j)
            if (
                word is not None
                and last_word is not None
                and word <= last_word - _WORDS_BACK
                and (j == 0 or encoding.token_to_word(j - 1) != word)
            ):
                span = encoding.token_to_chars(j)
                tail = self._tail(self._context, prompt[span[0] :]) if span is not None else None
                # Check the assumption on the first word: tokenized as the tail's start, it must give the same tokens
                # as inside the example (a tokenizer that marks the start of every text would not).
                size = encoding.word_to_tokens(word)
                size = size[1] - size[0] if size is not None else 1
                if tail is None or tail[:size] != ids[j : j + size]:
                    return None
                return j + common_prefix_length(tail, ids[j : j + 1 + len(tail)])
        return None

    def _tail(self, context: str | None, text: str) -> list[int] | None:
        # The tokens of `text` when it follows the special token `context` (or starts a text, without one).
        key = (context, text)
        if key not in self._tails:
            if len(self._tails) >= _TAIL_CACHE:
                self._tails.clear()
            ids = self.tokenizer((context or "") + text, add_special_tokens=False)["input_ids"]
            if context is not None:
                lead = self.tokenizer(context, add_special_tokens=False)["input_ids"]
                ids = ids[len(lead) :] if len(lead) == 1 and ids[:1] == lead else None
            self._tails[key] = ids
        return self._tails[key]
