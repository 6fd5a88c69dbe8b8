"""`cgd generate`: the data pipeline of CGD — probe (student), critique and refine (teacher) — resumable and cached.

```bash
cgd generate --config pipeline.yaml                       # all three stages
cgd generate --config pipeline.yaml --stages critique     # one stage (its inputs come from earlier runs or the data)
```

Every finished request is appended to `<output_dir>/<stage>.jsonl` (flushed at once) under a key that hashes the model,
the exact prompt and the decoding settings. A rerun — after a crash, `kill -9`, or a change of settings — sends only
the requests whose key is not there yet, so nothing finished is paid for twice and nothing is lost or duplicated.
Requests that still fail after the backend's retries go to `<stage>.failures.jsonl` with their error, are counted in
the summary and are tried again on the next run. The assembled records are written to `<output_dir>/records.jsonl`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from .backends import BACKENDS, PROMPT_FORMATS, Backend, Request, Sampling, make_backend, options_for
from .prompts import (
    CRITIQUE_SYSTEM,
    CRITIQUE_TEMPLATE,
    PROBE_COMPLETION_TEMPLATE,
    REFINE_SYSTEM,
    REFINE_TEMPLATE,
    STAGE_FIELDS,
    STAGES,
    check_placeholders,
    fill,
    parse_verdict,
    strip_thinking,
    template_id,
)

logger = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"
SUMMARY_FILE = "summary.json"
# Output column of each stage.
STAGE_OUTPUT = {"probe": "initial_response", "critique": "critique", "refine": "refined_response"}


@dataclass
class GenerateConfig:
    r"""
    Settings of `cgd generate`. Every field can come from a YAML file (`--config`) and be overridden by a flag.

    API keys are never settings: the backends read them from the environment variables named by `*_api_key_env`.
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

    batch_size: int = field(default=8, metadata={"help": "`transformers` backend: requests per generate call."})
    dtype: str = field(default="auto", metadata={"help": "`transformers` backend: auto, bfloat16, float16, float32."})
    device: str | None = field(default=None, metadata={"help": "`transformers` backend: device (default CUDA/CPU)."})
    trust_remote_code: bool = field(default=False, metadata={"help": "`transformers` backend: trust remote code."})
    concurrency: int = field(default=32, metadata={"help": "`openai` backend: requests in flight at once."})
    max_retries: int = field(default=6, metadata={"help": "`openai` backend: retries after the first attempt."})
    request_timeout: float = field(default=600.0, metadata={"help": "`openai` backend: seconds per attempt."})
    backoff_base: float = field(default=1.0, metadata={"help": "`openai` backend: first backoff ceiling (s)."})
    backoff_max: float = field(default=60.0, metadata={"help": "`openai` backend: largest backoff (s)."})
    extra_body: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": '`openai` backend: extra JSON fields for every request, e.g. `{"top_k": 20}`.'},
    )
    tensor_parallel_size: int = field(default=1, metadata={"help": "`vllm` backend: tensor-parallel GPUs."})
    data_parallel_size: int = field(default=1, metadata={"help": "`vllm` backend: data-parallel replicas."})
    vllm_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "`vllm` backend: other `vllm.LLM` arguments (JSON), e.g. max_model_len."}
    )

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
        for name in ("extra_body", "vllm_kwargs"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, json.loads(value))
        check_placeholders(self.probe_completion_template, "probe_completion_template", STAGE_FIELDS["probe"])
        check_placeholders(self.critique_template, "critique_template", STAGE_FIELDS["critique"])
        check_placeholders(self.refine_template, "refine_template", STAGE_FIELDS["refine"])
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("`max_new_tokens` and `batch_size` must be positive.")

    def sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_new_tokens, seed=self.seed)

    def template_ids(self) -> dict[str, str]:
        return {
            "probe": template_id(self.probe_system_prompt, "<chat>", self.probe_completion_template),
            "critique": template_id(self.critique_system_prompt, self.critique_template),
            "refine": template_id(self.refine_system_prompt, self.refine_template),
        }


