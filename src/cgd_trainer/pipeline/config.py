"""Settings of `cgd generate`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..backends import BACKENDS, PROMPT_FORMATS, BackendSettings, Sampling
from ..templates import (
    CRITIQUE_SYSTEM,
    CRITIQUE_TEMPLATE,
    PROBE_COMPLETION_TEMPLATE,
    REFINE_SYSTEM,
    REFINE_TEMPLATE,
    check_template,
    template_id,
)
from .stages import ROLES, STAGE_NAMES, STAGES


@dataclass
class GenerateConfig(BackendSettings):
    r"""
    Settings of `cgd generate`. Every field can come from a YAML file (`--config`) and be overridden by a flag.

    API keys are never settings: the backends read them from the environment variables named by `*_api_key_env`.
    The backends' shared settings (`batch_size`, `request_timeout`, `vllm_kwargs`, ...) come from [`BackendSettings`],
    the same fields with the same defaults as in `cgd eval`.
    """

    dataset_name: str = field(
        default="builtin:demo",
        metadata={"help": "Questions: a hub dataset id, a local JSON/JSONL/Parquet/CSV file, or `builtin:demo`."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_split: str = field(default="train", metadata={"help": "Split to read."})
    question_field: str = field(default="prompt", metadata={"help": "Column holding the question."})
    reference_field: str | None = field(
        default=None, metadata={"help": "Column holding the reference answer, copied to `reference_answer`."}
    )
    id_field: str | None = field(
        default=None,
        metadata={"help": "Column holding a unique record id. Default: a hash of the question (stable across runs)."},
    )
    initial_response_field: str | None = field(
        default=None,
        metadata={"help": "Column with existing student answers; those records skip the probe stage."},
    )
    critique_field: str | None = field(
        default=None, metadata={"help": "Column with existing critiques; those records skip the critique stage."}
    )
    max_records: int | None = field(
        default=None, metadata={"help": "Use only N questions: the first N, or N drawn at random with `shuffle`."}
    )
    shuffle: bool = field(
        default=False, metadata={"help": "Shuffle the questions (seeded by `data_seed`) before taking `max_records`."}
    )
    data_seed: int = field(default=0, metadata={"help": "Seed of `shuffle`."})
    streaming: bool = field(
        default=False,
        metadata={"help": "Read the dataset as a stream (no full download first); `shuffle` then uses a buffer."},
    )
    shuffle_buffer: int = field(
        default=10000, metadata={"help": "With `streaming` and `shuffle`: rows in the shuffle buffer."}
    )
    shard: str | None = field(
        default=None,
        metadata={"help": "`i/n`: run only the i-th of n shards of the questions (0-based), e.g. one per machine."},
    )
    merge: list[str] | None = field(
        default=None,
        metadata={
            "help": "Output folders of shard runs: merge their stage files into `output_dir` and write the records "
            "of the whole input (no generation)."
        },
    )
    allow_partial_merge: bool = field(
        default=False,
        metadata={
            "help": "With `merge`: merge the shards given although some of the split are missing (their questions "
            "count as incomplete, exit 3). Without it a missing shard is refused."
        },
    )
    output_dir: str = field(default="cgd-data", metadata={"help": "Where stage files, failures and records go."})
    stages: list[str] = field(
        default_factory=lambda: list(STAGE_NAMES),
        metadata={"help": "Stages to run, in order: probe, critique, refine."},
    )

    student_backend: str = field(default="transformers", metadata={"help": f"Probe backend: one of {BACKENDS}."})
    student_model: str | None = field(default=None, metadata={"help": "Student model id, folder or served name."})
    student_base_url: str | None = field(default=None, metadata={"help": "`openai` backend: the student's URL."})
    student_api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "Environment variable with the student endpoint's API key."}
    )
    student_prompt_format: str = field(
        default="auto",
        metadata={"help": f"{PROMPT_FORMATS}: `auto` uses the chat template when there is one (base models: not)."},
    )
    teacher_backend: str = field(default="openai", metadata={"help": f"Critique/refine backend: one of {BACKENDS}."})
    teacher_model: str | None = field(default=None, metadata={"help": "Teacher model id, folder or served name."})
    teacher_base_url: str | None = field(default=None, metadata={"help": "`openai` backend: the teacher's URL."})
    teacher_api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "Environment variable with the teacher endpoint's API key."}
    )
    teacher_prompt_format: str = field(default="auto", metadata={"help": f"{PROMPT_FORMATS} for the teacher."})
    student_max_context: int | None = field(
        default=None,
        metadata={
            "help": "The student's context length (prompt + answer). Default: the model config's, or the server's "
            "(vLLM's `/v1/models`, or its 400 reply)."
        },
    )
    teacher_max_context: int | None = field(
        default=None, metadata={"help": "The teacher's context length; defaults as for `student_max_context`."}
    )

    temperature: float = field(default=0.0, metadata={"help": "0 = greedy, the paper's setting for every stage."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (sampling only)."})
    max_new_tokens: int = field(
        default=16384,
        metadata={
            "help": "Largest answer length of every stage (the paper: 16k); shrunk to fit the model's context when "
            "the prompt is long."
        },
    )
    probe_max_new_tokens: int | None = field(default=None, metadata={"help": "Probe stage: overrides max_new_tokens."})
    critique_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Critique stage: overrides max_new_tokens."}
    )
    refine_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Refine stage: overrides max_new_tokens."}
    )
    probe_stop: list[str] | None = field(
        default=None,
        metadata={
            "help": "Probe stage: strings that end the answer. Default: none for chat prompts; for completion prompts "
            "a new line starting like the template (`\\nQuestion:`). `[]`: none."
        },
    )
    critique_stop: list[str] | None = field(
        default=None,
        metadata={"help": "Critique stage: stop strings. Default: none (chat); `\\n### Question` (completion)."},
    )
    refine_stop: list[str] | None = field(
        default=None,
        metadata={"help": "Refine stage: stop strings. Default: none (chat); `\\n### Question` (completion)."},
    )
    probe_stop_token_ids: list[int] | None = field(
        default=None,
        metadata={
            "help": "Probe stage: token ids that end the answer. Default (local backends): the chat template's "
            "end-of-turn token, the tokenizer's eos and generation_config's eos ids; servers: their own."
        },
    )
    critique_stop_token_ids: list[int] | None = field(
        default=None, metadata={"help": "Critique stage: stop token ids (defaults as for the probe stage)."}
    )
    refine_stop_token_ids: list[int] | None = field(
        default=None, metadata={"help": "Refine stage: stop token ids (defaults as for the probe stage)."}
    )
    seed: int | None = field(default=None, metadata={"help": "Sampling seed, where the backend supports one."})

    probe_system_prompt: str | None = field(
        default=None, metadata={"help": "System message for the student (the paper uses none)."}
    )
    probe_completion_template: str = field(
        default=PROBE_COMPLETION_TEMPLATE, metadata={"help": "Student prompt without a chat template; {question}."}
    )
    critique_system_prompt: str = field(default=CRITIQUE_SYSTEM, metadata={"help": "Teacher's critique instruction."})
    critique_template: str = field(
        default=CRITIQUE_TEMPLATE, metadata={"help": "Critique request; {question}, {initial_response}."}
    )
    refine_system_prompt: str = field(default=REFINE_SYSTEM, metadata={"help": "Teacher's refine instruction."})
    refine_template: str = field(
        default=REFINE_TEMPLATE, metadata={"help": "Refine request; {question}, {initial_response}, {critique}."}
    )
    strip_thinking: bool = field(default=True, metadata={"help": "Remove reasoning models' thinking sections."})
    thinking_open_tag: str = field(default="<think>", metadata={"help": "Start of a thinking section."})
    thinking_close_tag: str = field(default="</think>", metadata={"help": "End of a thinking section."})

    def __post_init__(self) -> None:
        super().__post_init__()
        # `--stages probe critique` and `--stages probe,critique` both work.
        stages = [self.stages] if isinstance(self.stages, str) else self.stages
        self.stages = [s.strip() for entry in stages for s in entry.split(",") if s.strip()]
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown or not self.stages:
            raise ValueError(f"`stages` must be a non-empty list from {STAGE_NAMES}, got {self.stages}.")
        self.stages = [s for s in STAGE_NAMES if s in self.stages]  # always in pipeline order
        for role in ROLES:
            if getattr(self, f"{role}_backend") not in BACKENDS:
                raise ValueError(
                    f"`{role}_backend` must be one of {BACKENDS}, got {getattr(self, f'{role}_backend')!r}."
                )
            if getattr(self, f"{role}_prompt_format") not in PROMPT_FORMATS:
                raise ValueError(f"`{role}_prompt_format` must be one of {PROMPT_FORMATS}.")
        for stage in STAGES.values():
            check_template(stage.prompt_template(self), stage.template, required=stage.reads)
        for name in ("max_new_tokens", *(stage.budget for stage in STAGES.values())):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1, got {getattr(self, name)}.")
        for role in ROLES:
            value = getattr(self, f"{role}_max_context")
            if value is not None and value < 2:
                raise ValueError(f"`{role}_max_context` must be at least 2, got {value}.")
            if value is not None and getattr(self, f"{role}_backend") == "vllm":
                raise ValueError(f"`{role}_max_context`: the vllm backend takes its context from `max_model_len`.")
        self.shard_index, self.shard_count = parse_shard(self.shard)
        if self.merge is not None:
            self.merge = [self.merge] if isinstance(self.merge, str) else list(self.merge)
            if self.shard is not None or not self.merge:
                raise ValueError("`merge` takes the output folders of the shard runs, and no `shard`.")
        elif self.allow_partial_merge:
            raise ValueError("`allow_partial_merge` applies to a `merge` only; give the shard folders with `--merge`.")
        if self.shuffle_buffer < 1:
            raise ValueError(f"`shuffle_buffer` must be at least 1, got {self.shuffle_buffer}.")

    def sampling(self, stage: str) -> Sampling:
        """The decoding settings of one stage as configured (unset stops: the backend's and the prompt's defaults)."""
        return STAGES[stage].sampling(self)

    def template_ids(self) -> dict[str, str]:
        """A hash of each stage's prompt wording (the probe's chat form is the bare question, marked `<chat>`)."""
        return {
            stage.name: template_id(
                stage.system_prompt(self), *(("<chat>",) if stage.bare_chat else ()), stage.prompt_template(self)
            )
            for stage in STAGES.values()
        }

    def role_options(self, role: str) -> dict[str, Any]:
        """The keyword arguments of the `student` or `teacher` backend's class."""
        return self.backend_options(
            getattr(self, f"{role}_backend"),
            base_url=getattr(self, f"{role}_base_url"),
            api_key_env=getattr(self, f"{role}_api_key_env"),
            prompt_format=getattr(self, f"{role}_prompt_format"),
            max_context=getattr(self, f"{role}_max_context"),
        )


def parse_shard(shard: str | None) -> tuple[int, int]:
    """`"i/n"` -> `(i, n)`, checked; `None` -> `(0, 1)`."""
    if shard is None:
        return 0, 1
    index, _, count = str(shard).partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"`shard` must be `i/n` with 0 <= i < n (e.g. `0/4`), got {shard!r}.")
    return i, n
