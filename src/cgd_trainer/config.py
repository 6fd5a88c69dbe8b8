"""Configuration for Critique-Guided Distillation training."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from .record_format import TRUNCATION_MARKER, RecordSettings
from .templates import TRUNCATION_POLICIES


@dataclass
class CGDConfig(SFTConfig, RecordSettings):
    r"""
    Configuration for [`CGDTrainer`]. It is an [`~trl.SFTConfig`] with the fields below added; every SFT option keeps
    its meaning. A plain `SFTConfig` also works with `CGDTrainer`: the defaults below then apply.

    Args:
        prompt_field, initial_response_field, critique_field, refined_response_field (`str`):
            Columns holding the question (a string or chat messages), the student's initial answer `y'`, the
            teacher's critique `c` and the teacher's refined answer `ŷ` (the only trained tokens); by default
            `prompt`, `initial_response`, `critique` and `refined_response`.
        cgd_layout, cgd_instruction, cgd_template, cgd_critique_template:
            The layout (`auto`, `single_turn`, `multi_turn` or `plain`) and the wording of the student's context.
            These eight settings are declared once, in [`~record_format.RecordSettings`] (which describes each), and
            `cgd build` and `cgd diagnose` take them under the same names.
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

    cgd_truncation: str = field(
        default="context",
        metadata={"help": "Policy for records longer than max_length.", "choices": list(TRUNCATION_POLICIES)},
    )
    cgd_truncation_marker: str = field(
        default=TRUNCATION_MARKER, metadata={"help": "Text appended to a shortened context field."}
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
        super().__post_init__()  # TRL's checks (TrainingArguments ends the chain)
        RecordSettings.__post_init__(self)
        if self.cgd_truncation not in TRUNCATION_POLICIES:
            raise ValueError(
                f"`cgd_truncation` must be one of {list(TRUNCATION_POLICIES)}, got {self.cgd_truncation!r}."
            )
        if not self.cgd_fused_lm_head and self.loss_type not in ("nll", "chunked_nll"):
            raise ValueError(
                f"`cgd_fused_lm_head=False` computes the model's own cross-entropy, so it supports `loss_type='nll'` "
                f"only, got {self.loss_type!r}: keep the default `cgd_fused_lm_head=True`."
            )
