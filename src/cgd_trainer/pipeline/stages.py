"""
The stages of `cgd generate` as registered objects: which backend answers each, the prompt it is sent, its budget and
stops, what it reads and the record column it writes. Everything else in the pipeline asks a [`Stage`] instead of
building setting names from the stage's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..backends import Sampling

# The methods below take the [`GenerateConfig`], which imports this module for its defaults: typed `Any` to keep the
# import one way.
_Settings = Any

ROLES = ("student", "teacher")


@dataclass(frozen=True)
class Stage:
    """
    One stage of `cgd generate`.

    Args:
        name (`str`): Its name in `--stages`, in file names (`<name>.jsonl`) and in summaries.
        role (`str`): The backend that answers it: `student` or `teacher`.
        output (`str`): The record column its answer fills.
        reads (`tuple[str, ...]`): The placeholders of its prompt template: the question and earlier stages' outputs.
        template (`str`): The [`GenerateConfig`] field with its prompt template.
        system (`str`): The field with its system instruction.
        budget (`str`), stop (`str`), stop_token_ids (`str`): The fields with its own token budget, stop strings and
            stop token ids (unset: the shared `max_new_tokens`, and the prompt's and backend's default stops).
        bare_chat (`bool`): Whether a chat model is sent the bare question (the template serving only completion
            prompts), as the student is: it must answer as it would at inference.
    """

    name: str
    role: str
    output: str
    reads: tuple[str, ...]
    template: str
    system: str
    budget: str
    stop: str
    stop_token_ids: str
    bare_chat: bool = False

    def prompt_template(self, config: _Settings) -> str:
        return getattr(config, self.template)

    def system_prompt(self, config: _Settings) -> str | None:
        return getattr(config, self.system)

    def sampling(self, config: _Settings) -> Sampling:
        """The decoding settings as configured (unset stops: the backend's and the prompt's defaults)."""
        stop = getattr(config, self.stop)
        ids = getattr(config, self.stop_token_ids)
        return Sampling(
            temperature=config.temperature,
            top_p=config.top_p,
            max_tokens=getattr(config, self.budget) or config.max_new_tokens,
            seed=config.seed,
            stop=None if stop is None else tuple(stop),
            stop_token_ids=None if ids is None else tuple(ids),
        )


def _stage(name: str, role: str, output: str, reads: tuple[str, ...], template: str, **options) -> Stage:
    return Stage(
        name,
        role,
        output,
        reads,
        template,
        system=f"{name}_system_prompt",
        budget=f"{name}_max_new_tokens",
        stop=f"{name}_stop",
        stop_token_ids=f"{name}_stop_token_ids",
        **options,
    )


# In pipeline order: each stage may read the outputs of the ones before it.
STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        _stage("probe", "student", "initial_response", ("question",), "probe_completion_template", bare_chat=True),
        _stage("critique", "teacher", "critique", ("question", "initial_response"), "critique_template"),
        _stage(
            "refine", "teacher", "refined_response", ("question", "initial_response", "critique"), "refine_template"
        ),
    )
}
STAGE_NAMES = tuple(STAGES)
# The record column each stage writes.
STAGE_OUTPUT = {stage.name: stage.output for stage in STAGES.values()}


def earlier_stages(stage: Stage) -> list[Stage]:
    """The stages that run before `stage`, in order."""
    return list(STAGES.values())[: STAGE_NAMES.index(stage.name)]