class StageStore:
    """
    The append-only result file of one stage: one JSON line per finished request, flushed as soon as it is written.

    On opening, a last line cut short by a crash is dropped (and the file trimmed to whole lines); for an id written
    more than once (settings changed between runs) the last line wins.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict] = {}
        if path.exists():
            data = path.read_bytes()
            whole = data[: data.rfind(b"\n") + 1]
            if len(whole) != len(data):
                logger.warning(f"{path}: dropped an unfinished last line (the previous run was interrupted).")
                path.write_bytes(whole)
            for number, line in enumerate(whole.decode("utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(
                        f"{path}, line {number}: not valid JSON ({error}); fix or delete the line."
                    ) from None
                self.entries[entry["id"]] = entry
        self._file = None

    def done(self, record_id: str, key: str) -> bool:
        entry = self.entries.get(record_id)
        return entry is not None and entry["key"] == key

    def append(self, entry: dict) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the stage
        self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._file.flush()
        self.entries[entry["id"]] = entry

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def inputs_hash(values: dict[str, str]) -> str:
    """Hash of the texts a stage's prompt was built from (question, and the draft and critique where used)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def request_key(backend: Backend, request: Request) -> str:
    """
    Hash of what determines a completion: the model, the exact prompt as sent, the decoding settings and any extra
    request fields (`extra_body`, e.g. `top_k` or `chat_template_kwargs`).
    """
    payload = {
        "model": backend.model,
        "input": request.messages if backend.uses_chat and request.messages is not None else request.prompt,
        "sampling": request.sampling.to_dict(),
    }
    if getattr(backend, "extra_body", None):
        payload["extra_body"] = backend.extra_body
    if payload["input"] is None:  # a chat-only request to a completion backend: rendered by the backend
        payload["input"] = request.messages
        payload["rendered"] = "completion"
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def load_items(config: GenerateConfig) -> tuple[list[dict], Counter]:
    """
    Reads the questions (and optional references, ids, existing answers and critiques) in input order.

    Returns:
        `tuple[list[dict], Counter]`: Items with `id`, `question` and the optional fields, and counts of dropped rows.

    Raises:
        `ValueError`: when a configured column is missing, or two rows share an id.
    """
    from .train import load_source

    splits = load_source(config.dataset_name, config.dataset_config)
    if config.dataset_split not in splits:
        raise ValueError(f"{config.dataset_name} has no split {config.dataset_split!r}; it has {list(splits)}.")
    data = splits[config.dataset_split]
    if config.max_records is not None:
        data = data.select(range(min(config.max_records, len(data))))
    settings = {
        "question": "question_field",
        "reference_answer": "reference_field",
        "id": "id_field",
        "initial_response": "initial_response_field",
        "critique": "critique_field",
    }
    columns = {role: getattr(config, setting) for role, setting in settings.items()}
    for role, column in columns.items():
        if column is not None and column not in data.column_names:
            raise ValueError(
                f"{config.dataset_name}: no column {column!r} for the {role.replace('_', ' ')} (set "
                f"`{settings[role]}`); the columns are {data.column_names}."
            )
    items, seen, dropped = [], Counter(), Counter()
    for index, row in enumerate(data):
        question = row[config.question_field]
        if not isinstance(question, str) or not question.strip():
            dropped["empty or non-text question"] += 1
            logger.warning(
                f"{config.dataset_name}, row {index}: `{config.question_field}` is empty or not text; skipped."
            )
            continue
        if config.id_field is not None:
            record_id = str(row[config.id_field])
            if record_id in seen:
                raise ValueError(
                    f"{config.dataset_name}, row {index}: id {record_id!r} appears twice in `{config.id_field}`."
                )
            seen[record_id] += 1
        else:
            # A hash of the question is stable when rows are added, removed or reordered; repeats get a suffix.
            digest = hashlib.sha256(question.encode("utf-8")).hexdigest()[:16]
            record_id = digest if not seen[digest] else f"{digest}-{seen[digest] + 1}"
            seen[digest] += 1
        item = {"id": record_id, "question": question}
        for role in ("reference_answer", "initial_response", "critique"):
            column = columns[role]
            if column is not None and isinstance(row[column], str) and row[column].strip():
                item[role] = row[column] if role != "reference_answer" else row[column].strip()
            elif column is not None and role == "reference_answer" and row[column] is not None:
                item[role] = str(row[column])
        items.append(item)
    return items, dropped


