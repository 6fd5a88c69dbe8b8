r"""`cgd eval`: the paper's maths evaluation protocol, format-drift metrics and checkpoint selection.

Protocol (arXiv 2505.11628, see `docs/evaluation.md`): zero-shot, a system instruction asking for step-by-step
reasoning and a final answer in `\boxed{}`, greedy decoding and pass@1 (or sampled pass@k with the unbiased estimator),
the last box of each output graded against the reference with `math-verify` (`cgd_trainer.grading`).

```bash
cgd eval --models Qwen/Qwen2.5-Math-7B cgd=runs/qwen-cgd --benchmarks math500 amc23 --backend vllm
cgd eval --config examples/eval/llama-3.1-8b-instruct.yaml
cgd eval --checkpoints_dir runs/qwen-cgd --selection_benchmark data/heldout.jsonl --benchmarks math500
```

Everything lands in `output_dir`: `samples.jsonl` (one line per output), `summary.json`, `report.md` and
`accuracy.png`; with `checkpoints_dir`, also `selection.json`, `selection.md`, `selection.png` and
`selection_samples.jsonl`.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import re
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .backends import BACKENDS, PROMPT_FORMATS, Backend, Request, Sampling, make_backend, options_for
from .demo import BUILTIN_PREFIX, prepare_builtin_model
from .grading import extract_answer, grade_parsed, parse_gold
from .report import markdown_table, percent, plot_benchmark_accuracy, plot_checkpoint_accuracy
from .train import LOCAL_FORMATS, load_source

logger = logging.getLogger(__name__)

# The system instruction of the protocol (the paper's idea, this library's wording).
DEFAULT_SYSTEM_PROMPT = (
    "Work through the problem one step at a time, showing your reasoning. Finish with the final answer written "
    "inside \\boxed{}."
)
# The prompt for a base model without a chat template.
DEFAULT_COMPLETION_TEMPLATE = "{instruction}\n\nProblem:\n{question}\n\nSolution:\n"

_PLACEHOLDER = re.compile(r"\{(instruction|question)\}")

# Column names tried, in order, when a local file or hub dataset does not name its fields.
QUESTION_FIELDS = ("problem", "question", "prompt", "Problem", "Question", "input")
ANSWER_FIELDS = (
    "answer",
    "final_answer",
    "expected_answer",
    "gold",
    "reference_answer",
    "reference",
    "Answer",
    "solution",
)
ID_FIELDS = ("id", "unique_id", "idx", "problem_id", "ID")


# --- benchmarks ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Benchmark:
    """
    Where a benchmark's problems come from and how to read them.

    Args:
        name (`str`): Short name used in reports.
        path (`str`): Hub dataset id, or a local file.
        split (`str`): Split to evaluate.
        question_field (`str` or `None`): Column of the problem text; `None` picks the first of `QUESTION_FIELDS`.
        answer_field (`str` or `None`): Column of the reference answer; `None` picks the first of `ANSWER_FIELDS`.
        config (`str`, *optional*): Hub dataset configuration.
        id_field (`str`, *optional*): Column of a stable problem id; the row index otherwise.
        test (`bool`): Whether the set is a reported test set (checkpoint selection refuses it).
        note (`str`): Provenance, shown in the docs and the summary.
    """

    name: str
    path: str
    split: str = "test"
    question_field: str | None = None
    answer_field: str | None = None
    config: str | None = None
    id_field: str | None = None
    test: bool = True
    note: str = ""

    @property
    def local(self) -> bool:
        return Path(self.path).is_file()

    def identity(self) -> tuple[str, ...]:
        """What makes two benchmarks the same data: the resolved file, or the hub id, configuration and split."""
        if self.local:
            return ("file", str(Path(self.path).resolve()))
        return ("hub", self.path.lower(), self.config or "", self.split)


# Registry of the paper's maths benchmarks. The ids and fields are those used by public harnesses (lighteval,
# Math-Verify, SimpleRL-Zoo evaluation); see docs/evaluation.md for what could not be checked offline.
REGISTRY: dict[str, Benchmark] = {
    "math500": Benchmark(
        "math500", "HuggingFaceH4/MATH-500", "test", "problem", "answer", id_field="unique_id", note="500 problems"
    ),
    "amc23": Benchmark("amc23", "zwhe99/amc23", "test", "question", "answer", note="40 problems; answers are floats"),
    "aime24": Benchmark("aime24", "HuggingFaceH4/aime_2024", "train", "problem", "answer", note="30 problems"),
    "aime25": Benchmark("aime25", "yentinglin/aime_2025", "train", "problem", "answer", note="30 problems"),
    "gsm8k": Benchmark(
        "gsm8k", "openai/gsm8k", "test", "question", "answer", config="main", note="1319 problems; gold after ####"
    ),
    "minerva": Benchmark(
        "minerva", "zwhe99/simplerl-minerva-math", "test", "problem", "answer", note="272 problems (Minerva-Math)"
    ),
    "olympiadbench": Benchmark(
        "olympiadbench",
        "zwhe99/simplerl-OlympiadBench",
        "test",
        "question",
        "final_answer",
        note="675 problems (English maths, open-ended); final_answer is a list",
    ),
}
ALIASES = {
    "math-500": "math500",
    "math_500": "math500",
    "amc": "amc23",
    "aime2024": "aime24",
    "aime_2024": "aime24",
    "aime2025": "aime25",
    "aime_2025": "aime25",
    "minerva_math": "minerva",
    "minerva-math": "minerva",
    "minervamath": "minerva",
    "olympiad": "olympiadbench",
    "olympiad_bench": "olympiadbench",
}


@dataclass
class Problem:
    """One benchmark item: its id, question, reference answer as given and as parsed (`None`: ungradable)."""

    id: str
    question: str
    gold: str
    gold_parsed: list | None


def resolve_benchmark(
    spec: str,
    question_field: str | None = None,
    answer_field: str | None = None,
    id_field: str | None = None,
    split: str | None = None,
) -> Benchmark:
    """
    Turns a benchmark name from the config into a [`Benchmark`].

    Args:
        spec (`str`): A registry name (`math500`, `amc23`, `aime24`, `aime25`, `gsm8k`, `minerva`, `olympiadbench`),
            a local `.jsonl`/`.json`/`.parquet`/`.csv` file, a hub dataset written `owner/name[:config][@split]`, or
            `builtin:demo`.
        question_field, answer_field, id_field (`str`, *optional*): Columns of a local file or hub dataset.
        split (`str`, *optional*): Split of a hub dataset written without `@split` (default `test`).

    Returns:
        [`Benchmark`]
    """
    key = ALIASES.get(spec.lower(), spec.lower())
    if key in REGISTRY:
        return REGISTRY[key]
    if spec.startswith(BUILTIN_PREFIX):
        # The demo records' questions and reference answers: an offline smoke test (they are training data).
        return Benchmark(spec.removeprefix(BUILTIN_PREFIX), spec, "train", question_field, answer_field, test=False)
    path = Path(spec)
    if path.is_file():
        if path.suffix.lower() not in LOCAL_FORMATS:
            raise ValueError(f"Cannot read benchmark file {spec}: use one of {sorted(LOCAL_FORMATS)}.")
        return Benchmark(path.stem, spec, "train", question_field, answer_field, id_field=id_field, test=False)
    if "/" not in spec:
        raise ValueError(
            f"Unknown benchmark {spec!r}: not a registry name ({', '.join(REGISTRY)}), not an existing file, and "
            "not a hub dataset id (`owner/name[:config][@split]`)."
        )
    name, _, hub_split = spec.partition("@")
    hub_id, _, config = name.partition(":")
    hub_split = hub_split or split or "test"
    # A registry dataset named by its hub id is still that (test) benchmark.
    known = next((b for b in REGISTRY.values() if b.path.lower() == hub_id.lower() and b.split == hub_split), None)
    if known is not None and (config or None) in (None, known.config):
        return known
    short = hub_id.split("/")[-1] + ("" if hub_split == "test" else f"@{hub_split}")
    return Benchmark(
        short, hub_id, hub_split, question_field, answer_field, config=config or None, id_field=id_field, test=False
    )


def _pick(columns: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str, benchmark: str) -> str:
    if wanted is not None:
        if wanted not in columns:
            raise ValueError(
                f"Benchmark {benchmark!r} has no column {wanted!r} for the {what}; it has {list(columns)}."
            )
        return wanted
    for name in candidates:
        if name in columns:
            return name
    raise ValueError(
        f"Benchmark {benchmark!r}: cannot tell which column holds the {what} (tried {list(candidates)}); it has "
        f"{list(columns)}. Set `{what}_field`."
    )


def normalize_gold(value: Any) -> str:
    """
    Brings a reference answer to text: lists are joined with commas (OlympiadBench's `final_answer`), GSM8K
    solutions are cut to what follows `####` (without thousands separators), integral floats lose their `.0`.

    Args:
        value: The reference as stored in the dataset.

    Returns:
        `str`: The reference answer; empty when there is none.
    """
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        parts = [normalize_gold(v) for v in value]
        return ", ".join(p for p in parts if p)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip().replace(",", "")
    return text


def load_problems(benchmark: Benchmark, max_problems: int | None = None) -> list[Problem]:
    """
    Loads a benchmark's problems with `datasets` and parses their reference answers.

    Args:
        benchmark ([`Benchmark`]): What to load.
        max_problems (`int`, *optional*): Keep only the first problems (smoke tests).

    Returns:
        `list[Problem]`: In dataset order; an unparsable reference gives `gold_parsed=None`.

    Raises:
        `ValueError`: naming the row and the column, for a missing or empty question.
    """
    from datasets import load_dataset

    if benchmark.path.startswith(BUILTIN_PREFIX) or benchmark.local:
        dataset = load_source(benchmark.path)["train"]
    else:
        dataset = load_dataset(benchmark.path, name=benchmark.config, split=benchmark.split)
    if max_problems is not None:
        dataset = dataset.select(range(min(max_problems, len(dataset))))
    columns = dataset.column_names
    question_field = _pick(columns, benchmark.question_field, QUESTION_FIELDS, "question", benchmark.name)
    answer_field = _pick(columns, benchmark.answer_field, ANSWER_FIELDS, "answer", benchmark.name)
    id_field = benchmark.id_field or next((c for c in ID_FIELDS if c in columns), None)
    problems, seen = [], set()
    for index, row in enumerate(dataset):
        question = row.get(question_field)
        if not isinstance(question, str) or not question.strip():
            raise ValueError(
                f"Benchmark {benchmark.name!r}, row {index}: the question column {question_field!r} is empty or not "
                "text. Fix or drop the row."
            )
        problem_id = str(row[id_field]) if id_field and row.get(id_field) is not None else str(index)
        if problem_id in seen:  # ids only need to be unique within a run: fall back to the row index
            problem_id = f"{problem_id}#{index}"
        seen.add(problem_id)
        gold = normalize_gold(row.get(answer_field))
        problems.append(Problem(problem_id, question, gold, parse_gold(gold) if gold else None))
    return problems


# --- configuration ---------------------------------------------------------------------------------------------------


@dataclass
class EvalConfig:
    r"""
    Configuration of `cgd eval` (YAML with `--config`, flags override it).

    Models:
        models (`list`): Models evaluated side by side: hub ids, local folders, served names or the demo's
            `builtin:tiny-chatml`, optionally labelled `label=model`; in YAML also mappings
            `{model, label, backend, base_url, ...}` whose other keys go to the backend.
        backend (`str`): `transformers`, `vllm` or `openai` (an OpenAI-compatible server).
        prompt_format (`str`): `auto` (the chat template when the model has one), `chat` or `completion`.
        base_url, api_key_env, concurrency, request_timeout, max_retries: The `openai` backend's settings.
        batch_size, dtype, device, trust_remote_code: The `transformers` backend's settings (dtype also for vLLM).
        tensor_parallel_size, max_model_len, gpu_memory_utilization, vllm_kwargs: The `vllm` backend's settings.

    Benchmarks and prompts:
        benchmarks (`list[str]`): Registry names, local files, hub ids `owner/name[:config][@split]`, or
            `builtin:demo` (the demo records' questions: an offline smoke test).
        question_field, answer_field, id_field, split: Columns (and split) of local files and hub datasets.
        max_problems (`int`): Evaluate only the first problems of each benchmark.
        system_prompt (`str`): Instruction for chat models (the default asks for steps and a boxed answer); an empty
            string sends no system message.
        instruction_in_user (`bool`): Put the instruction after the question in the user turn instead (models without
            a system role).
        completion_template (`str`): Prompt of models without a chat template, with `{instruction}` and `{question}`.

    Decoding:
        max_new_tokens (`int`): 8192 for LLaMA-3.1-8B and 16384 for Qwen2.5-Math-7B in the paper.
        temperature (`float`): 0 is greedy pass@1 (the paper's protocol); above 0 draws `num_samples` samples.
        top_p (`float`), seed (`int`): Sampling settings.
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
    concurrency: int = field(default=32, metadata={"help": "Requests in flight (openai backend)."})
    request_timeout: float = field(default=1800.0, metadata={"help": "Seconds per request (openai backend)."})
    max_retries: int = field(default=6, metadata={"help": "Retries of a failed request (openai backend)."})
    batch_size: int = field(default=8, metadata={"help": "Problems per batch (transformers backend)."})
    dtype: str = field(default="auto", metadata={"help": "auto, bfloat16, float16 or float32."})
    device: str | None = field(default=None, metadata={"help": "Device of the transformers backend."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code."})
    tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM tensor parallelism."})
    max_model_len: int | None = field(default=None, metadata={"help": "vLLM context length."})
    gpu_memory_utilization: float | None = field(default=None, metadata={"help": "vLLM memory fraction."})
    vllm_kwargs: dict | str | None = field(default=None, metadata={"help": "Other vllm.LLM arguments (JSON)."})
    benchmarks: list[str] = field(default_factory=lambda: ["math500"], metadata={"help": "Benchmarks to report."})
    question_field: str | None = field(default=None, metadata={"help": "Question column of local/hub data."})
    answer_field: str | None = field(default=None, metadata={"help": "Answer column of local/hub data."})
    id_field: str | None = field(default=None, metadata={"help": "Id column of local/hub data."})
    split: str | None = field(default=None, metadata={"help": "Split of hub datasets named without @split."})
    max_problems: int | None = field(default=None, metadata={"help": "First problems only, per benchmark."})
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
        if self.backend not in BACKENDS or self.backend == "demo":
            raise ValueError(f"`backend` must be transformers, vllm or openai, got {self.backend!r}.")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"`prompt_format` must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}.")
        if isinstance(self.vllm_kwargs, str):
            try:
                self.vllm_kwargs = json.loads(self.vllm_kwargs)
            except json.JSONDecodeError as error:
                raise ValueError(f"`vllm_kwargs` must be a JSON object: {error}") from error
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
        if "{question}" not in self.completion_template:
            raise ValueError("`completion_template` must contain `{question}`.")
        if isinstance(self.benchmarks, str):
            self.benchmarks = [self.benchmarks]
        if isinstance(self.models, (str, dict)):
            self.models = [self.models]

    @property
    def instruction(self) -> str:
        return DEFAULT_SYSTEM_PROMPT if self.system_prompt is None else self.system_prompt

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
        return Sampling(
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_new_tokens,
            n=self.num_samples,
            seed=self.seed,
        )

    def public_dict(self) -> dict[str, Any]:
        """The configuration as written to `summary.json` (only the *name* of the API key variable is in it)."""
        return asdict(self)


@dataclass
class ModelSpec:
    """A model to evaluate: its label in reports, what the backend loads, the backend and its extra options."""

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
        entries: `model`, `label=model`, or mappings with `model` and optionally `label`, `backend` and backend
            options (`base_url`, `api_key_env`, `prompt_format`, ...).
        default_backend (`str`): Backend of entries that name none.

    Returns:
        `list[ModelSpec]`

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


def backend_options(config: EvalConfig, kind: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """
    The keyword arguments of `make_backend` for a backend kind, from the config and a model's own options.

    Args:
        config ([`EvalConfig`]): The configuration.
        kind (`str`): `transformers`, `vllm` or `openai`.
        overrides (`Mapping`, *optional*): Per-model options from the `models` list.

    Returns:
        `dict`: Options for the backend class.
    """
    if kind not in ("transformers", "vllm", "openai"):
        raise ValueError(f"Unknown backend {kind!r} for `cgd eval`; use transformers, vllm or openai.")
    settings: dict[str, Any] = {
        "prompt_format": config.prompt_format,
        "batch_size": config.batch_size,
        "dtype": config.dtype,
        "device": config.device,
        "trust_remote_code": config.trust_remote_code,
        "base_url": config.base_url,
        "api_key_env": config.api_key_env,
        "concurrency": config.concurrency,
        "timeout": config.request_timeout,
        "max_retries": config.max_retries,
        "tensor_parallel_size": config.tensor_parallel_size,
    }
    if kind == "vllm":
        llm_kwargs: dict[str, Any] = {"seed": config.seed, "trust_remote_code": config.trust_remote_code}
        if config.dtype != "auto":
            llm_kwargs["dtype"] = config.dtype
        if config.max_model_len is not None:
            llm_kwargs["max_model_len"] = config.max_model_len
        if config.gpu_memory_utilization is not None:
            llm_kwargs["gpu_memory_utilization"] = config.gpu_memory_utilization
        llm_kwargs.update(config.vllm_kwargs or {})
        settings["llm_kwargs"] = llm_kwargs
    options = options_for(kind, settings)
    options.update(overrides or {})
    return options


# --- prompts and generation ------------------------------------------------------------------------------------------


def build_prompt(question: str, config: EvalConfig, chat: bool) -> list[dict[str, str]] | str:
    """
    The prompt of one problem: chat messages (system instruction + question) or a completion prompt.

    Args:
        question (`str`): The problem.
        config ([`EvalConfig`]): Prompt settings.
        chat (`bool`): Whether the backend sends chat messages (`backend.uses_chat`).

    Returns:
        `list[dict]` or `str`
    """
    instruction = config.instruction
    if not chat:
        # One pass over the two placeholders: other braces (`\boxed{}`) in the template stay as written.
        values = {"instruction": instruction, "question": question}
        return _PLACEHOLDER.sub(lambda m: values[m.group(1)], config.completion_template).lstrip()
    if not instruction:
        return [{"role": "user", "content": question}]
    if config.instruction_in_user:
        return [{"role": "user", "content": f"{question}\n\n{instruction}"}]
    return [{"role": "system", "content": instruction}, {"role": "user", "content": question}]


def generate_and_grade(
    backend: Backend,
    label: str,
    problems: Mapping[str, Sequence[Problem]],
    config: EvalConfig,
    samples_file: Any | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """
    Generates the outputs of one model on several benchmarks and grades them.

    Problems with an unparsable reference are skipped (they are counted by the caller). All benchmarks go out in one
    call so that batched and concurrent backends stay busy.

    Args:
        backend ([`Backend`]): The model's backend.
        label (`str`): The model's label.
        problems (`Mapping[str, Sequence[Problem]]`): Problems per benchmark.
        config ([`EvalConfig`]): Prompt and decoding settings.
        samples_file (file, *optional*): Open text file; each graded sample is appended as a JSON line.

    Returns:
        `dict[str, list[dict]]`: Per benchmark, one row per sample (see [`score_samples`] for the fields).
    """
    from tqdm.auto import tqdm

    chat = backend.uses_chat
    sampling = config.sampling
    lookup: dict[str, tuple[str, Problem, Any]] = {}
    requests = []
    for benchmark, items in problems.items():
        for problem in items:
            if problem.gold_parsed is None:
                continue
            prompt = build_prompt(problem.question, config, chat)
            request_id = f"{benchmark}/{problem.id}"
            lookup[request_id] = (benchmark, problem, prompt)
            if isinstance(prompt, str):
                requests.append(Request(request_id, prompt=prompt, sampling=sampling))
            else:
                requests.append(Request(request_id, messages=prompt, sampling=sampling))
    rows: dict[str, list[dict[str, Any]]] = {benchmark: [] for benchmark in problems}
    progress = tqdm(total=len(requests), desc=f"eval {label}", unit="problem", file=sys.stderr)
    for reply in backend.generate(requests):
        benchmark, problem, prompt = lookup[reply.request.id]
        texts: list[str | None] = list(reply.texts) if reply.ok else []
        error = reply.error
        if reply.ok and len(texts) != sampling.n:
            error = f"the backend returned {len(texts)} outputs instead of {sampling.n}"
        texts += [None] * (sampling.n - len(texts))
        for index, text in enumerate(texts[: sampling.n]):
            row = {
                "model": label,
                "benchmark": benchmark,
                "id": problem.id,
                "sample": index,
                "prompt": prompt,
                "output": text,
                "extracted": extract_answer(text),
                "gold": problem.gold,
                "correct": bool(text is not None and grade_parsed(text, problem.gold_parsed)),
                "error": error if text is None else None,
            }
            rows[benchmark].append(row)
            if samples_file is not None:
                samples_file.write(json.dumps(row, ensure_ascii=False) + "\n")
        if samples_file is not None:
            samples_file.flush()
        progress.update(1)
    progress.close()
    return rows


# --- metrics ---------------------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """
    The unbiased pass@k estimator (Chen et al., 2021): the probability that at least one of `k` samples drawn without
    replacement from `n`, of which `c` are correct, is correct: `1 - C(n - c, k) / C(n, k)`.

    Args:
        n (`int`): Samples drawn for the problem.
        c (`int`): Correct samples among them.
        k (`int`): Budget, `1 <= k <= n`.

    Returns:
        `float`: The estimate, computed exactly with integers.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got n={n}, c={c}.")
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}.")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def score_samples(rows: Sequence[Mapping[str, Any]], ks: Sequence[int] = (1,)) -> dict[str, Any]:
    """
    Accuracy metrics of one model on one benchmark from its graded samples.

    Args:
        rows (`Sequence[Mapping]`): One per sample, with `id`, `sample` (index), `correct` and optionally `error`.
        ks (`Sequence[int]`): The k of pass@k; values above the smallest number of samples of a problem are skipped.

    Returns:
        `dict`: `problems`, `samples_per_problem`, `accuracy` (mean over problems of the fraction of correct samples:
        greedy pass@1 when there is one sample), `pass@k` (`{k: value}`, averaged over problems),
        `sample_accuracy_mean` and `sample_accuracy_sd` (accuracy of sample index j over all problems, then mean and
        sample standard deviation across the j), `correct_samples`, `failed_samples`, `failed_problems`.
    """
    by_problem: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_problem.setdefault(str(row["id"]), []).append(row)
    result: dict[str, Any] = {
        "problems": len(by_problem),
        "samples_per_problem": 0,
        "accuracy": None,
        "pass@k": {},
        "sample_accuracy_mean": None,
        "sample_accuracy_sd": None,
        "correct_samples": sum(bool(row["correct"]) for row in rows),
        "failed_samples": sum(bool(row.get("error")) for row in rows),
        "failed_problems": sum(any(r.get("error") for r in group) for group in by_problem.values()),
    }
    if not by_problem:
        return result
    counts = [(len(group), sum(bool(r["correct"]) for r in group)) for group in by_problem.values()]
    n_min = min(n for n, _ in counts)
    result["samples_per_problem"] = n_min if n_min == max(n for n, _ in counts) else [n_min, max(n for n, _ in counts)]
    result["accuracy"] = statistics.fmean(c / n for n, c in counts)
    result["pass@k"] = {
        str(k): statistics.fmean(pass_at_k(n, c, k) for n, c in counts) for k in sorted(set(ks)) if k <= n_min
    }
    # Accuracy of the j-th sample of every problem, for j < n: its spread is the run-to-run noise.
    per_index = []
    for j in range(n_min):
        hits = [
            bool(next((r["correct"] for r in group if int(r.get("sample", 0)) == j), False))
            for group in by_problem.values()
        ]
        per_index.append(statistics.fmean(hits))
    result["sample_accuracy_mean"] = statistics.fmean(per_index)
    result["sample_accuracy_sd"] = statistics.stdev(per_index) if len(per_index) > 1 else 0.0
    return result


# Detectors of critique-style writing in a solver's output. A CGD student only *reads* critiques during training; a
# model that starts *writing* them (as CFT-trained models do) has drifted from the answer format. Each detector is a
# regular expression searched in the output; an output is critique-style when any of them matches.
CRITIQUE_DETECTORS: dict[str, re.Pattern[str]] = {
    # A verdict line as the teachers write them: "Conclusion: right", "**Conclusion:** wrong", "Conclusion: incorrect".
    "verdict_line": re.compile(
        r"^[\s>*#_-]*conclusion[\s*_]*:[\s*_]*(?:right|wrong|correct|incorrect)\b", re.IGNORECASE | re.MULTILINE
    ),
    # A line that opens a critique section: "Critique", "## Critique:", "**Critique of the solution**".
    "critique_header": re.compile(r"^[\s>*#_-]*critique\b", re.IGNORECASE | re.MULTILINE),
    # Talk about somebody else's work: "the student's answer", "the student's solution", "the student's work".
    "student_reference": re.compile(
        r"\bthe student(?:'s|’s)? (?:answer|solution|response|work|attempt|reasoning)\b", re.IGNORECASE
    ),
    # A judgement of an answer: "the answer is correct", "the student's solution is incorrect", "this answer is wrong".
    "answer_judgement": re.compile(
        r"\b(?:the|this|their|student(?:'s|’s)?) (?:final )?(?:answer|solution) is "
        r"(?:correct|incorrect|right|wrong)\b",
        re.IGNORECASE,
    ),
}


def critique_signals(text: str) -> dict[str, bool]:
    """Which critique detectors (see `CRITIQUE_DETECTORS`) match an output."""
    return {name: bool(pattern.search(text)) for name, pattern in CRITIQUE_DETECTORS.items()}


def drift_metrics(outputs: Iterable[str | None]) -> dict[str, Any]:
    r"""
    Format-drift metrics of a set of outputs. Failed generations (`None`) are left out and counted.

    Args:
        outputs (`Iterable[str | None]`): Model outputs.

    Returns:
        `dict`: `outputs` (texts measured), `failed`, `boxed_rate` (outputs with a closed `\boxed{}`),
        `critique_rate` (outputs matching any critique detector), `critique_rates` (per detector), `mean_chars`
        and `mean_words` (whitespace-separated words).
    """
    texts, failed = [], 0
    for text in outputs:
        if text is None:
            failed += 1
        else:
            texts.append(text)
    result: dict[str, Any] = {"outputs": len(texts), "failed": failed}
    if not texts:
        result.update(boxed_rate=None, critique_rate=None, critique_rates={}, mean_chars=None, mean_words=None)
        return result
    signals = [critique_signals(text) for text in texts]
    result["boxed_rate"] = statistics.fmean(extract_answer(text) is not None for text in texts)
    result["critique_rate"] = statistics.fmean(any(s.values()) for s in signals)
    result["critique_rates"] = {name: statistics.fmean(s[name] for s in signals) for name in CRITIQUE_DETECTORS}
    result["mean_chars"] = statistics.fmean(len(text) for text in texts)
    result["mean_words"] = statistics.fmean(len(text.split()) for text in texts)
    return result


# --- reports ---------------------------------------------------------------------------------------------------------


def render_report(summary: Mapping[str, Any], plot_name: str | None = "accuracy.png") -> str:
    """
    The markdown report of an evaluation: accuracy table (models x benchmarks), pass@k, format drift, data notes.

    Args:
        summary (`Mapping`): What [`evaluate`] writes to `summary.json`.
        plot_name (`str`, *optional*): The accuracy plot, relative to the report; `None` for none.

    Returns:
        `str`: The report.
    """
    decoding = summary["decoding"]
    benchmarks = [b["name"] for b in summary["benchmarks"]]
    results = summary["results"]
    lines = ["# Evaluation report", ""]
    if decoding["temperature"] == 0:
        mode = "greedy decoding, pass@1"
    else:
        mode = (
            f"sampling (temperature {decoding['temperature']}, top_p {decoding['top_p']}, seed {decoding['seed']}), "
            f"{decoding['num_samples']} samples per problem"
        )
    lines += [
        f"Decoding: {mode}; at most {decoding['max_new_tokens']} new tokens. Answers: last `\\boxed{{}}` of the "
        "output, graded with math-verify. Accuracy in %.",
        "",
        "## Accuracy",
        "",
    ]
    rows = []
    for label, per_benchmark in results.items():
        cells = [percent(per_benchmark.get(b, {}).get("accuracy")) for b in benchmarks]
        rows.append([label, *cells, percent(summary["average"].get(label))])
    lines += [markdown_table(["model", *benchmarks, "average"], rows), ""]
    if plot_name:
        lines += [f"![accuracy per benchmark]({plot_name})", ""]
    if decoding["num_samples"] > 1:
        ks = decoding["pass_k"]
        lines += ["## Sampled pass@k", "", "Per-sample accuracy is the mean ± sd over the sample indices.", ""]
        rows = []
        for label, per_benchmark in results.items():
            for benchmark in benchmarks:
                metrics = per_benchmark.get(benchmark)
                if not metrics or metrics["accuracy"] is None:
                    continue
                spread = f"{percent(metrics['sample_accuracy_mean'])} ± {percent(metrics['sample_accuracy_sd'])}"
                rows.append([label, benchmark, spread, *[percent(metrics["pass@k"].get(str(k))) for k in ks]])
        lines += [markdown_table(["model", "benchmark", "per-sample acc", *[f"pass@{k}" for k in ks]], rows), ""]
    lines += [
        "## Format drift",
        "",
        "Rates in % of the model's outputs on all benchmarks (failed generations left out). *critique-style* counts "
        "outputs matching any detector below.",
        "",
    ]
    rows = []
    for label, drift in summary["drift"].items():
        rates = drift.get("critique_rates", {})
        mean_chars = "-" if drift["mean_chars"] is None else f"{drift['mean_chars']:.0f}"
        mean_words = "-" if drift["mean_words"] is None else f"{drift['mean_words']:.0f}"
        rows.append(
            [
                label,
                drift["outputs"],
                percent(drift["boxed_rate"]),
                percent(drift["critique_rate"]),
                *[percent(rates.get(name)) for name in CRITIQUE_DETECTORS],
                mean_chars,
                mean_words,
            ]
        )
    headers = ["model", "outputs", "boxed", "critique-style", *CRITIQUE_DETECTORS, "mean chars", "mean words"]
    lines += [markdown_table(headers, rows), ""]
    lines += ["Detectors (case-insensitive regular expressions):", ""]
    lines += [f"- `{name}`: `{pattern.pattern}`" for name, pattern in CRITIQUE_DETECTORS.items()]
    lines += ["", "## Data and failures", ""]
    rows = []
    for info in summary["benchmarks"]:
        failed = ", ".join(
            f"{label}: {results[label].get(info['name'], {}).get('failed_samples', 0)}" for label in results
        )
        rows.append([info["name"], info["source"], info["problems"], info["ungradable"], failed])
    lines += [
        markdown_table(["benchmark", "source", "problems graded", "ungradable (excluded)", "failed samples"], rows),
        "",
        "Problems whose reference answer math-verify cannot parse are excluded from every score; failed "
        "generations are graded wrong.",
        "",
    ]
    lines += ["## Models", ""]
    lines += [
        f"- **{m['label']}**: `{m['model']}` ({m['backend']['backend']}, {m['backend']['prompt_format']})"
        for m in summary["models"]
    ]
    return "\n".join(lines) + "\n"


def render_selection_report(selection: Mapping[str, Any], plot_name: str | None = "selection.png") -> str:
    """
    The markdown report of a checkpoint selection: validation accuracy per checkpoint and the choice.

    Args:
        selection (`Mapping`): What [`select_checkpoint`] writes to `selection.json`.
        plot_name (`str`, *optional*): The accuracy-per-checkpoint plot; `None` for none.

    Returns:
        `str`: The report.
    """
    best = selection["selected"]
    lines = [
        "# Checkpoint selection",
        "",
        f"Validation set: `{selection['validation']['source']}` ({selection['validation']['problems']} problems, "
        f"{selection['validation']['ungradable']} ungradable excluded). Ties go to the earlier step.",
        "",
        f"Selected: **{best['label']}** (`{best['path']}`), validation accuracy {percent(best['accuracy'])}%.",
        "",
    ]
    if selection.get("forced_on_test"):
        lines += [
            "**Warning:** selected on a test benchmark (`force_selection_on_test`): scores on it are biased.",
            "",
        ]
    rows = [
        [
            c["label"],
            "-" if c["step"] is None else c["step"],
            percent(c["accuracy"]),
            c["failed_samples"],
            "✓" if c["label"] == best["label"] else "",
        ]
        for c in selection["checkpoints"]
    ]
    lines += [markdown_table(["checkpoint", "step", "accuracy (%)", "failed samples", "selected"], rows), ""]
    if plot_name:
        lines += [f"![accuracy per checkpoint]({plot_name})", ""]
    return "\n".join(lines)


# --- running ---------------------------------------------------------------------------------------------------------


def _release(backend: Backend) -> None:
    # Frees one model before the next is loaded (several models or checkpoints in one process).
    try:
        backend.close()
    finally:
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def _load_benchmarks(specs: Sequence[str], config: EvalConfig) -> dict[str, tuple[Benchmark, list[Problem]]]:
    loaded: dict[str, tuple[Benchmark, list[Problem]]] = {}
    for spec in specs:
        benchmark = resolve_benchmark(spec, config.question_field, config.answer_field, config.id_field, config.split)
        if benchmark.name in loaded:
            raise ValueError(f"Two benchmarks are both named {benchmark.name!r}; rename one of the files.")
        problems = load_problems(benchmark, config.max_problems)
        ungradable = [p.id for p in problems if p.gold_parsed is None]
        if ungradable:
            logger.warning(
                "%s: %d of %d reference answers cannot be parsed; those problems are excluded (ids: %s%s).",
                benchmark.name,
                len(ungradable),
                len(problems),
                ", ".join(ungradable[:10]),
                " ..." if len(ungradable) > 10 else "",
            )
        loaded[benchmark.name] = (benchmark, problems)
    return loaded


def _benchmark_info(benchmark: Benchmark, problems: Sequence[Problem]) -> dict[str, Any]:
    ungradable = [p.id for p in problems if p.gold_parsed is None]
    source = benchmark.path + (f":{benchmark.config}" if benchmark.config else "")
    if not benchmark.local and not benchmark.path.startswith(BUILTIN_PREFIX):
        source += f"@{benchmark.split}"
    return {
        "name": benchmark.name,
        "source": source,
        "test": benchmark.test,
        "problems": len(problems) - len(ungradable),
        "ungradable": len(ungradable),
        "ungradable_ids": ungradable[:50],
    }


def evaluate(config: EvalConfig, extra_models: Sequence[ModelSpec] = ()) -> dict[str, Any]:
    """
    Evaluates every model of the config on every benchmark and writes samples, summary, report and plot.

    Args:
        config ([`EvalConfig`]): The configuration.
        extra_models (`Sequence[ModelSpec]`): Models added after those of `config.models` (the selected checkpoint).

    Returns:
        `dict`: The summary written to `summary.json`.
    """
    specs = parse_models(config.models, config.backend) + list(extra_models)
    if not specs:
        raise ValueError("Nothing to evaluate: set `models` (or `checkpoints_dir` for checkpoint selection).")
    if not config.benchmarks:
        raise ValueError("Set `benchmarks`: registry names, local files or hub dataset ids.")
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    loaded = _load_benchmarks(config.benchmarks, config)
    problems = {name: items for name, (_, items) in loaded.items()}

    results: dict[str, dict[str, Any]] = {}
    drift: dict[str, Any] = {}
    drift_per_benchmark: dict[str, dict[str, Any]] = {}
    models_info = []
    started = time.time()
    with open(output_dir / "samples.jsonl", "w", encoding="utf-8") as samples_file:
        for spec in specs:
            model = spec.model
            if model.startswith(BUILTIN_PREFIX):  # the demo's tiny models, built locally
                model = prepare_builtin_model(model, str(output_dir / "builtin" / model.removeprefix(BUILTIN_PREFIX)))
            backend = make_backend(spec.backend, model, **backend_options(config, spec.backend, spec.options))
            try:
                model_started = time.time()
                rows = generate_and_grade(backend, spec.label, problems, config, samples_file)
                models_info.append(
                    {
                        "label": spec.label,
                        "model": spec.model,
                        "backend": backend.describe(),
                        "seconds": round(time.time() - model_started, 1),
                    }
                )
            finally:
                _release(backend)
            results[spec.label] = {name: score_samples(items, config.ks) for name, items in rows.items()}
            drift[spec.label] = drift_metrics(row["output"] for items in rows.values() for row in items)
            drift_per_benchmark[spec.label] = {
                name: drift_metrics(row["output"] for row in items) for name, items in rows.items()
            }
            for name, metrics in results[spec.label].items():
                logger.info("%s on %s: accuracy %s%%", spec.label, name, percent(metrics["accuracy"]))

    average = {}
    for label, per_benchmark in results.items():
        values = [m["accuracy"] for m in per_benchmark.values() if m["accuracy"] is not None]
        average[label] = statistics.fmean(values) if values else None
    summary: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - started, 1),
        "config": config.public_dict(),
        "decoding": {
            "temperature": config.temperature,
            "top_p": config.top_p,
            "seed": config.seed,
            "num_samples": config.num_samples,
            "max_new_tokens": config.max_new_tokens,
            "pass_k": config.ks,
        },
        "models": models_info,
        "benchmarks": [_benchmark_info(benchmark, items) for benchmark, items in loaded.values()],
        "results": results,
        "average": average,
        "drift": drift,
        "drift_per_benchmark": drift_per_benchmark,
        "files": {"samples": "samples.jsonl", "report": "report.md"},
    }
    plot_name = None
    if config.plot:
        accuracy = {label: {b: m["accuracy"] for b, m in per.items()} for label, per in results.items()}
        plot_benchmark_accuracy(accuracy, output_dir / "accuracy.png")
        plot_name = "accuracy.png"
        summary["files"]["plot"] = plot_name
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", "utf-8")
    (output_dir / "report.md").write_text(render_report(summary, plot_name), "utf-8")
    logger.info("Wrote %s", output_dir / "report.md")
    return summary


# --- checkpoint selection --------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A candidate of checkpoint selection: label, folder and training step (`None`: the final model)."""

    label: str
    path: str
    step: int | None


_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_MODEL_FILES = ("config.json", "adapter_config.json")


def find_checkpoints(training_dir: str | Path, include_final: bool = True) -> list[Checkpoint]:
    """
    Lists the saved models of a training `output_dir`, in training order.

    Args:
        training_dir (`str` or `Path`): The folder holding `checkpoint-<step>` folders.
        include_final (`bool`): Also list the model saved at the top of the folder (as `final`, after every step).

    Returns:
        `list[Checkpoint]`

    Raises:
        `ValueError`: when the folder does not exist or holds no saved model.
    """
    root = Path(training_dir)
    if not root.is_dir():
        raise ValueError(f"`checkpoints_dir` {training_dir} is not a folder.")
    found = []
    for child in root.iterdir():
        match = _CHECKPOINT_RE.match(child.name)
        if not (child.is_dir() and match):
            continue
        if not any((child / name).is_file() for name in _MODEL_FILES):
            logger.warning("Skipping %s: it holds no config.json or adapter_config.json.", child)
            continue
        found.append(Checkpoint(child.name, str(child), int(match.group(1))))
    found.sort(key=lambda c: c.step)
    if include_final and any((root / name).is_file() for name in _MODEL_FILES):
        found.append(Checkpoint("final", str(root), None))
    if not found:
        raise ValueError(f"No `checkpoint-<step>` folder or saved model in {training_dir}.")
    return found


def check_selection_set(config: EvalConfig) -> tuple[Benchmark, bool]:
    """
    Checks that checkpoint selection uses a held-out validation set.

    Selecting on a reported benchmark (the paper selected on MATH-500, which it also reports) leaks the test set into
    the choice of checkpoint, so it is refused unless `force_selection_on_test` is set.

    Args:
        config ([`EvalConfig`]): The configuration.

    Returns:
        `tuple[Benchmark, bool]`: The validation benchmark, and whether it is a test set allowed by force.

    Raises:
        `ValueError`: when no validation set is named, or it is a reported or registry test benchmark.
    """
    spec = config.selection_benchmark
    if not spec:
        raise ValueError(
            "Checkpoint selection needs a held-out validation set: set `selection_benchmark` to a local file (e.g. "
            "500 MATH train problems) or a hub split (`owner/name[:config]@split`) that no reported benchmark "
            "contains."
        )
    fields = (config.question_field, config.answer_field, config.id_field, config.split)
    validation = resolve_benchmark(spec, *fields)
    reported = {resolve_benchmark(b, *fields).identity(): b for b in config.benchmarks}
    problem = None
    if validation.identity() in reported:
        problem = (
            f"`selection_benchmark` {spec!r} is also a reported benchmark ({reported[validation.identity()]!r} in "
            "`benchmarks`): selecting a checkpoint on the test set inflates the scores you report."
        )
    elif validation.test:
        problem = (
            f"`selection_benchmark` {spec!r} is the registry test benchmark {validation.name!r}: selecting a "
            "checkpoint on a test set leaks it into the choice."
        )
    if problem is None:
        return validation, False
    if not config.force_selection_on_test:
        raise ValueError(
            f"{problem} Use a held-out file or split instead, or set `force_selection_on_test: true` to do it anyway."
        )
    logger.warning("%s Going on because `force_selection_on_test` is set.", problem)
    return validation, True


def select_checkpoint(config: EvalConfig) -> dict[str, Any]:
    """
    Scores every checkpoint of `config.checkpoints_dir` on the validation set and picks the best.

    Ties go to the earlier step (the final model counts as the latest). Writes `selection.json`, `selection.md`,
    `selection.png` and `selection_samples.jsonl` to `output_dir`.

    Args:
        config ([`EvalConfig`]): The configuration, with `checkpoints_dir` and `selection_benchmark`.

    Returns:
        `dict`: What is written to `selection.json`; `selected` holds the chosen checkpoint.
    """
    validation, forced = check_selection_set(config)
    if config.backend == "openai":
        raise ValueError(
            "Checkpoint selection loads every checkpoint itself: use `backend: transformers` or `backend: vllm`."
        )
    candidates = find_checkpoints(config.checkpoints_dir, config.include_final)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    problems = load_problems(validation, config.max_problems)
    if all(p.gold_parsed is None for p in problems):
        raise ValueError(f"No reference answer of the validation set {validation.path} can be parsed.")
    scored = []
    with open(output_dir / "selection_samples.jsonl", "w", encoding="utf-8") as samples_file:
        for candidate in candidates:
            backend = make_backend(config.backend, candidate.path, **backend_options(config, config.backend))
            try:
                rows = generate_and_grade(backend, candidate.label, {validation.name: problems}, config, samples_file)
            finally:
                _release(backend)
            metrics = score_samples(rows[validation.name], config.ks)
            scored.append({**asdict(candidate), **metrics})
            logger.info("%s: validation accuracy %s%%", candidate.label, percent(metrics["accuracy"]))
    # Highest accuracy; among equals the earliest in training order (the list is in that order).
    best = max(enumerate(scored), key=lambda item: (item[1]["accuracy"] or 0.0, -item[0]))[1]
    selection = {
        "checkpoints_dir": str(config.checkpoints_dir),
        "validation": _benchmark_info(validation, problems),
        "forced_on_test": forced,
        "selected": {k: best[k] for k in ("label", "path", "step", "accuracy")},
        "checkpoints": scored,
        "decoding": {"temperature": config.temperature, "num_samples": config.num_samples},
    }
    plot_name = None
    if config.plot:
        plot_checkpoint_accuracy(scored, output_dir / "selection.png", best=best["label"])
        plot_name = "selection.png"
    (output_dir / "selection.json").write_text(json.dumps(selection, indent=2) + "\n", "utf-8")
    (output_dir / "selection.md").write_text(render_selection_report(selection, plot_name), "utf-8")
    return selection


def run(config: EvalConfig) -> dict[str, Any]:
    """
    Runs `cgd eval`: checkpoint selection first when `checkpoints_dir` is set, then the evaluation of `models` (and
    of the selected checkpoint) on `benchmarks`.

    Args:
        config ([`EvalConfig`]): The configuration.

    Returns:
        `dict`: `{"summary": ..., "selection": ...}`, each `None` when that part did not run.
    """
    selection = summary = None
    extra: list[ModelSpec] = []
    if config.checkpoints_dir:
        selection = select_checkpoint(config)
        chosen = selection["selected"]
        extra.append(ModelSpec(f"selected:{chosen['label']}", chosen["path"], config.backend))
        if not config.evaluate_selected:
            return {"summary": None, "selection": selection}
    summary = evaluate(config, extra_models=extra)
    return {"summary": summary, "selection": selection}


def make_parser(prog: str | None = "cgd eval"):
    """The `TrlParser` of `cgd eval` (YAML `--config` plus flags)."""
    from trl import TrlParser

    return TrlParser((EvalConfig,), prog=prog)


def cli_main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parses the command line (and YAML config) and runs `cgd eval`."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    (config,) = make_parser().parse_args_and_config(args=list(sys.argv[1:] if argv is None else argv))
    result = run(config)
    output_dir = Path(config.output_dir)
    if result["selection"] is not None:
        chosen = result["selection"]["selected"]
        print(f"Selected {chosen['label']} ({chosen['path']}): {percent(chosen['accuracy'])}% on the validation set.")
        print(f"Selection report: {output_dir / 'selection.md'}")
    if result["summary"] is not None:
        print(f"Report: {output_dir / 'report.md'}")
    return result
