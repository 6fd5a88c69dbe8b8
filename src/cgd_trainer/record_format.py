"""The CGD record: its columns, the settings that word and lay out its context, and the one renderer of that context.

A CGD record holds a question `x`, a student's initial answer `y'`, a teacher's critique `c` and the teacher's refined
answer `ŷ`, each in a column. Every context the project builds from a record is rendered here, by
[`RecordFormat.render`], and nowhere else:

- `cgd` (instruction, question, initial answer, critique): training (`CritiqueCollator`); `cgd build`'s `cgd` and
  ratio subsets, and with another critique its `irrelevant_critique` and `generic_critique`; `cgd diagnose`'s
  `question+initial+critique`;
- `no_critique` (instruction, question, initial answer): `cgd build`'s `no_critique`; `cgd diagnose`'s
  `question+initial`;
- `question` (instruction, question): `cgd diagnose`'s `question`;
- `question_alone` (the question as it is): `cgd build`'s `sft` and `distilled_sft`; the paper's inference;
- `cft` (CFT's instruction, question, student's answer): `cgd build`'s `cft`.

Each kind is rendered in a layout: `single_turn` (the prompt's earlier messages, then one user turn), `multi_turn`
(the question, the initial answer as the model's own turn, then a user turn with the critique and the instruction, or
for `no_critique` a request to do better; the kinds without an initial answer to follow up, and `cft`, stay one user
turn) or `plain` (text for a base model: the system messages, the context and `### Improved answer`).

The settings are declared once, in [`RecordSettings`] (the columns, the layout and the CGD wording) and
[`AblationSettings`] (with the wording of the context without a critique): `CGDConfig`, `cgd build`'s `BuildConfig`
and `cgd diagnose`'s `DiagnoseConfig` inherit them, so that the same flags or YAML keys mean the same thing to the
three commands. The default texts (instructions, section headings, templates) are declared in `templates` with the rest
of the library's wording; this module is the only one that fills them in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .records import record_error
from .templates import (
    CFT_INSTRUCTION,
    CFT_TEMPLATE,
    DEFAULT_CRITIQUE_TEMPLATE,
    DEFAULT_INSTRUCTION,
    DEFAULT_TEMPLATE,
    LAYOUTS,
    NO_CRITIQUE_FOLLOW_UP,
    NO_CRITIQUE_INSTRUCTION,
    NO_CRITIQUE_TEMPLATE,
    PLACEHOLDERS,
    PLAIN_ANSWER_HEADER,
    QUESTION_INSTRUCTION,
    QUESTION_TEMPLATE,
    SECTIONS_TEMPLATE,
    check_template,
    fill,
)

# The parts of a record, each read from the column its `<role>_field` setting names.
ROLES = ("prompt", "initial_response", "critique", "refined_response")
CONTEXT_KINDS = ("cgd", "no_critique", "question", "question_alone", "cft")
# Appended to a context field that was shortened to fit `max_length`, so that the student can see it was cut.
TRUNCATION_MARKER = " [...]"


def check_layout(layout: str, name: str) -> None:
    """Refuses a layout setting (`auto` or one of `LAYOUTS`) that does not exist, naming the setting."""
    if layout not in ("auto", *LAYOUTS):
        raise ValueError(f"`{name}` must be one of {['auto', *LAYOUTS]}, got {layout!r}.")


def check_templates(template: str | None, critique_template: str | None, prefix: str = "") -> None:
    """
    Checks a custom CGD context template and multi-turn critique turn (`None` is the library's, always valid).

    Args:
        template (`str`, *optional*): Needs `{question}`, `{initial_response}` and `{critique}`; may use
            `{instruction}`.
        critique_template (`str`, *optional*): Needs `{critique}`; may use `{instruction}`.
        prefix (`str`): Prefix of the setting names in messages (`cgd_` for the configurations).

    Raises:
        `ValueError`: naming the setting and the missing or unavailable placeholders.
    """
    check_template(template, f"{prefix}template", ("question", "initial_response", "critique"), PLACEHOLDERS)
    check_template(critique_template, f"{prefix}critique_template", ("critique",), ("critique", "instruction"))


# Keyword-only: a configuration that inherits these keeps its own positional order (`CGDConfig("out")` is still the
# `output_dir` of TRL's `SFTConfig`).
@dataclass(kw_only=True)
class RecordSettings:
    r"""
    The columns of a CGD record and how its context is laid out and worded: declared once for `CGDConfig`, `cgd build`
    and `cgd diagnose`, which inherit these fields (same name, default and help everywhere).

    Args:
        prompt_field (`str`, *optional*, defaults to `"prompt"`):
            Column holding the question: a string, or a list of chat messages (e.g. a system turn and the user turn).
        initial_response_field (`str`, *optional*, defaults to `"initial_response"`):
            Column holding the student's initial answer `y'`.
        critique_field (`str`, *optional*, defaults to `"critique"`):
            Column holding the teacher's critique `c`.
        refined_response_field (`str`, *optional*, defaults to `"refined_response"`):
            Column holding the teacher's refined answer `ŷ`, the only trained tokens.
        cgd_layout (`str`, *optional*, defaults to `"auto"`):
            How a record is laid out for the student: `"single_turn"` (one user turn with the instruction and the
            labelled question / initial answer / critique sections, as in the paper), `"multi_turn"` (the question,
            the initial answer as an assistant turn, then the critique and the instruction as a second user turn) or
            `"plain"` (plain text, for base models without a chat template). `"auto"` picks `"single_turn"` when the
            tokenizer has a chat template (or `chat_template_path` is set) and `"plain"` otherwise. `cgd build`
            writes chat rows: `"multi_turn"` lays them out in turns, any other value as one user turn.
        cgd_instruction (`str`, *optional*):
            Instruction that asks the student for a refined answer. Defaults to the library's wording.
        cgd_template (`str`, *optional*):
            Text of the context for the `single_turn` and `plain` layouts, with the placeholders `{instruction}`,
            `{question}`, `{initial_response}` and `{critique}`. Defaults to the library's template.
        cgd_critique_template (`str`, *optional*):
            Text of the second user turn in the `multi_turn` layout, with the placeholders `{critique}` and
            `{instruction}`. Defaults to the library's template.
    """

    prompt_field: str = field(default="prompt", metadata={"help": "Column holding the question."})
    initial_response_field: str = field(
        default="initial_response", metadata={"help": "Column holding the student's initial answer."}
    )
    critique_field: str = field(default="critique", metadata={"help": "Column holding the teacher's critique."})
    refined_response_field: str = field(
        default="refined_response", metadata={"help": "Column holding the teacher's refined answer (trained)."}
    )
    cgd_layout: str = field(
        default="auto",
        metadata={"help": "Layout of a CGD record for the student.", "choices": ["auto", *LAYOUTS]},
    )
    cgd_instruction: str | None = field(
        default=None, metadata={"help": "Instruction asking for a refined answer (default: the library's wording)."}
    )
    cgd_template: str | None = field(
        default=None,
        metadata={
            "help": "Context text for the single_turn and plain layouts, with {instruction}, {question}, "
            "{initial_response} and {critique} placeholders."
        },
    )
    cgd_critique_template: str | None = field(
        default=None,
        metadata={
            "help": "Second user turn of the multi_turn layout, with {critique} and {instruction} placeholders."
        },
    )

    def __post_init__(self) -> None:
        check_layout(self.cgd_layout, "cgd_layout")
        check_templates(self.cgd_template, self.cgd_critique_template, prefix="cgd_")
        columns = list(record_columns(self).values())
        if len(set(columns)) != len(columns):
            raise ValueError(f"The four CGD column names must differ, got {columns}.")


@dataclass(kw_only=True)
class AblationSettings(RecordSettings):
    """
    [`RecordSettings`] and the wording of the context without a critique, which `cgd build` trains as its `no_critique`
    condition and `cgd diagnose` scores as `question+initial`.

    Args:
        no_critique_instruction (`str`, *optional*):
            Instruction of the context without a critique; defaults to the library's wording.
    """

    no_critique_instruction: str = field(
        default=NO_CRITIQUE_INSTRUCTION,
        metadata={"help": "Instruction of the context without a critique (cgd build's no_critique condition)."},
    )


def setting_values(settings: Any = None) -> dict[str, Any]:
    """
    The record settings of any configuration: its own values, and the declared default of each setting it lacks (so a
    plain `SFTConfig`, or `None`, gives the library's format).

    Returns:
        `dict`: Every field of [`AblationSettings`] by name.
    """
    return {f.name: getattr(settings, f.name, f.default) for f in dataclasses.fields(AblationSettings)}


def record_columns(settings: Any = None) -> dict[str, str]:
    """The column of each part of a record (keys `ROLES`), as a configuration sets them."""
    values = setting_values(settings)
    return {role: values[f"{role}_field"] for role in ROLES}


def split_prompt(prompt: str | list[Mapping[str, Any]]) -> tuple[tuple[dict[str, str], ...], str]:
    """
    A prompt's earlier messages and its question: a string is the question; of chat messages, the last is.

    Returns:
        `tuple`: The messages before the question (`{role, content}` only) and the question's text.
    """
    if isinstance(prompt, list):
        history = tuple({"role": m["role"], "content": m["content"]} for m in prompt[:-1])
        return history, prompt[-1]["content"]
    return (), prompt


@dataclass(frozen=True)
class RecordParts:
    """
    What a context is rendered from: the question (with the messages before it) and, when the kind uses them, the
    initial answer and the critique. Truncation replaces a part with a shortened copy (`dataclasses.replace`).
    """

    question: str
    initial_response: str | None = None
    critique: str | None = None
    history: tuple[dict[str, str], ...] = ()

    @classmethod
    def of(
        cls, prompt: str | list[Mapping[str, Any]], initial_response: str | None = None, critique: str | None = None
    ) -> RecordParts:
        """The parts of a record whose prompt is a string or chat messages ending with the question."""
        history, question = split_prompt(prompt)
        return cls(question, initial_response, critique, history)


@dataclass(frozen=True)
class RecordFormat:
    """
    A record format with its settings resolved: the column of each part and the text of each instruction and
    template. [`record_format`] builds it from a configuration, `CritiqueCollator` from its own fields.

    Args:
        columns (`Mapping[str, str]`): The column of each of `ROLES`.
        instruction, template, critique_template (`str`): The CGD context's wording.
        no_critique_instruction (`str`): The instruction of the context without a critique.
        cft_instruction (`str`): The instruction of CFT's context (`cgd build`'s `cft`).
    """

    columns: Mapping[str, str] = field(default_factory=record_columns)
    instruction: str = DEFAULT_INSTRUCTION
    template: str = DEFAULT_TEMPLATE
    critique_template: str = DEFAULT_CRITIQUE_TEMPLATE
    no_critique_instruction: str = NO_CRITIQUE_INSTRUCTION
    cft_instruction: str = CFT_INSTRUCTION

    def parts(self, example: Mapping[str, Any]) -> RecordParts:
        """The parts of a record read from this format's columns."""
        return RecordParts.of(
            example[self.columns["prompt"]],
            example[self.columns["initial_response"]],
            example[self.columns["critique"]],
        )

    def text(self, kind: str, parts: RecordParts) -> str:
        """The one-turn text of a context kind (for `plain`, before the system messages and the answer header)."""
        if kind == "cgd":
            return fill(
                self.template,
                instruction=self.instruction,
                question=parts.question,
                initial_response=parts.initial_response,
                critique=parts.critique,
            )
        if kind in ("no_critique", "cft"):
            instruction = self.no_critique_instruction if kind == "no_critique" else self.cft_instruction
            template = NO_CRITIQUE_TEMPLATE if kind == "no_critique" else CFT_TEMPLATE
            return fill(
                template, instruction=instruction, question=parts.question, initial_response=parts.initial_response
            )
        if kind == "question":
            return fill(QUESTION_TEMPLATE, instruction=QUESTION_INSTRUCTION, question=parts.question)
        if kind == "question_alone":
            return parts.question
        raise ValueError(f"Unknown context kind {kind!r}; expected one of {CONTEXT_KINDS}.")

    def follow_up(self, kind: str, parts: RecordParts) -> str | None:
        """The last user turn of `multi_turn`, after the initial answer; `None` for kinds that stay one turn."""
        if kind == "cgd":
            return fill(self.critique_template, critique=parts.critique, instruction=self.instruction)
        if kind == "no_critique":
            # The default follow-up speaks to the student ("your attempt"); a configured instruction is used as given.
            custom = self.no_critique_instruction != NO_CRITIQUE_INSTRUCTION
            return self.no_critique_instruction if custom else NO_CRITIQUE_FOLLOW_UP
        return None

    def render(
        self,
        kind: str,
        parts: RecordParts,
        layout: str = "single_turn",
        index: int | None = None,
        dataset_name: str = "train",
    ) -> list[dict[str, str]] | str:
        """
        Renders one context: what the model reads before the answer.

        Args:
            kind (`str`): One of `CONTEXT_KINDS`.
            parts ([`RecordParts`]): The record's parts.
            layout (`str`, *optional*, defaults to `"single_turn"`): `single_turn`, `multi_turn` or `plain`.
            index (`int`, *optional*): Position of the record, for error messages.
            dataset_name (`str`, *optional*): Name of the data, for error messages.

        Returns:
            `list[dict]` or `str`: Chat messages for the chat layouts, text for `plain`.

        Raises:
            `ValueError`: for an unknown kind or layout, a `plain` prompt with turns other than system messages, or
                `cft` in `plain` (its answer is a critique, not an improved answer).
        """
        history = list(parts.history)
        if layout == "multi_turn":
            follow_up = self.follow_up(kind, parts)
            if follow_up is not None:
                return history + [
                    {"role": "user", "content": parts.question},
                    {"role": "assistant", "content": parts.initial_response},
                    {"role": "user", "content": follow_up},
                ]
        context = self.text(kind, parts)
        if layout in ("single_turn", "multi_turn"):
            return history + [{"role": "user", "content": context}]
        if layout != "plain":
            raise ValueError(f"Unknown CGD layout {layout!r}; expected one of {LAYOUTS}.")
        if kind == "cft":
            raise ValueError("The `cft` context has no `plain` layout: its answer is a critique.")
        if any(message["role"] != "system" for message in history):
            raise record_error(
                index,
                dataset_name,
                self.columns["prompt"],
                "the plain layout accepts only system messages before the question, got a multi-turn conversation",
                "Use a chat layout (set a chat template) or give the prompt as a string.",
            )
        system = "".join(message["content"] + "\n\n" for message in history)
        return system + context + PLAIN_ANSWER_HEADER

    def sections(self, parts: RecordParts) -> str:
        """The labelled question / initial answer / critique sections, without the instruction (Alpaca's `input`)."""
        return fill(
            SECTIONS_TEMPLATE,
            question=parts.question,
            initial_response=parts.initial_response,
            critique=parts.critique,
        )


def record_format(settings: Any = None, **overrides: Any) -> RecordFormat:
    """
    The record format a configuration sets (`CGDConfig`, `BuildConfig`, `DiagnoseConfig`, a plain `SFTConfig` or
    `None`): a setting it lacks, or leaves to the library (`None`), takes the library's default.

    Args:
        settings (*optional*): The configuration.
        **overrides: [`RecordFormat`] fields to set instead.

    Returns:
        [`RecordFormat`]
    """
    values = setting_values(settings)
    resolved = {
        "columns": record_columns(settings),
        "instruction": values["cgd_instruction"],
        "template": values["cgd_template"],
        "critique_template": values["cgd_critique_template"],
        "no_critique_instruction": values["no_critique_instruction"],
        "cft_instruction": getattr(settings, "cft_instruction", None),
    }
    resolved.update(overrides)
    return RecordFormat(**{name: value for name, value in resolved.items() if value is not None})
