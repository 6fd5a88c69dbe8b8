"""Configuration for Critique-Guided Distillation training."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from .templates import LAYOUTS, PLACEHOLDERS, TRUNCATION_POLICIES, check_template


@dataclass
class CGDConfig(SFTConfig):
    r"""
    Configuration for [`CGDTrainer`]. It is an [`~trl.SFTConfig`] with the fields below added; every SFT option keeps
    its meaning. A plain `SFTConfig` also works with `CGDTrainer`: the defaults below then apply.

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
            tokenizer has a chat template (or `chat_template_path` is set) and `"plain"` otherwise.
        cgd_instruction (`str`, *optional*):
            Instruction that asks the student for a refined answer. Defaults to the library's wording.
        cgd_template (`str`, *optional*):
            Text of the context for the `single_turn` and `plain` layouts, with the placeholders `{instruction}`,
            `{question}`, `{initial_response}` and `{critique}`. Defaults to the library's template.
        cgd_critique_template (`str`, *optional*):
            Text of the second user turn in the `multi_turn` layout, with the placeholders `{critique}` and
            `{instruction}`. Defaults to the library's template.
        cgd_truncation (`str`, *optional*, defaults to `"context"`):
            What to do with a record longer than `max_length`. `"context"` shortens the initial answer, then the
            critique, then the question, token-aware, and never the refined answer; records whose refined answer
            cannot fit alone are dropped. `"drop"` drops every record that does not fit. `"none"` leaves the record
            to TRL, which cuts from the end (and so cuts the refined answer). Shortened and dropped records are
            counted and logged.
        cgd_truncation_marker (`str`, *optional*, defaults to `" [...]"`):
            Text appended to a context field that was shortened, so the student can see that it was cut.
        cgd_fused_lm_head (`bool`, *optional*, defaults to `True`):
            Whether to compute the loss with TRL's fused LM head, which projects the hidden states through the LM head
            in tiles and never holds the full `(batch, length, vocabulary)` logits. `False` computes the full logits
            and lets the model compute its own cross-entropy, as `transformers.Trainer` does: faster on small models
            when memory allows (1.16x the tokens/s for 1.70x the peak memory on a Qwen2-0.5B shape on an H200, see
            docs/performance.md), and the same loss. Logged metrics are the same either way. Supports
            `loss_type="nll"` only, and no mixture-of-experts router loss.
        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            `cgd train` / `examples/train.py` only: start afresh in an `output_dir` that holds a finished run, a run
            with other arguments, or model-only checkpoints, deleting its `checkpoint-*` folders. Without it such a
            launch stops with a message; an unfinished run with the same arguments is resumed.
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
    cgd_truncation: str = field(
        default="context",
        metadata={"help": "Policy for records longer than max_length.", "choices": list(TRUNCATION_POLICIES)},
    )
    cgd_truncation_marker: str = field(
        default=" [...]", metadata={"help": "Text appended to a shortened context field."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "cgd train: start afresh in an output_dir that holds a finished run, a run with other arguments "
            "or model-only checkpoints (its checkpoint-* folders are deleted)."
        },
    )
    cgd_fused_lm_head: bool = field(
        default=True,
        metadata={
            "help": "Compute the loss with TRL's fused LM head (less memory). False: full logits and the model's own "
            "cross-entropy (faster on small models when memory allows)."
        },
    )

    def __post_init__(self):
        # transformers 5.24 renamed `gradient_checkpointing[_kwargs]` to `activation_checkpointing[_kwargs]` and warns
        # whenever the old name carries the value, which TRL's configs always do (their default is True). Where the new
        # name exists, the value moves to it, so recipes and flags keep the name every transformers 5.x understands.
        for old, new in (
            ("gradient_checkpointing", "activation_checkpointing"),
            ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"),
        ):
            if getattr(self, new, False) is None and getattr(self, old) is not None:
                setattr(self, new, getattr(self, old))
        super().__post_init__()
        if self.cgd_layout not in ("auto", *LAYOUTS):
            raise ValueError(f"`cgd_layout` must be one of {['auto', *LAYOUTS]}, got {self.cgd_layout!r}.")
        if self.cgd_truncation not in TRUNCATION_POLICIES:
            raise ValueError(
                f"`cgd_truncation` must be one of {list(TRUNCATION_POLICIES)}, got {self.cgd_truncation!r}."
            )
        check_template(self.cgd_template, "cgd_template", ("question", "initial_response", "critique"), PLACEHOLDERS)
        check_template(self.cgd_critique_template, "cgd_critique_template", ("critique",), ("critique", "instruction"))
        if not self.cgd_fused_lm_head and self.loss_type not in ("nll", "chunked_nll"):
            raise ValueError(
                f"`cgd_fused_lm_head=False` computes the model's own cross-entropy, so it supports `loss_type='nll'` "
                f"only, got {self.loss_type!r}: keep the default `cgd_fused_lm_head=True`."
            )
        fields = [self.prompt_field, self.initial_response_field, self.critique_field, self.refined_response_field]
        if len(set(fields)) != len(fields):
            raise ValueError(f"The four CGD column names must differ, got {fields}.")
