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
    STAGE_FIELDS,
    STAGES,
    check_template,
    template_id,
)


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
    max_records: int | None = field(default=None, metadata={"help": "Use only the first N questions."})
    output_dir: str = field(default="cgd-data", metadata={"help": "Where stage files, failures and records go."})
    stages: list[str] = field(
        default_factory=lambda: list(STAGES), metadata={"help": "Stages to run, in order: probe, critique, refine."}
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

    temperature: float = field(default=0.0, metadata={"help": "0 = greedy, the paper's setting for every stage."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (sampling only)."})
    max_new_tokens: int = field(default=16384, metadata={"help": "Largest answer length (the paper: 16k)."})
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
            raise ValueError(f"`stages` must be a non-empty list from {STAGES}, got {self.stages}.")
        self.stages = [s for s in STAGES if s in self.stages]  # always in pipeline order
        for role in ("student", "teacher"):
            if getattr(self, f"{role}_backend") not in BACKENDS:
                raise ValueError(
                    f"`{role}_backend` must be one of {BACKENDS}, got {getattr(self, f'{role}_backend')!r}."
                )
            if getattr(self, f"{role}_prompt_format") not in PROMPT_FORMATS:
                raise ValueError(f"`{role}_prompt_format` must be one of {PROMPT_FORMATS}.")
        for stage, name in (
            ("probe", "probe_completion_template"),
            ("critique", "critique_template"),
            ("refine", "refine_template"),
        ):
            check_template(getattr(self, name), name, required=STAGE_FIELDS[stage])
        if self.max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be at least 1, got {self.max_new_tokens}.")

    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_new_tokens, seed=self.seed)

    def template_ids(self) -> dict[str, str]:
        return {
            "probe": template_id(self.probe_system_prompt, "<chat>", self.probe_completion_template),
            "critique": template_id(self.critique_system_prompt, self.critique_template),
            "refine": template_id(self.refine_system_prompt, self.refine_template),
        }

    def role_options(self, role: str) -> dict[str, Any]:
        """The keyword arguments of the `student` or `teacher` backend's class."""
        return self.backend_options(
            getattr(self, f"{role}_backend"),
            base_url=getattr(self, f"{role}_base_url"),
            api_key_env=getattr(self, f"{role}_api_key_env"),
            prompt_format=getattr(self, f"{role}_prompt_format"),
        )
