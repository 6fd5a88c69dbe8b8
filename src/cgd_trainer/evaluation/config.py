"""The settings of `cgd eval` ([`EvalConfig`]), the models it evaluates ([`ModelSpec`]) and their backends' options."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..backends import PROMPT_FORMATS, BackendSettings, Sampling, check_overrides
from ..templates import EVAL_COMPLETION_TEMPLATE, EVAL_SYSTEM_PROMPT, check_template
from .protocols import PROTOCOLS, Protocol, get_protocol, new_problem_stops

logger = logging.getLogger(__name__)

# The names these prompts had before the wording moved to `cgd_trainer.templates` (used in docs and scripts).
DEFAULT_SYSTEM_PROMPT = EVAL_SYSTEM_PROMPT
DEFAULT_COMPLETION_TEMPLATE = EVAL_COMPLETION_TEMPLATE

# The backends `cgd eval` runs models with (`demo` only plays the demo's student and teacher).
EVAL_BACKENDS = ("transformers", "vllm", "openai")


@dataclass
class ModelSpec:
    """A model to evaluate: its label in reports, what the backend loads, the backend and its own settings."""

    label: str
    model: str
    backend: str
    options: dict[str, Any] = field(default_factory=dict)


def _default_label(model: str) -> str:
    path = Path(model)
    if path.exists():
        name = path.resolve().name
        return f"{path.resolve().parent.name}/{name}" if name.startswith("checkpoint-") else name
    return model.rstrip("/").split("/")[-1]


def parse_models(entries: Iterable[str | Mapping[str, Any]], default_backend: str) -> list[ModelSpec]:
    """
    Reads the `models` list of the config.

    Args:
        entries: `model`, `label=model`, or mappings with `model` and optionally `label`, `backend` and per-model
            backend settings (`base_url`, `request_timeout`, `prompt_format`, ...).
        default_backend (`str`): Backend of entries that name none.

    Returns:
        `list[ModelSpec]`: The settings are not checked here; [`check_models`] does (and [`EvalConfig`] calls it).

    Raises:
        `ValueError`: for an entry without a model, or two models with the same label.
    """
    specs = []
    for index, entry in enumerate(entries):
        if isinstance(entry, Mapping):
            options = dict(entry)
            model = options.pop("model", None) or options.pop("model_name_or_path", None)
            if not model:
                raise ValueError(f"`models[{index}]` needs a `model` key, got {dict(entry)}.")
            label = options.pop("label", None) or _default_label(str(model))
            backend = options.pop("backend", default_backend)
            specs.append(ModelSpec(str(label), str(model), backend, options))
            continue
        text = str(entry).strip()
        label, sep, model = text.partition("=")
        if not sep:
            label, model = _default_label(text), text
        if not model or not label:
            raise ValueError(f"`models[{index}]` = {text!r}: write `model` or `label=model`.")
        specs.append(ModelSpec(label.strip(), model.strip(), default_backend))
    labels = [spec.label for spec in specs]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ValueError(f"Two models share the label(s) {duplicates}: name them with `label=model`.")
    return specs


def check_models(specs: Iterable[ModelSpec]) -> None:
    """
    Checks each model's backend and per-model settings, so that a typo fails before the first model loads.

    Args:
        specs (`Iterable[ModelSpec]`): The models, in the order of the `models` list.

    Raises:
        `ValueError`: naming the entry (`models[1]`), for a backend `cgd eval` does not run or a setting that the
            model's backend does not take (with the nearest valid name and the valid ones).
    """
    for index, spec in enumerate(specs):
        if spec.backend not in EVAL_BACKENDS:
            raise ValueError(
                f"models[{index}]: `backend` must be one of {', '.join(EVAL_BACKENDS)}, got {spec.backend!r}."
            )
        check_overrides(spec.backend, spec.options, where=f"models[{index}]")


@dataclass
class EvalConfig(BackendSettings):
    r"""
    Configuration of `cgd eval` (YAML with `--config`, flags override it).

    The backends' shared settings (`batch_size`, `dtype`, `request_timeout`, `max_model_len`, `vllm_kwargs`, ...) come
    from [`BackendSettings`]: the same fields, with the same defaults, as in `cgd generate`.

    Models:
        models (`list`): Models evaluated side by side: hub ids, local folders, served names or built-in
            models (`builtin:smollm2-135m-instruct`, `builtin:tiny-chatml`), optionally labelled `label=model`; in
            YAML also mappings `{model, label, backend, base_url, request_timeout, ...}` whose other keys are
            settings of the model's backend (checked when the config is read).
        backend (`str`): `transformers`, `vllm` or `openai` (an OpenAI-compatible server).
        prompt_format (`str`): `auto` (the chat template when the model has one), `chat` or `completion`.
        base_url (`str`), api_key_env (`str`): The `openai` backend's server and the variable holding its key.

    Protocol:
        protocol (`str`): The preset (`cgd_trainer.evaluation.protocols`): `strict` (the default: our instruction,
            the last box graded with math-verify, an output without a box is wrong) or `harness` (the
            math-evaluation-harness protocol of the published Qwen2.5-Math/CFT/CGD numbers: its instruction, answers
            read with its fallbacks). It sets defaults only:
            `system_prompt`, `stop` and `stop_token_ids` set explicitly win. Every sample is graded under both.
        stop (`list[str]`): Strings that end an output. Default, under every preset: for completion prompts a new
            line starting like the completion template's problem header (`\nProblem:`); none for chat. `[]`: none.
        stop_token_ids (`list[int]`): Token ids that end an output. Default: the backend's (local models: the chat
            template's end-of-turn token and every eos id; servers: their own); set them for a server whose model
            does not list its end-of-turn token as eos (e.g. `[151645, 151643]` for Qwen, `[128009]` for Llama 3).

    Benchmarks and prompts:
        benchmarks (`list[str]`): Registry names, local files, hub ids `owner/name[:config][@split]`, or
            `builtin:demo` (the demo records' questions: an offline smoke test).
        question_field, answer_field, id_field, split: Columns (and split) of local files and hub datasets.
        max_problems (`int`): Evaluate only the first problems of each benchmark.
        system_prompt (`str`): Instruction for chat models (default: the preset's, asking for steps and a boxed
            answer); an empty string sends no system message.
        instruction_in_user (`bool`): Put the instruction after the question in the user turn instead (models without
            a system role).
        completion_template (`str`): Prompt of models without a chat template, with `{instruction}` and `{question}`
            (other braces, such as `\boxed{}`, are kept as written; `{{` and `}}` are literal braces).

    Decoding:
        max_new_tokens (`int`): 8192 for LLaMA-3.1-8B and 16384 for Qwen2.5-Math-7B in the paper.
        temperature (`float`): 0 is greedy pass@1 (the paper's protocol); above 0 draws `num_samples` samples.
        top_p (`float`), seed (`int`): Sampling settings (the seed also seeds vLLM's engine).
        num_samples (`int`): Samples per problem when sampling (n of pass@k).
        pass_k (`list[int]`): The k of pass@k; default 1, the powers of two below n, and n.

    Checkpoint selection:
        checkpoints_dir (`str`): A training `output_dir`: every `checkpoint-*` folder (and the final model) is scored
            on `selection_benchmark` and the best is kept (ties go to the earlier step).
        selection_benchmark (`str`): The held-out validation set (a file, or a hub split); never a reported benchmark.
        force_selection_on_test (`bool`): Allow selecting on a test benchmark anyway (results are then biased).
        include_final (`bool`): Also score the final model saved at the top of `checkpoints_dir`.
        evaluate_selected (`bool`): Then evaluate the selected checkpoint (with `models`) on `benchmarks`.

    Output:
        output_dir (`str`): Where samples, summary, report and plots go.
        plot (`bool`): Draw the PNG plots.
    """

    models: list[str] = field(default_factory=list, metadata={"help": "Models to evaluate: `model` or `label=model`."})
    backend: str = field(default="transformers", metadata={"help": "transformers, vllm or openai."})
    prompt_format: str = field(default="auto", metadata={"help": "auto, chat or completion."})
    base_url: str | None = field(default=None, metadata={"help": "Server URL for the openai backend."})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"help": "Environment variable with the API key."})
    benchmarks: list[str] = field(default_factory=lambda: ["math500"], metadata={"help": "Benchmarks to report."})
    question_field: str | None = field(default=None, metadata={"help": "Question column of local/hub data."})
    answer_field: str | None = field(default=None, metadata={"help": "Answer column of local/hub data."})
    id_field: str | None = field(default=None, metadata={"help": "Id column of local/hub data."})
    split: str | None = field(default=None, metadata={"help": "Split of hub datasets named without @split."})
    max_problems: int | None = field(default=None, metadata={"help": "First problems only, per benchmark."})
    protocol: str = field(
        default="strict",
        metadata={"help": f"Protocol preset: {', '.join(PROTOCOLS)} (explicit settings override its defaults)."},
    )
    stop: list[str] | None = field(default=None, metadata={"help": "Stop strings (default: the preset's; [] none)."})
    stop_token_ids: list[int] | None = field(
        default=None, metadata={"help": "Stop token ids (default: the backend's end-of-turn and eos ids)."}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "System instruction ('' for none)."})
    instruction_in_user: bool = field(default=False, metadata={"help": "Instruction after the question instead."})
    completion_template: str = field(
        default=DEFAULT_COMPLETION_TEMPLATE, metadata={"help": "Base-model prompt with {instruction}, {question}."}
    )
    max_new_tokens: int = field(default=8192, metadata={"help": "Largest number of new tokens."})
    temperature: float = field(default=0.0, metadata={"help": "0: greedy pass@1; > 0: sampled pass@k."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    num_samples: int = field(default=1, metadata={"help": "Samples per problem when sampling."})
    pass_k: list[int] | None = field(default=None, metadata={"help": "The k of pass@k."})
    checkpoints_dir: str | None = field(default=None, metadata={"help": "Training output_dir to select from."})
    selection_benchmark: str | None = field(default=None, metadata={"help": "Held-out validation set."})
    force_selection_on_test: bool = field(default=False, metadata={"help": "Allow selection on a test set."})
    include_final: bool = field(default=True, metadata={"help": "Also score the final model of checkpoints_dir."})
    evaluate_selected: bool = field(default=True, metadata={"help": "Evaluate the selected checkpoint."})
    output_dir: str = field(default="eval_output", metadata={"help": "Output folder."})
    plot: bool = field(default=True, metadata={"help": "Draw PNG plots."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backend not in EVAL_BACKENDS:
            raise ValueError(f"`backend` must be transformers, vllm or openai, got {self.backend!r}.")
        get_protocol(self.protocol)  # an unknown preset fails here, with the valid names
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"`prompt_format` must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}.")
        if self.temperature < 0:
            raise ValueError(f"`temperature` must be >= 0, got {self.temperature}.")
        if self.num_samples < 1:
            raise ValueError(f"`num_samples` must be at least 1, got {self.num_samples}.")
        if self.temperature == 0 and self.num_samples > 1:
            # Greedy samples are all the same output: one is enough.
            logger.warning("`temperature` is 0 (greedy): `num_samples=%d` is reduced to 1.", self.num_samples)
            self.num_samples = 1
        if self.max_new_tokens < 1:
            raise ValueError(f"`max_new_tokens` must be at least 1, got {self.max_new_tokens}.")
        if self.pass_k is not None:
            bad = [k for k in self.pass_k if not 1 <= k <= self.num_samples]
            if bad:
                raise ValueError(f"`pass_k` values must be between 1 and num_samples={self.num_samples}, got {bad}.")
        # `{{question}}` is a literal, not the placeholder (as `fill` reads it).
        if "{question}" not in str(self.completion_template).replace("{{", "").replace("}}", ""):
            raise ValueError("`completion_template` must contain `{question}`.")
        check_template(self.completion_template, "completion_template", ("question",), ("instruction", "question"))
        if isinstance(self.benchmarks, str):
            self.benchmarks = [self.benchmarks]
        if isinstance(self.models, (str, dict)):
            self.models = [self.models]
        check_models(parse_models(self.models, self.backend))

    @property
    def preset(self) -> Protocol:
        """The protocol preset named by `protocol`."""
        return get_protocol(self.protocol)

    @property
    def instruction(self) -> str:
        """The instruction sent: `system_prompt` when set, else the preset's."""
        return self.preset.instruction if self.system_prompt is None else self.system_prompt

    @property
    def ks(self) -> list[int]:
        """The k of pass@k reported."""
        if self.pass_k is not None:
            return sorted(set(self.pass_k))
        ks = {1, self.num_samples}
        k = 2
        while k < self.num_samples:
            ks.add(k)
            k *= 2
        return sorted(ks)

    @property
    def sampling(self) -> Sampling:
        """The decoding settings of chat prompts (see [`sampling_for`])."""
        return self.sampling_for(chat=True)

    def sampling_for(self, chat: bool) -> Sampling:
        """
        The decoding settings of one model's requests.

        Args:
            chat (`bool`): Whether the model gets chat messages (else completion prompts).

        Returns:
            [`Sampling`]: `stop` and `stop_token_ids` as set; when unset, a completion prompt stops where the model
            starts a new problem (a new line starting like the line before `{question}` in `completion_template`)
            under every preset, and the backend's default stop ids apply (`None`).
        """
        stop = self.stop
        if stop is None and not chat:
            # Under every preset: a base model that goes on to a problem of its own would otherwise be graded by
            # that problem's box, the last one in its output.
            stop = list(new_problem_stops(self.completion_template))
        return Sampling(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_new_tokens,
            n=self.num_samples,
            seed=self.seed,
            stop=None if stop is None else tuple(stop),
            stop_token_ids=None if self.stop_token_ids is None else tuple(self.stop_token_ids),
        )

    def public_dict(self) -> dict[str, Any]:
        """The configuration as written to `summary.json` (only the *name* of the API key variable is in it)."""
        return asdict(self)


def backend_options(config: EvalConfig, kind: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """
    The keyword arguments of `make_backend` for one model, from the config's settings and the model's own.

    Args:
        config ([`EvalConfig`]): The configuration.
        kind (`str`): `transformers`, `vllm` or `openai`.
        overrides (`Mapping`, *optional*): The model's settings from the `models` list (setting names, such as
            `request_timeout`), which replace the config's.

    Returns:
        `dict`: Options for the backend class.

    Raises:
        `ValueError`: for another backend, or a setting `kind` does not take.
    """
    if kind not in EVAL_BACKENDS:
        raise ValueError(f"Unknown backend {kind!r} for `cgd eval`; use transformers, vllm or openai.")
    return config.backend_options(
        kind,
        overrides=overrides,
        engine_defaults={"seed": config.seed},  # vLLM's engine is seeded like the sampling
        base_url=config.base_url,
        api_key_env=config.api_key_env,
        prompt_format=config.prompt_format,
    )
