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
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..backends import Backend, Request, Sampling, local_model, make_backend
from ..records import parse_verdict, strip_thinking
from ..sources import load_source, read_jsonl, write_jsonl
from ..templates import completion_stops, fill
from .config import GenerateConfig
from .merge import SUMMARY_FILE, check_shards, input_digest, input_settings, read_shards
from .stages import STAGE_NAMES, STAGE_OUTPUT, STAGES, earlier_stages
from .store import StageStore, inputs_hash, request_key

logger = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"


def load_items(config: GenerateConfig, whole: bool = False) -> tuple[list[dict], Counter]:
    """
    Reads the questions (and optional references, ids, existing answers and critiques) in input order: shuffled with
    `data_seed` when `shuffle` is set, cut to `max_records`, and, with `shard: i/n`, only every n-th from the i-th
    (ids are given over the whole input first, so a shard's ids are those of the unsharded run).

    Args:
        config ([`GenerateConfig`]): The settings.
        whole (`bool`): Ignore `shard`: the whole input ([`read_input`]).

    Returns:
        `tuple[list[dict], Counter]`: Items with `id`, `question` and the optional fields, and counts of dropped rows.

    Raises:
        `ValueError`: when a configured column is missing, or two rows share an id.
    """
    items, dropped = read_input(config)
    return (items if whole else shard_items(config, items)), dropped


def shard_items(config: GenerateConfig, items: list[dict]) -> list[dict]:
    """The items of the configured shard (`shard: i/n`): every n-th of the whole input from the i-th."""
    return items[config.shard_index :: config.shard_count] if config.shard_count > 1 else items


