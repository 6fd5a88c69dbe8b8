"""Tokenizing rendered examples exactly as TRL's dataset preparation does, with one pass over each record's text.

TRL 1.16 tokenizes a prompt-completion example twice, one example at a time: the prompt alone, then the prompt with
its completion, and the completion starts where the two token sequences diverge. For CGD records the prompt is most of
the text (question, initial answer, critique), so that doubles the work. [`ExampleEncoder`] renders each example to the
text TRL would tokenize and encodes a whole batch of texts in one call to the fast tokenizer. The completion's start
is then read from that one encoding: the prompt's tokens are the example's own tokens up to a point where tokenization
cannot depend on what follows (the end of a special token such as `<|im_start|>`, or the start of a word two words
before the prompt's end), followed by the tokens of the short text after that point, which is the same for most
records (the chat template's generation prompt) and is tokenized once. Words are the pre-tokenizer's, or, for a
tokenizer that reads each text in one piece (transformers 5's Llama and Gemma classes), those its space marks delimit
(`_SpaceMarks`). Where no such point can be relied on (a slow tokenizer, a processor, a template that renders the
prompt alone differently), the prompt is tokenized on its own, as TRL does; the result is the same either way.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
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
# `_cut_before`'s word to count back from, before it is needed.
_NOT_LOOKED_UP = object()
# Tokenizer -> its `_SpaceMarks` (or None), found once: a scan of the vocabulary.
_MARKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class Encoded:
    """
    One example tokenized as TRL tokenizes it.

    Args:
        ids (`list[int]`): The tokens of the prompt followed by the completion.
        text (`str`, *optional*): The text those tokens encode (not for processors, which TRL tokenizes from messages).
        prompt_text (`str`, *optional*): The prompt alone as TRL tokenizes it (with the generation prompt for chats);
            rendered when first needed where it is `None` and `text` is set.
        encoding (*optional*): The fast tokenizer's `tokenizers.Encoding` of `text`, which maps tokens to characters
            and words (seen through `_MarkedWords` for a tokenizer with `_SpaceMarks`).
        formatted (`Mapping`): The `{"prompt", "completion"}` example.
        template_kwargs (`Mapping`): Its `apply_chat_template` arguments.
        start (`int`, *optional*): Where the completion starts, when it is known without an encoding.
    """

    ids: list[int]
    text: str | None
    prompt_text: str | None
    encoding: Any
    formatted: Mapping[str, Any]
    template_kwargs: Mapping[str, Any]
    start: int | None = None


class _SpaceMarks:
    """
    Word boundaries for a fast tokenizer whose model reads each text in one piece, its spaces written as a mark (the
    `▁` of SentencePiece vocabularies, which transformers 5 converts this way for Llama, Mistral and Gemma), in a
    vocabulary where no token holds the mark after another character. No token can then span a point where the mark
    follows another character, so a BPE model splits there whatever the text on either side, and each side is
    tokenized as it would be alone (merges go by rank, which what lies across the point cannot change). Such points
    start the words used here; the encoding itself reports the whole text as one word. Not for unigram models: the
    best of two equally scored splits is picked by sums of floats, which the text before the point changes.

    Args:
        begins (`np.ndarray`): Per token id, whether the token starts with the mark.
        ends (`np.ndarray`): Per token id, whether the token ends with the mark.
        added (`np.ndarray`): Per token id, whether it is an added token (split off before the model runs).
    """

    def __init__(self, begins: np.ndarray, ends: np.ndarray, added: np.ndarray):
        self.begins, self.ends, self.added = begins, ends, added

    @classmethod
    def of(cls, tokenizer: Any) -> _SpaceMarks | None:
        """The marks of a fast tokenizer, or `None` when its words come from its pre-tokenizer or cannot be told."""
        size, backend = len(tokenizer), tokenizer.backend_tokenizer
        # Found again when tokens are added, or the text is split, normalized or modelled another way.
        model = backend.model
        key = (size, str(backend.normalizer), str(backend.pre_tokenizer), type(model).__name__)
        key += tuple(getattr(model, name, None) for name in ("dropout", "unk_token", "byte_fallback"))
        try:
            cached = _MARKS.get(tokenizer)
        except TypeError:  # not weakly referenceable: found every time
            cached = None
        if cached is not None and cached[0] == key:
            return cached[1]
        marks = cls._find(tokenizer, backend, size)
        try:
            _MARKS[tokenizer] = (key, marks)
        except TypeError:
            pass
        return marks

    @classmethod
    def _find(cls, tokenizer: Any, backend: Any, size: int) -> _SpaceMarks | None:
        model = backend.model
        # BPE without dropout; with an unknown token or byte fallback, since a model that drops what it does not know
        # shifts the offsets of every later token of the piece, here the whole text.
        if type(model).__name__ != "BPE" or model.dropout or (model.unk_token is None and not model.byte_fallback):
            return None
        normalizer, pre_tokenizer = backend.normalizer, backend.pre_tokenizer
        # A normalizer that changes a bare letter marks the start of every text its own way (a legacy `Prepend`).
        if normalizer is not None and normalizer.normalize_str("a") != "a":
            return None
        text = normalizer.normalize_str("a b") if normalizer is not None else "a b"
        pieces = pre_tokenizer.pre_tokenize_str(text) if pre_tokenizer is not None else [(text, (0, len(text)))]
        if len(pieces) != 1 or not pieces[0][0].endswith("b") or pieces[0][0][-3:-2] != "a":
            return None  # words split by the pre-tokenizer (the encoding's own words serve), or no mark to find
        mark = pieces[0][0][-2]
        vocab = backend.get_vocab(with_added_tokens=False)
        if mark not in vocab:
            return None  # the mark itself would fall back to bytes, or be dropped
        crossing = re.compile(f"[^{re.escape(mark)}]{re.escape(mark)}")
        if any(crossing.search(token) for token in vocab):
            return None
        length = max(size, max(vocab.values()) + 1, *(i + 1 for i in tokenizer.added_tokens_decoder))
        begins, ends, added = (np.zeros(length, dtype=bool) for _ in range(3))
        for token, token_id in vocab.items():
            begins[token_id], ends[token_id] = token.startswith(mark), token.endswith(mark)
        added[list(tokenizer.added_tokens_decoder)] = True
        return cls(begins, ends, added)


class _MarkedWords:
    """
    A `tokenizers.Encoding` whose words are those of [`_SpaceMarks`]: the same offsets, and a word starting at each
    token that begins with the mark after a token that does not end with it, and at and after each added token.
    """

    def __init__(self, encoding: Any, ids: list[int], marks: _SpaceMarks):
        self._encoding, self._ids, self._marks = encoding, ids, marks
        self._words: np.ndarray | None = None

    def _word_ids(self) -> np.ndarray:
        if self._words is None:
            ids, marks = np.asarray(self._ids, dtype=np.int64), self._marks
            starts = marks.begins[ids]
            starts[1:] &= ~marks.ends[ids[:-1]]
            starts[1:] |= marks.added[ids[:-1]]
            starts |= marks.added[ids]
            if len(starts):
                starts[0] = True
            self._words = np.cumsum(starts) - 1
        return self._words

    def token_to_word(self, token: int) -> int | None:
        return int(self._word_ids()[token]) if 0 <= token < len(self._ids) else None

    def word_to_tokens(self, word: int) -> tuple[int, int] | None:
        words = self._word_ids()
        first, end = int(np.searchsorted(words, word, "left")), int(np.searchsorted(words, word, "right"))
        return (first, end) if first < end else None

    def word_to_chars(self, word: int) -> tuple[int, int] | None:
        tokens = self.word_to_tokens(word)
        if tokens is None:
            return None
        first, last = self._encoding.token_to_chars(tokens[0]), self._encoding.token_to_chars(tokens[1] - 1)
        return (first[0], last[1]) if first is not None and last is not None else None

    def char_to_token(self, char: int) -> int | None:
        return self._encoding.char_to_token(char)

    def token_to_chars(self, token: int) -> tuple[int, int] | None:
        return self._encoding.token_to_chars(token)


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
        # The words `ends_before` and the splices count in: the pre-tokenizer's, or those of space marks where the
        # model reads each text in one piece (`_SpaceMarks`).
        self._marks = _SpaceMarks.of(self.tokenizer) if self.fast else None
        self.splits_words = self.fast and (
            self._marks is not None or self.tokenizer.backend_tokenizer.pre_tokenizer is not None
        )
        self._tails: dict[tuple[str | None, str], list[int] | None] = {}
        self._leads: dict[str, list[int]] = {}
        if self.fast:
            added = self.tokenizer.added_tokens_decoder
            self._added = {token_id: token.content for token_id, token in added.items()}
        eos = self.tokenizer.eos_token
        # Text a prompt's tail is tokenized after when the tail does not start at a special token: one that the
        # tokenizer always keeps whole, so that the tail is tokenized as text that follows other text.
        self._context = eos if eos and self.fast and self.tokenizer.convert_tokens_to_ids(eos) in self._added else None

    def texts(self, formatted: Mapping[str, Any], template_kwargs: Mapping[str, Any]) -> tuple[str, str]:
        """The text TRL tokenizes for the whole example, and for its prompt alone."""
        return self.whole_text(formatted, template_kwargs), self.prompt_text(formatted, template_kwargs)

    def whole_text(self, formatted: Mapping[str, Any], template_kwargs: Mapping[str, Any]) -> str:
        """The text TRL tokenizes for the whole example."""
        prompt, completion = formatted["prompt"], formatted["completion"]
        if self.chat:
            return self.tokenizer.apply_chat_template(
                list(prompt) + list(completion), tokenize=False, **template_kwargs
            )
        # TRL appends the eos token to plain-text completions that lack it.
        eos = self.tokenizer.eos_token
        if eos and not completion.endswith(eos):
            completion = completion + eos
        return prompt + completion

    def prompt_text(self, formatted: Mapping[str, Any], template_kwargs: Mapping[str, Any]) -> str:
        """The text TRL tokenizes for the example's prompt alone (with the generation prompt for chats)."""
        prompt = formatted["prompt"]
        if self.chat:
            return self.tokenizer.apply_chat_template(
                list(prompt), tokenize=False, add_generation_prompt=True, **template_kwargs
            )
        return prompt

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
        encoded = []
        for i, (whole, alone) in enumerate(texts):
            ids = list(batch["input_ids"][i])
            encoding = encodings[i] if encodings is not None else None
            if encoding is not None and self._marks is not None:
                encoding = _MarkedWords(encoding, ids, self._marks)
            encoded.append(Encoded(ids, whole, alone, encoding, examples[i], template_kwargs[i]))
        return encoded

    def completion_start(self, encoded: Encoded) -> int:
        """
        Where the completion starts in `encoded.ids`: the length of the common prefix of the prompt's tokens and the
        whole example's tokens, as TRL computes it.
        """
        if encoded.start is not None:
            return encoded.start
        found = self._start_from_encoding(encoded)
        if found is not None:
            return found[0]
        return common_prefix_length(self.prompt_ids(encoded), encoded.ids)

    def prompt_ids(self, encoded: Encoded) -> list[int]:
        """The prompt alone, tokenized on its own as TRL tokenizes it."""
        if not self.by_text:
            prompt = encoded.formatted["prompt"]
            kwargs = dict(encoded.template_kwargs)
            if isinstance(prompt, list):
                kwargs["add_generation_prompt"] = True
            return list(trl_tokenize(self.processing_class, prompt, **kwargs)["input_ids"])
        return list(self.tokenizer(self._prompt_of(encoded), add_special_tokens=self.add_special_tokens)["input_ids"])

    def _prompt_of(self, encoded: Encoded) -> str:
        # A shortened example's prompt is rendered only when asked for: its completion's start is known already.
        if encoded.prompt_text is None:
            encoded.prompt_text = self.prompt_text(encoded.formatted, encoded.template_kwargs)
        return encoded.prompt_text

    def field_tokens(self, encoded: Encoded, value: str) -> tuple[str, int, int, Callable[[int], int]] | None:
        """
        The tokens of one context field inside the example, read from its encoding.

        Args:
            encoded ([`Encoded`]): The example, with its encoding.
            value (`str`): The field's text as given to the renderer.

        Returns:
            `tuple` or `None`: the field's text as it appears in the example (a template may strip it), where it
            starts in the example's text, its number of tokens, and a function giving where its first `k` tokens end
            in the field's text. `None` when the field cannot be located unambiguously (then the field is tokenized
            on its own).
        """
        if encoded.encoding is None or not value:
            return None
        text = encoded.text
        for candidate in (value, value.strip()):
            start = text.find(candidate) if candidate else -1
            if start >= 0 and text.find(candidate, start + 1) < 0:
                break
        else:
            return None
        end = start + len(candidate)
        encoding = encoded.encoding
        first, last = encoding.char_to_token(start), encoding.char_to_token(end - 1)
        if first is None or last is None:
            return None

        def kept_end(kept: int) -> int:
            # Only the token a cut ends at is looked up: a field has thousands of tokens and is cut once or twice.
            return min(encoding.token_to_chars(first + kept - 1)[1], end) - start if kept else 0

        return candidate, start, last - first + 1, kept_end

    def _joined(self, example: Mapping[str, Any]) -> Any:
        prompt, completion = example["prompt"], example["completion"]
        if isinstance(prompt, list):
            return list(prompt) + list(completion)
        eos = self.tokenizer.eos_token
        return prompt + completion + (eos if eos and not completion.endswith(eos) else "")

    def _start_from_encoding(self, encoded: Encoded) -> tuple[int, int] | None:
        # The prompt's tokens are the example's tokens up to a point where tokenization cannot depend on what follows,
        # then the tokens of the text after that point. Returns the completion's start and that point's token index;
        # None: no such point, and the caller tokenizes the prompt.
        encoding, ids = encoded.encoding, encoded.ids
        if encoding is None:
            return None
        prompt = self._prompt_of(encoded)
        if not prompt or not encoded.text.startswith(prompt):
            return None
        last = encoding.char_to_token(len(prompt) - 1)
        if last is None:
            return None
        # From the token after the prompt's last one, so that a prompt ending with a special token cuts after it.
        cut = self._cut_before(encoded, last + 1, last)
        if cut is None or cut[2] > len(prompt):
            return None
        j, context, first_char, guard = cut
        tail = self._tail(context, prompt[first_char:])
        if tail is None or (guard and not self._first_word_kept(encoded, j, tail)):
            return None
        return j + common_prefix_length(tail, ids[j : j + 1 + len(tail)]), j

    def respliced(
        self, encoded: Encoded, formatted: Mapping[str, Any], replacements: Sequence[tuple[int, int, str]]
    ) -> Encoded | None:
        """
        Tokenizes an example whose text is `encoded.text` with some spans replaced (a shortened record: each cut field
        is a span), by tokenizing only a window around each span and keeping the example's other tokens.

        A window starts where tokenization cannot depend on what comes before (after a special token, or at a word two
        words before the span) and ends where it cannot depend on what comes after (at a special token, or two words
        after the span); the window's first and last words must give the tokens they had in the example. The
        completion's start moves with the windows before it; where the prompt ends inside the last window, it is read
        from the spliced tokens up to that window's start and the prompt alone's rest. Where any of this cannot be
        checked, `None` is returned and the caller tokenizes the whole text.

        Args:
            encoded ([`Encoded`]): The example before the replacements, with its encoding.
            formatted (`Mapping`): The `{"prompt", "completion"}` example after them.
            replacements (`Sequence[tuple[int, int, str]]`): `(start, end, text)` spans of `encoded.text`.

        Returns:
            [`Encoded`] or `None`.
        """
        encoding, ids, text = encoded.encoding, encoded.ids, encoded.text
        if encoding is None or not replacements:
            return None
        replacements = sorted(replacements)
        whole = self.whole_text(formatted, encoded.template_kwargs)
        pieces, last = [], 0
        for start, end, new in replacements:
            if start < last:
                return None
            pieces += [text[last:start], new]
            last = end
        if "".join(pieces) + text[last:] != whole:
            return None
        windows = []  # [first token, context, first char, guard the first word, last token, tokens checked, last char]
        for start, end, _ in replacements:
            left, right = self._stable_before(encoded, start), self._stable_after(encoded, end)
            if left is None or right is None:
                return None
            if windows and left[0] < windows[-1][4] + windows[-1][5]:
                windows[-1][4:] = right  # overlapping windows: one window over both spans
            else:
                windows.append([*left, *right])
        found = self._start_from_encoding(encoded)
        if found is None:
            return None
        new_ids, kept_from, new_first = [], 0, 0
        for first, context, first_char, guard, last, checked, last_char in windows:
            chunk = []
            position = first_char
            for start, end, new in replacements:
                if first_char <= start and end <= last_char:
                    chunk += [text[position:start], new]
                    position = end
            chunk.append(text[position:last_char])
            window_ids = self._tokens_after(context, "".join(chunk))
            if window_ids is None or window_ids[len(window_ids) - checked :] != ids[last : last + checked]:
                return None
            if guard and not self._first_word_kept(encoded, first, window_ids):
                return None
            new_ids += ids[kept_from:first]
            new_first = len(new_ids)
            new_ids += window_ids[: len(window_ids) - checked]
            kept_from = last
        new_ids += ids[kept_from:]
        spliced = Encoded(new_ids, whole, None, None, formatted, encoded.template_kwargs)
        first, context, first_char, guard, last, checked, _ = windows[-1]
        if found[1] >= last + checked:
            spliced.start = found[0] + len(new_ids) - len(ids)
            return spliced
        # The prompt ends inside the last window (a cut near the end of the prompt, as a critique is in plain text):
        # its tokens are the spliced ones up to the window's start, where tokenization cannot depend on what comes
        # before, then those of the rest of the prompt alone.
        moved = sum(len(new) - (end - start) for start, end, new in replacements if end <= first_char)
        prompt, first_char = self._prompt_of(spliced), first_char + moved
        if len(prompt) <= first_char or prompt[:first_char] != whole[:first_char]:
            return None
        tail = self._tokens_after(context, prompt[first_char:])
        if tail is None or (guard and not self._first_word_kept(encoded, first, tail)):
            return None
        spliced.start = new_first + common_prefix_length(tail, new_ids[new_first : new_first + 1 + len(tail)])
        return spliced

    def _stable_before(self, encoded: Encoded, char: int) -> tuple[int, str | None, int, bool] | None:
        # A token at or before the one holding `char` from which the text can be tokenized apart (see `_cut_before`).
        token = encoded.encoding.char_to_token(char)
        return self._cut_before(encoded, token, token) if token is not None else None

    def _cut_before(self, encoded: Encoded, token: int, word_token: int) -> tuple[int, str | None, int, bool] | None:
        # Looking back from `token`, the first token whose tokens cannot depend on the text before it: the token after
        # a special token (special tokens are matched before anything else is split), or the first token of a word at
        # least `_WORDS_BACK` words before the word of token `word_token` (only the words nearest a change can split
        # otherwise). That word is looked up only when `token` does not follow a special token, which spares
        # `_MarkedWords` its count where a template's special token ends the prompt. Returns
        # its index, the special token to tokenize after, its first character, and whether its first word must be
        # checked (`_first_word_kept`) because a tokenizer may mark the start of a text. A word of white space alone is
        # passed over: how a run of white space splits depends on what follows it (`\n\n` before a word is two words
        # in GPT-2's pattern, one before ` [...]`).
        encoding, ids, text = encoded.encoding, encoded.ids, encoded.text
        word_at = _NOT_LOOKED_UP
        for j in range(token, max(-1, token - _LOOK_BACK), -1):
            if j > 0 and ids[j - 1] in self._added:
                span = self._split_off(encoded, j - 1)
                return (j, self._added[ids[j - 1]], span[1], False) if span is not None else None
            if word_at is _NOT_LOOKED_UP:
                word_at = encoding.token_to_word(word_token)
            word = encoding.token_to_word(j) if j < len(ids) else None
            if word is None or word_at is None or word > word_at - _WORDS_BACK:
                continue
            if j == 0 or encoding.token_to_word(j - 1) != word:
                span, chars = encoding.token_to_chars(j), encoding.word_to_chars(word)
                if span is None or chars is None:
                    return None
                if not text[chars[0] : chars[1]].isspace():
                    return j, self._context, span[0], True
        return None

    def _split_off(self, encoded: Encoded, j: int) -> tuple[int, int] | None:
        # The characters of added token `j` where its text was split off before the model ran, which nothing on
        # either side can change; None where the model itself gave it (an unknown token for text it has no piece
        # for, which the text around can change) or where it has no characters (a post-processor's).
        span = encoded.encoding.token_to_chars(j)
        return span if span is not None and self._added[encoded.ids[j]] in encoded.text[span[0] : span[1]] else None

    @staticmethod
    def _first_word_kept(encoded: Encoded, j: int, tokens: list[int]) -> bool:
        # Whether `tokens`, tokenized apart from token `j` on, start with the tokens of its word in the example.
        word = encoded.encoding.token_to_word(j)
        span = encoded.encoding.word_to_tokens(word) if word is not None else None
        size = span[1] - span[0] if span is not None else 1
        return tokens[:size] == encoded.ids[j : j + size]

    def _stable_after(self, encoded: Encoded, char: int) -> tuple[int, int, int] | None:
        # A token at or after `char` from which the rest is tokenized as before: (its index, how many tokens from it
        # the window must end with, the character where the window ends).
        encoding, ids = encoded.encoding, encoded.ids
        token = encoding.char_to_token(char - 1)
        if token is None:
            return None
        word_at = encoding.token_to_word(token)
        for j in range(token + 1, min(len(ids), token + 1 + _LOOK_BACK)):
            if ids[j] in self._added:
                span = self._split_off(encoded, j)
                return (j, 1, span[1]) if span is not None else None
            word = encoding.token_to_word(j)
            if word is not None and word_at is not None and word >= word_at + _WORDS_BACK:
                if encoding.token_to_word(j - 1) != word:
                    # Check this word and the next (the window's last word may split otherwise at its end).
                    span = encoding.word_to_tokens(word + 1) or encoding.word_to_tokens(word)
                    if span is None:
                        return None
                    chars = encoding.token_to_chars(span[1] - 1)
                    return (j, span[1] - j, chars[1]) if chars is not None else None
        return None

    def ends_before(self, encoded: Encoded, end: int, limit: int) -> bool:
        """
        Whether the tokens of `encoded.text` up to character `end` stay the same whatever text follows character
        `limit`: the token ending there lies more than two words (`_WORDS_BACK`) before the word at `limit`.
        """
        encoding = encoded.encoding
        if encoding is None or end <= 0 or limit <= end:
            return False
        last, at = encoding.char_to_token(end - 1), encoding.char_to_token(limit - 1)
        if last is None or at is None:
            return False
        word, limit_word = encoding.token_to_word(last), encoding.token_to_word(at)
        return word is not None and limit_word is not None and word < limit_word - _WORDS_BACK

    def inserted_tokens(self, encoded: Encoded, end: int, text: str) -> int | None:
        """
        How many tokens `text` (a truncation marker) adds where a field of `encoded.text` is cut, the field ending at
        character `end`: the tokens of `text` followed by the example's text after `end`, up to where the example
        tokenizes as before, less the tokens of that text after the field's last token. The marker can merge with what
        follows the field (`]` with a newline, say), so it may cost a token more than on its own; with this count a
        cut usually fits at the first try. Both texts are tokenized the same way, so that what a tokenizer adds to the
        start of a text cancels out. An estimate (a merge with the kept text before the marker is not seen): the caller
        measures the result. `None` when no point where the example tokenizes as before is near, and for tokenizers
        that do not split words first (a `Prepend` normalizer marks every text's start in its own way).
        """
        encoding = encoded.encoding
        if encoding is None or end <= 0 or not self.splits_words:
            return None
        last, after = encoding.char_to_token(end - 1), self._stable_after(encoded, end)
        span = encoding.token_to_chars(last) if last is not None else None
        if span is None or after is None or span[1] >= after[2]:
            return None
        last_char = after[2]
        # Kept tokenized (`_tail`): the text after a field is mostly the template's, the same in every record.
        with_text = self._tail(self._context, text + encoded.text[end:last_char])
        without = self._tail(self._context, encoded.text[span[1] : last_char])
        return None if with_text is None or without is None else len(with_text) - len(without)

    def token_count(self, text: str) -> int:
        """The number of tokens of `text` on its own, without special tokens (kept, for texts that recur)."""
        return len(self._tail(None, text))

    def _tail(self, context: str | None, text: str) -> list[int] | None:
        # `_tokens_after`, kept for the texts that recur (a chat template's generation prompt).
        key = (context, text)
        if key not in self._tails:
            if len(self._tails) >= _TAIL_CACHE:
                self._tails.clear()
            self._tails[key] = self._tokens_after(context, text)
        return self._tails[key]

    def _tokens_after(self, context: str | None, text: str) -> list[int] | None:
        # The tokens of `text` when it follows the special token `context` (or starts a text, without one).
        ids = self.tokenizer((context or "") + text, add_special_tokens=False)["input_ids"]
        if context is None:
            return ids
        if context not in self._leads:
            self._leads[context] = self.tokenizer(context, add_special_tokens=False)["input_ids"]
        lead = self._leads[context]
        return ids[len(lead) :] if len(lead) == 1 and ids[:1] == lead else None
