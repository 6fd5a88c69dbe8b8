"""`CritiqueCollator`: how a CGD record becomes a (context, target) pair, and an on-the-fly collator for raw rows."""

from __future__ import annotations

import logging
from collections.abc import Mapping
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
from .trl_boundary import DataCollatorForLanguageModeling, common_prefix_length
from .trl_boundary import tokenize as _tokenize

logger = logging.getLogger(__name__)

# Context fields in the order they are shortened when a record is too long: the student's own draft carries the least
# information the refined answer depends on, the question the most.
SHORTEN_ORDER = ("initial_response", "critique", "question")

# What `fit` reports for each record.
KEPT, SHORTENED, DROPPED = "kept", "shortened", "dropped"


def _tokenizer_of(processing_class: PreTrainedTokenizerBase | ProcessorMixin) -> PreTrainedTokenizerBase:
    return processing_class.tokenizer if isinstance(processing_class, ProcessorMixin) else processing_class


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
        validate_record(example, index, dataset_name, self.fields)
        parts = self.record_format.parts(example)
        return self._render(parts, example[self.refined_response_field], layout, index, dataset_name)

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
        dropped.

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
        formatted, status, _ = self._fit(example, layout, processing_class, index, dataset_name, chat_template)
        return formatted, status

    def _fit(self, example, layout, processing_class, index, dataset_name, chat_template):
        # Also returns the full token ids when they were measured, so that `tokenize` need not compute them again.
        formatted = self.format(example, layout, index, dataset_name)
        processing_class = processing_class if processing_class is not None else self.processing_class
        if self.max_length is None or self.truncation == "none":
            return formatted, KEPT, None
        if processing_class is None:
            raise ValueError("`CritiqueCollator.fit` needs a tokenizer to measure lengths when `max_length` is set.")
        template_kwargs = self._template_kwargs(example, chat_template)
        full_ids = self._full_ids(formatted, processing_class, template_kwargs)
        if len(full_ids) <= self.max_length:
            return formatted, KEPT, full_ids
        if self.truncation == "drop":
            return None, DROPPED, None

        tokenizer = _tokenizer_of(processing_class)
        refined = example[self.refined_response_field]
        parts = self.record_format.parts(example)
        # The first cut of a field also adds the marker: cutting its tokens too saves a second round of tokenization.
        marker = len(tokenizer(self.truncation_marker, add_special_tokens=False)["input_ids"])
        for key in SHORTEN_ORDER:
            ids = tokenizer(getattr(parts, key), add_special_tokens=False)["input_ids"]
            kept, extra = len(ids), marker
            while len(full_ids) > self.max_length and kept > 0:
                kept = max(0, kept - (len(full_ids) - self.max_length) - extra)
                extra = 0
                parts = replace(parts, **{key: tokenizer.decode(ids[:kept]) + self.truncation_marker})
                formatted = self._render(parts, refined, layout, index, dataset_name)
                full_ids = self._full_ids(formatted, processing_class, template_kwargs)
            if len(full_ids) <= self.max_length:
                return formatted, SHORTENED, full_ids
        return None, DROPPED, None

    def tokenize(
        self, example: Mapping[str, Any], layout: str, **fit_kwargs: Any
    ) -> tuple[dict[str, list[int]] | None, str]:
        """
        Fits a record into `max_length` (see [`~CritiqueCollator.fit`]) and tokenizes it as TRL would, with labels
        that are -100 everywhere but on the refined answer and what the template closes it with. Each record is
        tokenized once more than the prompt alone: the ids measured while fitting are reused.

        Args:
            example (`Mapping[str, Any]`): The raw record.
            layout (`str`): `single_turn`, `multi_turn` or `plain`.
            **fit_kwargs: `processing_class`, `index`, `dataset_name` and `chat_template`, as for `fit`.

        Returns:
            `tuple`: `{"input_ids", "labels"}` (or `None` when dropped) and `"kept"`, `"shortened"` or `"dropped"`.
        """
        processing_class = fit_kwargs.get("processing_class")
        processing_class = processing_class if processing_class is not None else self.processing_class
        if processing_class is None:
            raise ValueError("`CritiqueCollator` needs a `processing_class` to tokenize CGD records.")
        chat_template = fit_kwargs.get("chat_template")
        formatted, status, full_ids = self._fit(
            example,
            layout,
            processing_class,
            fit_kwargs.get("index"),
            fit_kwargs.get("dataset_name", "train"),
            chat_template,
        )
        if formatted is None:
            return None, status
        template_kwargs = self._template_kwargs(example, chat_template)
        if full_ids is None:
            full_ids = self._full_ids(formatted, processing_class, template_kwargs)
        prompt_ids = self._prompt_ids(formatted, processing_class, template_kwargs)
        # The completion starts where the prompt alone and the whole example diverge, as in TRL.
        start = common_prefix_length(prompt_ids, full_ids)
        return {"input_ids": full_ids, "labels": [-100] * start + full_ids[start:]}, status

    def token_ids(
        self,
        formatted: Mapping[str, Any],
        processing_class: PreTrainedTokenizerBase | ProcessorMixin,
        template_kwargs: Mapping[str, Any] | None = None,
    ) -> tuple[list[int], list[int]]:
        """
        Tokenizes a formatted example exactly as TRL's `SFTTrainer` does.

        Args:
            formatted (`Mapping[str, Any]`): A `{"prompt", "completion"}` example.
            processing_class: The tokenizer or processor.
            template_kwargs (`Mapping[str, Any]`, *optional*): Extra `apply_chat_template` arguments.

        Returns:
            `tuple[list[int], list[int]]`: the ids of the prompt alone and of the prompt followed by the completion.
        """
        template_kwargs = dict(template_kwargs or {})
        return (
            self._prompt_ids(formatted, processing_class, template_kwargs),
            self._full_ids(formatted, processing_class, template_kwargs),
        )

    def _prompt_ids(self, formatted, processing_class, template_kwargs) -> list[int]:
        prompt = formatted["prompt"]
        if isinstance(prompt, list):
            return list(
                _tokenize(processing_class, prompt, add_generation_prompt=True, **template_kwargs)["input_ids"]
            )
        return list(_tokenize(processing_class, prompt)["input_ids"])

    def _full_ids(self, formatted, processing_class, template_kwargs) -> list[int]:
        prompt, completion = formatted["prompt"], formatted["completion"]
        if isinstance(prompt, list):
            return list(_tokenize(processing_class, prompt + completion, **template_kwargs)["input_ids"])
        # TRL appends the eos token to plain-text completions that lack it
        eos = _tokenizer_of(processing_class).eos_token
        if eos and not completion.endswith(eos):
            completion = completion + eos
        return list(_tokenize(processing_class, prompt + completion)["input_ids"])

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
        rows = [self.encode(example, index) for index, example in enumerate(examples)]
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

    def _render(self, parts: RecordParts, refined: str, layout: str, index: int | None, dataset_name: str):
        # The context comes from the shared renderer; the target is the refined answer, as a turn or as text.
        prompt = self.record_format.render("cgd", parts, layout, index, dataset_name)
        if isinstance(prompt, str):
            return {"prompt": prompt, "completion": refined}
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": refined}]}