def read_input(config: GenerateConfig) -> tuple[list[dict], Counter]:
    """The whole input of [`load_items`], before the shard is taken."""
    splits = load_source(config.dataset_name, config.dataset_config, streaming=config.streaming)
    if config.dataset_split not in splits:
        raise ValueError(f"{config.dataset_name} has no split {config.dataset_split!r}; it has {list(splits)}.")
    data = splits[config.dataset_split]
    if config.shuffle:
        # A stream is shuffled through a buffer (its order differs from the shuffle of the downloaded dataset).
        data = (
            data.shuffle(seed=config.data_seed, buffer_size=config.shuffle_buffer)
            if config.streaming
            else data.shuffle(seed=config.data_seed)
        )
    if config.max_records is not None:
        data = (
            data.take(config.max_records)
            if config.streaming
            else data.select(range(min(config.max_records, len(data))))
        )
    column_names = data.column_names
    if column_names is None:  # a stream whose columns are only known from its rows
        first = next(iter(data), None)
        column_names = list(first) if first is not None else []
    settings = {
        "question": "question_field",
        "reference_answer": "reference_field",
        "id": "id_field",
        "initial_response": "initial_response_field",
        "critique": "critique_field",
    }
    columns = {role: getattr(config, setting) for role, setting in settings.items()}
    for role, column in columns.items():
        if column is not None and column not in column_names:
            raise ValueError(
                f"{config.dataset_name}: no column {column!r} for the {role.replace('_', ' ')} (set "
                f"`{settings[role]}`); the columns are {column_names}."
            )
    items, seen, dropped = [], Counter(), Counter()
    for index, row in enumerate(data):
        question = row.get(config.question_field)
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
            value = row.get(column) if column is not None else None
            if isinstance(value, str) and value.strip():
                item[role] = value if role != "reference_answer" else value.strip()
            elif role == "reference_answer" and value is not None:
                item[role] = str(value)
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
        # Request key of every record, per stage run in this invocation, and the stage's decoding settings.
        self._keys: dict[str, dict[str, str]] = {}
        self._sampling: dict[str, Sampling] = {}

    def backend(self, role: str) -> Backend:
        if self._backends[role] is None:
            c = self.config
            kind = getattr(c, f"{role}_backend")
            model = local_model(kind, getattr(c, f"{role}_model"), self.output_dir / "builtin")
            self._backends[role] = make_backend(kind, model, **c.role_options(role))
        return self._backends[role]

    def stage_sampling(self, stage: str, backend: Backend) -> Sampling:
        """
        A stage's decoding settings as its backend sends them: the stage's budget and stops, with default stop
        strings for completion prompts (a new line starting like the prompt's template, i.e. a new question) and the
        backend's default stop ids (a local model's end-of-turn and eos tokens).
        """
        sampling = STAGES[stage].sampling(self.config)
        if sampling.stop is None and not backend.uses_chat:
            sampling = replace(sampling, stop=completion_stops(STAGES[stage].prompt_template(self.config)))
        return backend.resolve(sampling)

    def build_request(
        self, stage: str, item: dict, values: dict[str, str], sampling: Sampling | None = None
    ) -> Request:
        """The request of one stage for one record, in chat form (and completion form for the student)."""
        c, spec = self.config, STAGES[stage]
        meta = {"stage": stage, **values}
        sampling = sampling if sampling is not None else spec.sampling(c)
        system, template = spec.system_prompt(c), spec.prompt_template(c)
        if spec.bare_chat:  # the chat model is asked the bare question; the template is its completion prompt
            messages = [{"role": "user", "content": values["question"]}]
            if system:
                messages.insert(0, {"role": "system", "content": system})
            prompt = fill(template, question=values["question"])
            return Request(item["id"], messages=messages, prompt=prompt, sampling=sampling, meta=meta)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": fill(template, **values)}]
        return Request(item["id"], messages=messages, sampling=sampling, meta=meta)

    def _inputs(self, stage: str, item: dict, stores: dict[str, StageStore]) -> dict[str, str] | None:
        """The fields a stage needs for one record (from the input data or earlier stages), or `None` if missing."""
        values = {"question": item["question"]}
        for earlier in earlier_stages(STAGES[stage]):
            if earlier.output not in STAGES[stage].reads:
                continue
            text = self.current_text(earlier.name, item, stores)
            if not text:
                return None
            values[earlier.output] = text
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
        role = STAGES[stage].role
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
            sampling = self._sampling[stage] = self.stage_sampling(stage, backend)
            fingerprint = backend.fingerprint
            requests, keys, inputs = [], self._keys.setdefault(stage, {}), {}
            for item, values in todo:
                request = self.build_request(stage, item, values, sampling)
                keys[item["id"]] = request_key(backend, request)
                inputs[item["id"]] = inputs_hash(values)
                if store.done(item["id"], keys[item["id"]]):
                    counts["cached"] += 1
                    continue
                requests.append(request)
                old = store.entries.get(item["id"])
                if old is not None:  # a stored output that no longer counts: say why it is made again
                    changed = fingerprint is not None and old.get("fingerprint") not in (None, fingerprint)
                    counts[
                        "regenerated: model files changed" if changed else "regenerated: settings or inputs changed"
                    ] += 1
            changed = counts["regenerated: model files changed"]
            if changed:
                logger.warning(
                    f"{stage}: the files of {backend.model} changed since {changed} stored outputs were made "
                    f"(fingerprint now {fingerprint}); they are generated again."
                )
            from tqdm.auto import tqdm

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
                        if fingerprint is not None:
                            entry["fingerprint"] = fingerprint
                        if raw.strip() != text:
                            entry["raw"] = raw
                        if stage == "critique":
                            entry["verdict"] = parse_verdict(text)
                        entry.update(
                            attempts=reply.attempts,
                            prompt_tokens=reply.prompt_tokens,
                            completion_tokens=reply.completion_tokens,
                        )
                        if reply.max_tokens is not None:  # the budget was shrunk to fit the model's context
                            entry["max_tokens"] = reply.max_tokens
                            counts["budget shrunk to fit the context"] += 1
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
            write_jsonl(failure_path, failures)
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
        sampling = {name: self._sampling.get(name, stage.sampling(c)).to_dict() for name, stage in STAGES.items()}
        return {**described, "sampling": sampling, "templates": c.template_ids()}

    def assemble(
        self, items: list[dict], stores: dict[str, StageStore], provenance: dict[str, Any] | None = None
    ) -> tuple[list[dict], Counter]:
        """The complete records, in input order; incomplete ones are counted by their first missing stage."""
        provenance = provenance if provenance is not None else self.provenance()
        records, incomplete = [], Counter()
        for item in items:
            texts = {STAGE_OUTPUT[stage]: self.current_text(stage, item, stores) for stage in STAGE_NAMES}
            missing = [stage for stage in STAGE_NAMES if not texts[STAGE_OUTPUT[stage]]]
            if missing:
                incomplete[missing[0]] += 1
                continue
            verdict = parse_verdict(texts["critique"])
            record = {"id": item["id"], "prompt": item["question"], **texts, "verdict": verdict}
            # Every record has the same keys, whatever its row held: readers never meet a key that appears late.
            record["reference_answer"] = item.get("reference_answer")
            sources = {stage: "input" for stage in STAGE_NAMES if item.get(STAGE_OUTPUT[stage])}
            record["provenance"] = {**provenance, "from_input": sorted(sources)}
            records.append(record)
        return records, incomplete

    def run(self) -> dict[str, Any]:
        """
        Runs the configured stages, writes `records.jsonl` and `summary.json`, and prints a summary.

        Returns:
            `dict`: The summary (per-stage counts, records written, verdicts, failures).
        """
        c = self.config
        if c.merge is not None:
            return self.merge()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        whole, dropped = read_input(c)
        items = shard_items(c, whole)
        stores = {stage: StageStore(self.output_dir / f"{stage}.jsonl") for stage in STAGE_NAMES}
        stage_counts = {}
        for index, stage in enumerate(c.stages):
            stage_counts[stage] = self.run_stage(stage, items, stores)
            self._release_unneeded(c.stages[index + 1 :])
        records, incomplete = self.assemble(items, stores)
        # The stages whose backend was asked this run: only their models and resolved settings are in the provenance.
        extra = {"input_sha256": input_digest(whole), "stages_sent": sorted(self._sampling, key=STAGE_NAMES.index)}
        if c.shard is not None:
            extra["shard"] = c.shard
        return self._finish(items, dropped, stage_counts, records, incomplete, self.provenance(), extra)

    def _release_unneeded(self, later: list[str]) -> None:
        """
        Closes the backends no later stage uses: the offline student engine leaves the GPU before the teacher loads
        (two vLLM engines in one process do not fit next to each other).
        """
        needed = {STAGES[stage].role for stage in later}
        for role, backend in self._backends.items():
            others = [b for r, b in self._backends.items() if r != role]
            if backend is not None and role not in needed and all(backend is not b for b in others):
                backend.close()

    def merge(self) -> dict[str, Any]:
        """
        Merges shard runs (`merge: [folders]`) into `output_dir`: their records, put back in the order of the whole
        input (the same `records.jsonl` as one unsharded run with the same settings), and their stage files (so that a
        rerun of the whole input in `output_dir` sends only what the shards left undone). Nothing is written before
        every check has passed (see [`check_shards`]).

        Raises:
            `ValueError`: when a folder is not a finished run or is given twice, the shards are of different splits,
                read another input or were made with other models, decoding settings or templates, or a shard is
                missing and `allow_partial_merge` is not set.
        """
        c = self.config
        shards = read_shards(c.merge)
        items, dropped = read_input(c)
        digest = input_digest(items)
        missing = check_shards(shards, c, digest, partial=c.allow_partial_merge)
        rows, incomplete = {}, Counter()
        for shard in shards:
            incomplete.update(shard.summary["incomplete_records"])
            # The shard's own records: exactly the outputs its run counted as current.
            rows.update((row["id"], row) for row in read_jsonl(Path(shard.folder) / RECORDS_FILE))
        foreign = set(rows) - {item["id"] for item in items}
        if foreign:  # the input hashes agreed, so only a records file edited by hand gets here
            raise ValueError(
                f"`merge`: {len(foreign)} records of the shards (e.g. {sorted(foreign)[0]!r}) are not in this input; "
                "give the output folders of shard runs as they wrote them."
            )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        stage_counts = {}
        for stage in STAGE_NAMES:
            store, merged = StageStore(self.output_dir / f"{stage}.jsonl"), set()
            for shard in shards:
                source = Path(shard.folder) / f"{stage}.jsonl"
                for entry in read_jsonl(source) if source.is_file() else []:
                    if store.entries.get(entry["id"]) != entry:
                        store.append(entry)
                    merged.add(entry["id"])
            store.close()
            stage_counts[stage] = {"merged": len(merged)}
        records = [rows[item["id"]] for item in items if item["id"] in rows]
        # Incomplete: as each shard counted its own (by first missing stage); the questions of missing shards: probe.
        count = shards[0].count
        left_out = sum(len(items[index::count]) for index in missing)
        if left_out:
            incomplete["probe"] += left_out
        sent = {stage for shard in shards for stage in shard.summary["stages_sent"]}
        extra = {
            "input_sha256": digest,
            "stages_sent": [stage for stage in STAGE_NAMES if stage in sent],
            "merged_shards": [shard.label for shard in sorted(shards, key=lambda shard: shard.index)],
            "missing_shards": [f"{index}/{count}" for index in missing],
        }
        return self._finish(items, dropped, stage_counts, records, incomplete, shards[0].summary["provenance"], extra)

    def _finish(self, items, dropped, stage_counts, records, incomplete, provenance, extra) -> dict[str, Any]:
        """Writes `records.jsonl` and `summary.json` (with the `extra` keys), prints the summary and returns it."""
        c = self.config
        path = self.output_dir / RECORDS_FILE
        write_jsonl(path, records, atomic=True)  # readers never see a half-written file
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
            "provenance": provenance,
            "input_settings": input_settings(c),
            **extra,
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
    if "merged_shards" in summary:
        missing = summary["missing_shards"]
        lines.append(
            f"  merged shards: {', '.join(summary['merged_shards'])}"
            + (f" (missing: {', '.join(missing)})" if missing else "")
        )
    lines.append(f"  records written: {summary['records']} -> {summary['records_file']}")
    if summary["incomplete_records"]:
        lines.append(f"  incomplete (first missing stage): {summary['incomplete_records']}")
    v = summary["verdicts"]
    lines.append(f"  verdicts: right {v['right']}, wrong {v['wrong']}, no verdict line {v['none']}")
    if any(summary["failed"].values()):
        lines.append(f"  failed requests (in <stage>.failures.jsonl, retried next run): {summary['failed']}")
    return "\n".join(lines)
