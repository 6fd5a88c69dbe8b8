"""`CritiqueCollator`: how a CGD record becomes a (context, target) pair, and an on-the-fly collator for raw rows."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from transformers import PreTrainedTokenizerBase, ProcessorMixin
from transformers.data.data_collator import DataCollatorMixin

from .record_format import (
    ROLES,
    TRUNCATION_MARKER,
    RecordFormat,
    RecordParts,
    RecordSettings,
    check_layout,
    check_templates,
    record_format,
    setting_values,
)
from .records import validate_record
from .templates import CHAT_LAYOUTS, TRUNCATION_POLICIES
from .tokenization import Encoded, ExampleEncoder
from .trl_boundary import DataCollatorForLanguageModeling

logger = logging.getLogger(__name__)

# Context fields in the order they are shortened when a record is too long: the student's own draft carries the least
# information the refined answer depends on, the question the most.
SHORTEN_ORDER = ("initial_response", "critique", "question")

# Records in a batch encoded whole to learn how many characters a token holds, before any record is skimmed.
_CALIBRATION = 16
# A skimmed field keeps at least this many characters at its end, and a skim leaves out at least this many.
_SKIM_TAIL = 64
_SKIM_MIN_SAVING = 1000
# The fields a skim may leave a middle out of, in `SHORTEN_ORDER`: the question is short and cut last.
_SKIMMED = SHORTEN_ORDER[:2]
# How many times max_length tokens a skim is meant to hold, at the most characters per token of the calibration.
_SKIM_ROOM = 1.05
# `_shorten`'s answer when a skim cannot tell where to cut.
_UNPLANNED = object()

# What `fit` reports for each record.
KEPT, SHORTENED, DROPPED = "kept", "shortened", "dropped"


def _tokenizer_of(processing_class: PreTrainedTokenizerBase | ProcessorMixin) -> PreTrainedTokenizerBase:
    return processing_class.tokenizer if isinstance(processing_class, ProcessorMixin) else processing_class


def _content_length(formatted: Mapping[str, Any]) -> int | None:
    # The characters of an example's text besides its template: the messages' contents, or the prompt and completion.
    prompt, completion = formatted["prompt"], formatted["completion"]
    if isinstance(prompt, str):
        return len(prompt) + len(completion)
    contents = [message.get("content") for message in [*prompt, *completion]]
    return sum(map(len, contents)) if all(isinstance(content, str) for content in contents) else None


def has_chat_template(processing_class: PreTrainedTokenizerBase | ProcessorMixin | None) -> bool:
    """Whether a tokenizer or processor carries a chat template."""
    if processing_class is None:
        return False
    return bool(
        getattr(processing_class, "chat_template", None)
        or getattr(_tokenizer_of(processing_class), "chat_template", None)
    )


@dataclass
class CritiqueCollator(DataCollatorMixin):
    r"""
    Turns CGD records `(question, initial answer, critique, refined answer)` into the student's context and target.

    The context is rendered by [`~record_format.RecordFormat`] (the one renderer, shared with `cgd build` and
    `cgd diagnose`); this class fits records into `max_length` and tokenizes them. [`CGDTrainer`] uses
    [`~CritiqueCollator.fit`] to convert records into TRL's conversational prompt-completion format before TRL
    tokenizes, truncates and packs them.
    Called as a `data_collator`, it also tokenizes raw CGD rows on the fly and returns `input_ids`, `attention_mask`
    and `labels`, where `labels` is -100 everywhere but on the refined answer and the end-of-turn token that follows
    it. Rows that are already tokenized (`input_ids`, optional `labels`) are padded as they are.

    On-the-fly use with `CGDTrainer` or `SFTTrainer` needs `dataset_kwargs={"skip_prepare_dataset": True}` and
    `remove_unused_columns=False`, and gives up what TRL 1.16 does during dataset preparation: packing, padding-free
    batches (TRL refuses a custom collator with them) and the caching of tokenized data; every epoch re-tokenizes.
    Truncation still happens here when `max_length` is set. Prefer the default path (no `data_collator`) for training.

    Args:
        processing_class ([`~transformers.PreTrainedTokenizerBase`] or [`~transformers.ProcessorMixin`], *optional*):
            Tokenizer used on the fly and for token-aware truncation. Not needed to only format records.
        layout (`str`, *optional*, defaults to `"auto"`):
            `"single_turn"`, `"multi_turn"`, `"plain"` or `"auto"` (see [`CGDConfig`]).
        instruction (`str`, *optional*):
            Instruction asking for the refined answer; defaults to the library's wording.
        template (`str`, *optional*):
            Context text for `single_turn` and `plain`, with `{instruction}`, `{question}`, `{initial_response}` and
            `{critique}` placeholders.
        critique_template (`str`, *optional*):
            Second user turn of `multi_turn`, with `{critique}` and `{instruction}` placeholders.
        prompt_field, initial_response_field, critique_field, refined_response_field (`str`):
            Column names of the four parts of a record.
        max_length (`int`, *optional*):
            Longest tokenized example; longer records are handled by `truncation`.
        truncation (`str`, *optional*, defaults to `"context"`):
            `"context"`, `"drop"` or `"none"` (see [`CGDConfig`]).
        truncation_marker (`str`, *optional*, defaults to `" [...]"`):
            Appended to a context field that was shortened.
        chat_template (`str`, *optional*):
            Chat template to render with instead of the tokenizer's own.
        pad_token_id (`int`, *optional*):
            Padding id; defaults to the tokenizer's pad token, else its eos token.
        padding_free (`bool`, *optional*, defaults to `False`):
            Flatten the batch into one row with `position_ids`, like TRL's collator.
        pad_to_multiple_of (`int`, *optional*):
            Pad each batch to a multiple of this value.
    """

    # The record's settings take their defaults from their one declaration, `RecordSettings`.
    processing_class: PreTrainedTokenizerBase | ProcessorMixin | None = None
    layout: str = RecordSettings.cgd_layout
    instruction: str | None = RecordSettings.cgd_instruction
    template: str | None = RecordSettings.cgd_template
    critique_template: str | None = RecordSettings.cgd_critique_template
    prompt_field: str = RecordSettings.prompt_field
    initial_response_field: str = RecordSettings.initial_response_field
    critique_field: str = RecordSettings.critique_field
    refined_response_field: str = RecordSettings.refined_response_field
    max_length: int | None = None
    truncation: str = "context"
    truncation_marker: str = TRUNCATION_MARKER
    chat_template: str | None = None
    pad_token_id: int | None = None
    padding_free: bool = False
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"
    _resolved_layout: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        check_layout(self.layout, "layout")
        if self.truncation not in TRUNCATION_POLICIES:
            raise ValueError(f"`truncation` must be one of {list(TRUNCATION_POLICIES)}, got {self.truncation!r}.")
        check_templates(self.template, self.critique_template)

    @classmethod
    def from_config(
        cls, args: Any, processing_class: PreTrainedTokenizerBase | None = None, **kwargs
    ) -> CritiqueCollator:
        """
        Builds a collator from a [`CGDConfig`] (or any `SFTConfig`, whose missing CGD fields take their defaults).

        Args:
            args: The training configuration.
            processing_class ([`~transformers.PreTrainedTokenizerBase`], *optional*): The tokenizer.
            **kwargs: Overrides for any other field (e.g. `padding_free`).

        Returns:
            [`CritiqueCollator`]: The collator.
        """
        record = setting_values(args)  # the declared defaults for what a plain SFTConfig lacks
        settings = {
            "layout": record["cgd_layout"],
            "instruction": record["cgd_instruction"],
            "template": record["cgd_template"],
            "critique_template": record["cgd_critique_template"],
            **{f"{role}_field": record[f"{role}_field"] for role in ROLES},
            "max_length": getattr(args, "max_length", None),
            "truncation": getattr(args, "cgd_truncation", cls.truncation),
            "truncation_marker": getattr(args, "cgd_truncation_marker", cls.truncation_marker),
            "pad_to_multiple_of": getattr(args, "pad_to_multiple_of", None),
        }
        settings.update(kwargs)
        return cls(processing_class=processing_class, **settings)

    @property
    def record_format(self) -> RecordFormat:
        """The record format this collator renders with: its columns and wording, the library's where unset."""
        return record_format(
            None,
            columns=self.fields,
            instruction=self.instruction,
            template=self.template or None,
            critique_template=self.critique_template or None,
        )

    @property
    def fields(self) -> dict[str, str]:
        """Column name of each part of a record."""
        return {
            "prompt": self.prompt_field,
            "initial_response": self.initial_response_field,
            "critique": self.critique_field,
            "refined_response": self.refined_response_field,
        }

    def is_cgd(self, column_names: list[str]) -> bool:
        """
        Whether a dataset with these columns holds raw CGD records (and not data TRL already understands).

        Data with `completion`, `messages`, `text`, `conversations` or `input_ids` columns is TRL data and passes
        through. Otherwise any of the initial-answer, critique or refined-answer columns marks the dataset as CGD, so
        that a record missing one of the others is reported instead of being trained as something else.
        """
        if {"completion", "messages", "text", "conversations", "input_ids"} & set(column_names):
            return False
        return any(
            column in column_names
            for column in (self.initial_response_field, self.critique_field, self.refined_response_field)
        )

    def resolve_layout(self, processing_class: PreTrainedTokenizerBase | ProcessorMixin | None = None) -> str:
        """
        Picks the layout: the configured one, or for `"auto"` `single_turn` with a chat template and `plain` without.

        Args:
            processing_class (*optional*): The tokenizer to inspect; defaults to the collator's.

        Returns:
            `str`: The layout.

        Raises:
            `ValueError`: when a chat layout is asked for and the tokenizer has no chat template.
        """
        processing_class = processing_class if processing_class is not None else self.processing_class
        templated = self.chat_template is not None or has_chat_template(processing_class)
        if self.layout in CHAT_LAYOUTS:
            if processing_class is not None and not templated:
                raise ValueError(
                    f"The CGD layout {self.layout!r} renders records as chat messages, but the tokenizer has no chat "
                    "template. Set `chat_template_path` in the config (a .jinja file or a model id), give the "
                    "tokenizer a `chat_template`, or use `cgd_layout='plain'` for a base model."
                )
            return self.layout
        if self.layout == "plain":
            return "plain"
        layout = "single_turn" if templated else "plain"
        if self._resolved_layout != layout:
            if layout == "plain":
                logger.warning(
                    "CGD layout: 'plain' (the tokenizer has no chat template, so records are rendered as plain text "
                    "for a base model). Set `chat_template_path` or `cgd_layout` to choose otherwise."
                )
            else:
                logger.info("CGD layout: 'single_turn' (the tokenizer has a chat template).")
            self._resolved_layout = layout
        return layout

    def format(self, example: Mapping[str, Any], layout: str, index: int | None = None, dataset_name: str = "train"):
        """
        Validates a record and renders it in a layout, without truncation.

        Args:
            example (`Mapping[str, Any]`): The raw record.
            layout (`str`): `single_turn`, `multi_turn` or `plain`.
            index (`int`, *optional*): Position of the record, for error messages.
            dataset_name (`str`, *optional*): Name of the dataset, for error messages.

        Returns:
            `dict`: `{"prompt", "completion"}`, as chat messages for the chat layouts and as strings for `plain`.
        """
        return self._format(example, layout, index, dataset_name, self.record_format)[1]

    def fit(
        self,
        example: Mapping[str, Any],
        layout: str,
        processing_class: PreTrainedTokenizerBase | ProcessorMixin | None = None,
        index: int | None = None,
        dataset_name: str = "train",
        chat_template: str | None = None,
    ) -> tuple[dict[str, Any] | None, str]:
        """
        Validates and renders a record so that it fits `max_length` without losing any of the refined answer.

        When the rendered example is too long, the initial answer is shortened first, then the critique, then the
        question (the last user message for chat prompts), each by as many tokens as needed, keeping its beginning and
        appending `truncation_marker`. When even the refined answer with an empty context does not fit, the record is
        dropped. [`~CritiqueCollator.fit_batch`] does the same for many records at once.

        Args:
            example (`Mapping[str, Any]`): The raw record.
            layout (`str`): `single_turn`, `multi_turn` or `plain`.
            processing_class (*optional*): Tokenizer used to measure lengths; defaults to the collator's.
            index (`int`, *optional*): Position of the record, for error messages.
            dataset_name (`str`, *optional*): Name of the dataset, for error messages.
            chat_template (`str`, *optional*): Template to render with instead of the tokenizer's.

        Returns:
            `tuple`: the `{"prompt", "completion"}` example (or `None` when dropped) and `"kept"`, `"shortened"` or
            `"dropped"`.
        """
        return self.fit_batch([example], layout, processing_class, [index], dataset_name, chat_template, False)[0]

    def tokenize(
        self, example: Mapping[str, Any], layout: str, **fit_kwargs: Any
    ) -> tuple[dict[str, list[int]] | None, str]:
        """
        Fits a record into `max_length` (see [`~CritiqueCollator.fit`]) and tokenizes it as TRL would, with labels
        that are -100 everywhere but on the refined answer and what the template closes it with.

        Args:
            example (`Mapping[str, Any]`): The raw record.
            layout (`str`): `single_turn`, `multi_turn` or `plain`.
            **fit_kwargs: `processing_class`, `index`, `dataset_name` and `chat_template`, as for `fit`.

        Returns:
            `tuple`: `{"input_ids", "labels"}` (or `None` when dropped) and `"kept"`, `"shortened"` or `"dropped"`.
        """
        return self.fit_batch(
            [example],
            layout,
            fit_kwargs.get("processing_class"),
            [fit_kwargs.get("index")],
            fit_kwargs.get("dataset_name", "train"),
            fit_kwargs.get("chat_template"),
        )[0]

    def fit_batch(
        self,
        examples: Sequence[Mapping[str, Any]],
        layout: str,
        processing_class: PreTrainedTokenizerBase | ProcessorMixin | None = None,
        indices: Sequence[int | None] | None = None,
        dataset_name: str = "train",
        chat_template: str | None = None,
        tokenize: bool = True,
    ) -> list[tuple[dict[str, Any] | None, str]]:
        """
        Validates, renders and fits many records, tokenizing each record's text once, all in one call to a fast
        tokenizer (see [`~tokenization.ExampleEncoder`]). Only records that had to be shortened are tokenized again,
        around their cuts where that can be relied on. A record far longer than `max_length` is encoded with the
        middle of the fields it loses left out, which gives the same cuts. The rows are exactly what TRL's own
        tokenization of the rendered examples gives.

        Args:
            examples (`Sequence[Mapping[str, Any]]`): The raw records.
            layout (`str`): `single_turn`, `multi_turn` or `plain`.
            processing_class (*optional*): The tokenizer; defaults to the collator's.
            indices (`Sequence[int]`, *optional*): Position of each record, for error messages.
            dataset_name (`str`, *optional*): Name of the dataset, for error messages.
            chat_template (`str`, *optional*): Template to render with instead of the tokenizer's.
            tokenize (`bool`, *optional*, defaults to `True`): Return `{"input_ids", "labels"}` rows; with `False`,
                the fitted `{"prompt", "completion"}` examples (as [`~CritiqueCollator.fit`]).

        Returns:
            `list[tuple]`: for each record, its row or example (`None` when dropped) and `"kept"`, `"shortened"` or
            `"dropped"`.
        """
        indices = list(indices) if indices is not None else [None] * len(examples)
        record_format = self.record_format
        rendered = [
            self._format(example, layout, index, dataset_name, record_format)
            for example, index in zip(examples, indices, strict=True)
        ]
        parts, formatted = [p for p, _ in rendered], [f for _, f in rendered]
        measure = self.max_length is not None and self.truncation != "none"
        if not tokenize and not measure:
            return [(example, KEPT) for example in formatted]
        processing_class = processing_class if processing_class is not None else self.processing_class
        if processing_class is None:
            raise ValueError(
                "`CritiqueCollator` needs a `processing_class` to tokenize CGD records and to measure them against "
                "`max_length`."
            )
        encoder = ExampleEncoder(processing_class, layout)
        template_kwargs = [self._template_kwargs(example, chat_template) for example in examples]
        skims = {}
        if measure and self.truncation == "context" and encoder.splits_words and len(examples) > _CALIBRATION:
            # Records certainly far too long are encoded with the middle of the fields to cut left out (`_skim`):
            # the cuts planned from that shorter text are the ones the whole record would get.
            encodings = encoder.encode(formatted[:_CALIBRATION], template_kwargs[:_CALIBRATION])
            chars_per_token = max(len(e.text) / max(1, len(e.ids)) for e in encodings)
            for i in range(_CALIBRATION, len(examples)):
                skim = self._skim(parts[i], formatted[i], chars_per_token)
                if skim is not None:
                    skim_parts, seams = skim
                    refined = examples[i][self.refined_response_field]
                    skims[i] = (skim_parts, seams, self._render(skim_parts, refined, layout, indices[i], dataset_name))
            to_encode = [skims[i][2] if i in skims else formatted[i] for i in range(_CALIBRATION, len(examples))]
            encodings += encoder.encode(to_encode, template_kwargs[_CALIBRATION:])
        else:
            encodings = encoder.encode(formatted, template_kwargs)
        shortened = {}
        for i, (skim_parts, seams, _) in skims.items():
            encoded = encodings[i]
            if len(encoded.ids) > self.max_length:
                shortened[i] = self._shorten(
                    examples[i], layout, indices[i], dataset_name, encoder, encoded, skim_parts, seams
                )
        # A skimmed record whose cuts could not be planned from the skim (a rare guess too short) is encoded whole.
        unplanned = [i for i in skims if shortened.get(i, _UNPLANNED) is _UNPLANNED]
        for i, encoded in zip(
            unplanned, encoder.encode([formatted[i] for i in unplanned], [template_kwargs[i] for i in unplanned])
        ):
            encodings[i] = encoded
            shortened.pop(i, None)
        results = []
        for i, (example, index, encoded, record_parts) in enumerate(
            zip(examples, indices, encodings, parts, strict=True)
        ):
            status = KEPT
            if i in shortened or (measure and len(encoded.ids) > self.max_length):
                if self.truncation == "drop":
                    results.append((None, DROPPED))
                    continue
                if i in shortened:
                    encoded = shortened[i]
                else:
                    encoded = self._shorten(example, layout, index, dataset_name, encoder, encoded, record_parts)
                if encoded is None:
                    results.append((None, DROPPED))
                    continue
                status = SHORTENED
            if not tokenize:
                results.append((encoded.formatted, status))
                continue
            # The completion starts where the prompt alone and the whole example diverge, as in TRL.
            start = encoder.completion_start(encoded)
            results.append(({"input_ids": encoded.ids, "labels": [-100] * start + encoded.ids[start:]}, status))
        return results

    def _skim(self, parts: RecordParts, formatted: Mapping[str, Any], chars_per_token: float):
        # A record whose text is far longer than `max_length` tokens even at the most characters per token seen in
        # the batch leaves out the middle of the fields that would be cut: of the initial answer, and when even that
        # answer's beginning would be cut away, of the critique too. Each skimmed field keeps its beginning and its
        # last words, so every token outside the fields is the same as in the whole record. Returns the parts with
        # the skimmed fields and, for each, where its kept beginning ends; None when there is little to leave out.
        length = _content_length(formatted)
        if length is None:
            return None
        # The skim is meant to hold a few percent more than max_length tokens.
        excess = length - int((self.max_length * _SKIM_ROOM + 32) * chars_per_token)
        if excess < max(_SKIM_MIN_SAVING, length // 10):
            return None
        seams = {}
        for key in _SKIMMED:
            value = getattr(parts, key) or ""
            tail = len(value) - _SKIM_TAIL
            # Keep what the excess leaves; with no room for any of the field, only its last words (it is cut whole).
            seam = max(0, tail - excess)
            # Both ends of the left-out middle at white space, so that the two pieces meet between words.
            while seam > 0 and not value[seam].isspace():
                seam -= 1
            while tail > seam and not value[tail].isspace():
                tail -= 1
            if tail - seam < _SKIM_MIN_SAVING:
                break
            parts = replace(parts, **{key: value[:seam] + value[tail:]})
            seams[key] = seam
            excess -= tail - seam
            if seam > 0 or excess < _SKIM_MIN_SAVING:
                break  # a later field is skimmed only where this one is cut whole
        return (parts, seams) if seams else None

    def _shorten(self, example, layout, index, dataset_name, encoder, encoded, parts, seams=None) -> Encoded | None:
        # Cuts the context fields in `SHORTEN_ORDER` until the example fits; None when even an empty context is too
        # long. Each round plans every cut the overflow needs, renders once, and tokenizes the record's text only
        # around the cuts where that can be relied on (`ExampleEncoder.respliced`, always from the whole record's
        # encoding, where each field's tokens are read too); a second round, for a token or two, is rare.
        # With `seams` the encoding and `parts` are a skim's (`_skim`): every skimmed field must be cut, and a cut
        # must end a few words before its field's seam, where the tokens are the whole record's; otherwise
        # `_UNPLANNED` is returned.
        refined = example[self.refined_response_field]
        # Cutting a field also adds the marker, whose tokens count against the room it frees: as many as it takes
        # before the text that follows the field, where known.
        marker = encoder.token_count(self.truncation_marker)
        whole_record = encoded
        fields = {}  # key -> [cut(kept) -> text, tokens kept, still whole, span in the whole record's text, marker]
        overflow = len(encoded.ids) - self.max_length
        while overflow > 0:
            changed = False
            for key in SHORTEN_ORDER:
                if overflow <= 0:
                    break
                if key not in fields:
                    value = getattr(parts, key) or ""
                    cut, count, span = self._field_cutter(encoder, whole_record, value)
                    if seams and key in seams:
                        if span is None:
                            return _UNPLANNED
                        # The seam's place in the record's text (a template may strip the field's leading space).
                        stripped = len(value) - len(value.lstrip()) if span[1] - span[0] != len(value) else 0
                        seam_char = span[0] + max(0, seams[key] - stripped)
                        # The field's last words must be words of their own, tokenized as in the whole record.
                        if not encoder.ends_before(whole_record, seam_char, span[1]):
                            return _UNPLANNED
                        cut = self._planned(encoder, whole_record, cut, span[0], seam_char)
                    cost = encoder.inserted_tokens(whole_record, span[1], self.truncation_marker) if span else None
                    fields[key] = [cut, count, True, span, marker if cost is None else cost]
                cut, kept, whole, span, cost = fields[key]
                if kept == 0:
                    continue
                added = cost if whole else 0
                # At least one token goes: a marker that merges into fewer tokens than the field's end had would
                # otherwise leave the field whole.
                left = min(kept - 1, max(0, kept - overflow - added))
                overflow -= kept - left - added
                text = cut(left)
                if text is None:
                    return _UNPLANNED
                fields[key][1:3] = [left, False]
                parts = replace(parts, **{key: text + self.truncation_marker})
                changed = True
            if not changed:
                return None
            formatted = self._render(parts, refined, layout, index, dataset_name)
            # Only the dropped end of each cut field changes (to the marker), so the windows to tokenize are small.
            replacements = [
                (span[0] + len(cut(kept)), span[1], self.truncation_marker) if span else None
                for cut, kept, whole, span, _ in fields.values()
                if not whole
            ]
            encoded = None
            if None not in replacements:
                encoded = encoder.respliced(whole_record, formatted, replacements)
            if encoded is None:
                encoded = encoder.encode([formatted], [whole_record.template_kwargs])[0]
            overflow = len(encoded.ids) - self.max_length
        if seams and any(key not in fields or fields[key][2] for key in seams):
            return _UNPLANNED  # a skimmed field that the whole record keeps whole
        return encoded

    @staticmethod
    def _planned(encoder: ExampleEncoder, encoded: Encoded, cut, start: int, seam_char: int):
        # `cut` for a skimmed field, giving None for a cut whose last token lies too near the seam to be the whole
        # record's token.
        def checked(kept: int) -> str | None:
            text = cut(kept)
            if kept == 0 or encoder.ends_before(encoded, start + len(text), seam_char):
                return text
            return None

        return checked

    @staticmethod
    def _field_cutter(encoder: ExampleEncoder, encoded: Encoded, value: str):
        # A function giving the field's text kept to its first `kept` tokens, its number of tokens, and where it lies
        # in the example's text (None when it was tokenized on its own).
        located = encoder.field_tokens(encoded, value)
        if located is not None:
            text, start, count, kept_end = located
            return (lambda kept: text[: kept_end(kept)]), count, (start, start + len(text))
        tokenizer = encoder.tokenizer
        ids = tokenizer(value, add_special_tokens=False)["input_ids"] if value else []
        return (lambda kept: tokenizer.decode(ids[:kept])), len(ids), None

    def token_ids(
        self,
        formatted: Mapping[str, Any],
        processing_class: PreTrainedTokenizerBase | ProcessorMixin,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> tuple[list[int], list[int]]:
        """
        Tokenizes a formatted example exactly as TRL's `SFTTrainer` does, the prompt on its own.

        Args:
            formatted (`Mapping[str, Any]`): A `{"prompt", "completion"}` example.
            processing_class: The tokenizer or processor.
            template_kwargs (`Mapping[str, Any]`, *optional*): Extra `apply_chat_template` arguments.

        Returns:
            `tuple[list[int], list[int]]`: the ids of the prompt alone and of the prompt followed by the completion.
        """
        layout = "single_turn" if isinstance(formatted["prompt"], list) else "plain"
        encoder = ExampleEncoder(processing_class, layout)
        encoded = encoder.encode([formatted], [dict(template_kwargs or {})])[0]
        return encoder.prompt_ids(encoded), encoded.ids

    def encode(self, example: Mapping[str, Any], index: int | None = None, dataset_name: str = "batch"):
        """
        Tokenizes one raw CGD record with its labels, for on-the-fly collation.

        Args:
            example (`Mapping[str, Any]`): A raw CGD record, or an already tokenized row (returned as is).
            index (`int`, *optional*): Position of the record, for error messages.
            dataset_name (`str`, *optional*): Name of the data, for error messages.

        Returns:
            `dict` or `None`: `{"input_ids", "labels"}` with -100 on the context, or `None` for a dropped record.
        """
        if "input_ids" in example:
            return {key: example[key] for key in ("input_ids", "labels", "seq_lengths") if key in example}
        if self.processing_class is None:
            raise ValueError("`CritiqueCollator` needs a `processing_class` to tokenize raw CGD rows.")
        row, _ = self.tokenize(
            example, self.resolve_layout(), index=index, dataset_name=dataset_name, chat_template=self.chat_template
        )
        return row

    def torch_call(self, examples: list[Mapping[str, Any]]) -> dict[str, Any]:
        # Raw records are tokenized together, in one call to the tokenizer; tokenized rows pass as they are.
        raw = [index for index, example in enumerate(examples) if "input_ids" not in example]
        waiting = set(raw)
        rows: list[dict | None] = [
            None if index in waiting else self.encode(example) for index, example in enumerate(examples)
        ]
        if raw:
            if self.processing_class is None:
                raise ValueError("`CritiqueCollator` needs a `processing_class` to tokenize raw CGD rows.")
            fitted = self.fit_batch(
                [examples[index] for index in raw], self.resolve_layout(), None, raw, "batch", self.chat_template
            )
            for index, (row, _) in zip(raw, fitted, strict=True):
                rows[index] = row
        dropped = sum(row is None for row in rows)
        rows = [row for row in rows if row is not None]
        if dropped:
            logger.warning(
                f"CritiqueCollator dropped {dropped} of {len(examples)} records in this batch: their refined answer "
                f"alone does not fit max_length={self.max_length}."
            )
        if not rows:
            raise ValueError(
                f"Every record of this batch was dropped: no refined answer fits max_length={self.max_length}. "
                "Raise `max_length` or filter the data."
            )
        pad_token_id = self.pad_token_id
        if pad_token_id is None:
            if self.processing_class is None:
                raise ValueError("`CritiqueCollator` needs a `pad_token_id` or a `processing_class`.")
            tokenizer = _tokenizer_of(self.processing_class)
            pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        padder = DataCollatorForLanguageModeling(
            pad_token_id=pad_token_id,
            padding_free=self.padding_free,
            pad_to_multiple_of=self.pad_to_multiple_of,
            return_tensors=self.return_tensors,
        )
        return padder.torch_call(rows)

    def _template_kwargs(self, example: Mapping[str, Any], chat_template: str | None = None) -> dict[str, Any]:
        # Mirrors the per-row arguments TRL passes to apply_chat_template, so lengths match what TRL tokenizes.
        kwargs = {"chat_template": chat_template if chat_template is not None else self.chat_template}
        if example.get("tools") is not None:
            kwargs["tools"] = example["tools"]
        kwargs.update(example.get("chat_template_kwargs") or {})
        return kwargs

    def _format(self, example, layout, index, dataset_name, record_format: RecordFormat):
        # `format` with the record format resolved once for a batch: the record's parts and its rendered example.
        validate_record(example, index, dataset_name, self.fields)
        parts = record_format.parts(example)
        return parts, self._render(parts, example[self.refined_response_field], layout, index, dataset_name)

    def _render(self, parts: RecordParts, refined: str, layout: str, index: int | None, dataset_name: str):
        # The context comes from the shared renderer; the target is the refined answer, as a turn or as text.
        prompt = self.record_format.render("cgd", parts, layout, index, dataset_name)
        if isinstance(prompt, str):
            return {"prompt": prompt, "completion": refined}
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": refined}]}