class Pipeline:
    """
    Runs the stages of a [`GenerateConfig`] over its questions.

    Args:
        config ([`GenerateConfig`]): The settings.
        student ([`Backend`], *optional*), teacher ([`Backend`], *optional*): Ready backends (tests, notebooks);
            by default they are built from the config when a stage first needs them.
    """

    def __init__(self, config: GenerateConfig, student: Backend | None = None, teacher: Backend | None = None):
        self.config = config
        self.output_dir = Path(config.output_dir)
        self._backends = {"student": student, "teacher": teacher}
        # Request key of every record, per stage run in this invocation.
        self._keys: dict[str, dict[str, str]] = {}

    def backend(self, role: str) -> Backend:
        if self._backends[role] is None:
            c = self.config
            kind = getattr(c, f"{role}_backend")
            settings = {
                "prompt_format": getattr(c, f"{role}_prompt_format"),
                "batch_size": c.batch_size,
                "dtype": c.dtype,
                "device": c.device,
                "trust_remote_code": c.trust_remote_code,
                "base_url": getattr(c, f"{role}_base_url"),
                "api_key_env": getattr(c, f"{role}_api_key_env"),
                "concurrency": c.concurrency,
                "max_retries": c.max_retries,
                "timeout": c.request_timeout,
                "backoff_base": c.backoff_base,
                "backoff_max": c.backoff_max,
                "extra_body": c.extra_body,
                "tensor_parallel_size": c.tensor_parallel_size,
                "data_parallel_size": c.data_parallel_size,
                "llm_kwargs": c.vllm_kwargs,
            }
            options = options_for(kind, settings)
            self._backends[role] = make_backend(kind, getattr(c, f"{role}_model"), **options)
        return self._backends[role]

    def build_request(self, stage: str, item: dict, values: dict[str, str]) -> Request:
        """The request of one stage for one record, in chat form (and completion form for the student)."""
        c = self.config
        meta = {"stage": stage, **values}
        if stage == "probe":
            messages = [{"role": "user", "content": values["question"]}]
            if c.probe_system_prompt:
                messages.insert(0, {"role": "system", "content": c.probe_system_prompt})
            prompt = fill(c.probe_completion_template, question=values["question"])
            return Request(item["id"], messages=messages, prompt=prompt, sampling=c.sampling(), meta=meta)
        system, template = (
            (c.critique_system_prompt, c.critique_template)
            if stage == "critique"
            else (c.refine_system_prompt, c.refine_template)
        )
        messages = [{"role": "system", "content": system}, {"role": "user", "content": fill(template, **values)}]
        return Request(item["id"], messages=messages, sampling=c.sampling(), meta=meta)

    def _inputs(self, stage: str, item: dict, stores: dict[str, StageStore]) -> dict[str, str] | None:
        """The fields a stage needs for one record (from the input data or earlier stages), or `None` if missing."""
        values = {"question": item["question"]}
        for earlier in STAGES[: STAGES.index(stage)]:
            column = STAGE_OUTPUT[earlier]
            if column not in STAGE_FIELDS[stage]:
                continue
            text = self.current_text(earlier, item, stores)
            if not text:
                return None
            values[column] = text
        return values

    def current_text(self, stage: str, item: dict, stores: dict[str, StageStore]) -> str | None:
        """
        A stage's output for one record, if it is current: given in the input data, or stored for exactly this
        run's request (a stage run now), or stored from the same inputs as the record has now (a stage not run now).
        An output made from an older draft or critique, or by settings this run replaced, does not count.
        """
        column = STAGE_OUTPUT[stage]
        if item.get(column):
            return item[column]
        entry = stores[stage].entries.get(item["id"])
        if entry is None:
            return None
        keys = self._keys.get(stage)
        if keys is not None:
            return entry["text"] if keys.get(item["id"]) == entry["key"] else None
        values = self._inputs(stage, item, stores)
        return entry["text"] if values is not None and entry.get("inputs") == inputs_hash(values) else None

    def run_stage(self, stage: str, items: list[dict], stores: dict[str, StageStore]) -> dict[str, Any]:
        """Sends the stage's unfinished requests and stores every reply; returns the stage's counts."""
        c = self.config
        counts: Counter = Counter()
        role = "student" if stage == "probe" else "teacher"
        given = STAGE_OUTPUT[stage]
        todo: list[tuple[dict, dict]] = []
        for item in items:
            if item.get(given):  # the input data already holds this stage's output
                counts["from input"] += 1
                continue
            values = self._inputs(stage, item, stores)
            if values is None:
                counts["waiting for an earlier stage"] += 1
                continue
            todo.append((item, values))
        store = stores[stage]
        failures: list[dict] = []
        if todo:
            backend = self.backend(role)
            requests, keys, inputs = [], self._keys.setdefault(stage, {}), {}
            for item, values in todo:
                request = self.build_request(stage, item, values)
                keys[item["id"]] = request_key(backend, request)
                inputs[item["id"]] = inputs_hash(values)
                if store.done(item["id"], keys[item["id"]]):
                    counts["cached"] += 1
                else:
                    requests.append(request)
            start = time.perf_counter()
            bar = tqdm(total=len(requests), desc=f"{stage} ({backend.model})", unit="req", disable=not requests)
            try:
                for reply in backend.generate(requests):
                    record_id = reply.request.id
                    error = reply.error
                    raw = reply.texts[0] if reply.ok else None
                    text = None
                    if raw is not None:
                        text = (
                            strip_thinking(raw, c.thinking_open_tag, c.thinking_close_tag)
                            if c.strip_thinking
                            else raw.strip()
                        )
                        if not text:
                            error = "the reply is empty" + (" once thinking is removed" if raw.strip() else "")
                    if error is not None:
                        counts["failed"] += 1
                        failures.append({"id": record_id, "stage": stage, "error": error, "attempts": reply.attempts})
                        bar.set_postfix(failed=counts["failed"])
                    else:
                        entry = {"id": record_id, "key": keys[record_id], "inputs": inputs[record_id], "text": text}
                        if raw.strip() != text:
                            entry["raw"] = raw
                        if stage == "critique":
                            entry["verdict"] = parse_verdict(text)
                        entry.update(
                            attempts=reply.attempts,
                            prompt_tokens=reply.prompt_tokens,
                            completion_tokens=reply.completion_tokens,
                        )
                        store.append(entry)
                        counts["generated"] += 1
                        counts["prompt_tokens"] += reply.prompt_tokens
                        counts["completion_tokens"] += reply.completion_tokens
                    counts["attempts"] += reply.attempts
                    bar.update(1)
            finally:
                bar.close()
                store.close()
            counts["seconds"] = round(time.perf_counter() - start, 3)
        failure_path = self.output_dir / f"{stage}.failures.jsonl"
        if failures:
            order = {item["id"]: index for index, item in enumerate(items)}
            failures.sort(key=lambda failure: order[failure["id"]])  # input order, whatever order replies came in
            failure_path.write_text("".join(json.dumps(f, ensure_ascii=False) + "\n" for f in failures), "utf-8")
            logger.warning(
                f"{stage}: {len(failures)} requests failed; see {failure_path} (they are retried next run)."
            )
        elif failure_path.exists():
            failure_path.unlink()
        return dict(counts)

    def provenance(self) -> dict[str, Any]:
        """Models, decoding settings and template ids behind the records (no credentials)."""
        c = self.config
        described = {}
        for role in ("student", "teacher"):
            backend = self._backends[role]
            described[role] = (
                backend.describe()
                if backend is not None
                else {"backend": getattr(c, f"{role}_backend"), "model": getattr(c, f"{role}_model")}
            )
        return {**described, "sampling": c.sampling().to_dict(), "templates": c.template_ids()}

    def assemble(self, items: list[dict], stores: dict[str, StageStore]) -> tuple[list[dict], Counter]:
        """The complete records, in input order; incomplete ones are counted by their first missing stage."""
        provenance = self.provenance()
        records, incomplete = [], Counter()
        for item in items:
            texts = {STAGE_OUTPUT[stage]: self.current_text(stage, item, stores) for stage in STAGES}
            missing = [stage for stage in STAGES if not texts[STAGE_OUTPUT[stage]]]
            if missing:
                incomplete[missing[0]] += 1
                continue
            verdict = parse_verdict(texts["critique"])
            record = {"id": item["id"], "prompt": item["question"], **texts, "verdict": verdict}
            if "reference_answer" in item:
                record["reference_answer"] = item["reference_answer"]
            sources = {stage: "input" for stage in STAGES if item.get(STAGE_OUTPUT[stage])}
            record["provenance"] = {**provenance, **({"from_input": sorted(sources)} if sources else {})}
            records.append(record)
        return records, incomplete

    def run(self) -> dict[str, Any]:
        """
        Runs the configured stages, writes `records.jsonl` and `summary.json`, and prints a summary.

        Returns:
            `dict`: The summary (per-stage counts, records written, verdicts, failures).
        """
        c = self.config
        self.output_dir.mkdir(parents=True, exist_ok=True)
        items, dropped = load_items(c)
        stores = {stage: StageStore(self.output_dir / f"{stage}.jsonl") for stage in STAGES}
        stage_counts = {stage: self.run_stage(stage, items, stores) for stage in c.stages}
        records, incomplete = self.assemble(items, stores)
        path = self.output_dir / RECORDS_FILE
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
        os.replace(tmp, path)  # readers never see a half-written file
        verdicts = Counter(str(r["verdict"]) for r in records)
        summary = {
            "input": c.dataset_name,
            "questions": len(items),
            "dropped_questions": dict(dropped),
            "stages": stage_counts,
            "records": len(records),
            "incomplete_records": dict(incomplete),
            "verdicts": {"right": verdicts["right"], "wrong": verdicts["wrong"], "none": verdicts["None"]},
            "failed": {stage: counts.get("failed", 0) for stage, counts in stage_counts.items()},
            "records_file": str(path),
            "provenance": self.provenance(),
        }
        (self.output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", "utf-8")
        print(format_summary(summary))
        return summary

    def close(self) -> None:
        for backend in self._backends.values():
            if backend is not None:
                backend.close()


def format_summary(summary: dict[str, Any]) -> str:
    """A short text report of a pipeline run."""
    lines = ["", f"CGD generation summary ({summary['questions']} questions)"]
    for stage, counts in summary["stages"].items():
        parts = [
            f"{key} {value}" for key, value in counts.items() if key not in ("prompt_tokens", "completion_tokens")
        ]
        lines.append(f"  {stage:<9} " + ", ".join(parts))
    lines.append(f"  records written: {summary['records']} -> {summary['records_file']}")
    if summary["incomplete_records"]:
        lines.append(f"  incomplete (first missing stage): {summary['incomplete_records']}")
    v = summary["verdicts"]
    lines.append(f"  verdicts: right {v['right']}, wrong {v['wrong']}, no verdict line {v['none']}")
    if any(summary["failed"].values()):
        lines.append(f"  failed requests (in <stage>.failures.jsonl, retried next run): {summary['failed']}")
    return "\n".join(lines)


def make_parser(prog: str | None = None):
    from trl import TrlParser

    return TrlParser((GenerateConfig,), prog=prog)


def cli_main(argv: list[str] | None = None) -> dict[str, Any]:
    """`cgd generate --config pipeline.yaml [flags]`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    (config,) = make_parser(prog="cgd generate").parse_args_and_config(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    pipeline = Pipeline(config)
    try:
        return pipeline.run()
    finally:
        pipeline.close()
