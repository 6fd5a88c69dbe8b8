r"""`cgd diagnose`: how much a critique reduces the model's uncertainty about the refined answer.

For each CGD record `(x, y', c, ŷ)` the model scores the refined answer `ŷ` token by token in three contexts:

| condition | context |
|---|---|
| `question` | x |
| `question+initial` | x, y' |
| `question+initial+critique` | x, y', c (the CGD training context, rendered by `CritiqueCollator`) |

and reports the mean negative log-likelihood (NLL, nats per token) of the refined-answer tokens and the mean entropy of
the model's predictive distribution at those positions. The paper's argument is that the critique makes `ŷ` much more
predictable (lower NLL and entropy), so CGD learns a low-uncertainty refinement mapping; this command measures it for
your model and data.

The refined answer is tokenized once, on its own, and appended to each context's tokens, so the scored tokens are
identical across the three conditions. The three contexts come from the one renderer of `cgd_trainer.record_format`,
in the same layout and with the same settings (columns, wording) that `CGDConfig` and `cgd build` take: the full one is
exactly what training renders, and `question+initial` exactly the context of `cgd build`'s `no_critique` condition, so
that what is measured is what those conditions train on.

```bash
cgd diagnose --model runs/qwen-cgd --dataset data/cgd.jsonl --max_records 500 --output_dir diagnose/
```
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..record_format import AblationSettings, RecordFormat, check_layout, record_format
from ..sources import load_source, resolve_model, write_jsonl
from .report import markdown_table

if TYPE_CHECKING:  # the collator imports transformers and TRL: loaded only when a model is scored
    from ..collator import CritiqueCollator

logger = logging.getLogger(__name__)

CONDITIONS = ("question", "question+initial", "question+initial+critique")
# How the report words the direction of a change in NLL or entropy: lower is less uncertain.
DIRECTION_WORDS = {
    "lower": "lower: less uncertain",
    "higher": "higher: more uncertain",
    "unchanged": "unchanged",
}


@dataclass
class DiagnoseConfig(AblationSettings):
    """
    Configuration of `cgd diagnose` (YAML with `--config`, flags override it). The record's columns, layout and
    wording are the settings of [`~record_format.AblationSettings`], declared once for `cgd diagnose`, `CGDConfig` and
    `cgd build`: give the values training and the build used.

    Args:
        model (`str`): Hub id or local folder of the model to probe (a training checkpoint works), or
            a built-in model (`builtin:smollm2-135m-instruct`, `builtin:tiny-chatml`, ...).
        dataset (`str`): CGD records: a JSONL/JSON/Parquet file, a hub dataset, or `builtin:demo`.
        dataset_split (`str`): Split of a hub dataset (local files have `train`).
        prompt_field, initial_response_field, critique_field, refined_response_field (`str`): Record columns.
        cgd_layout (`str`): CGD layout of the contexts (`auto`, `single_turn`, `multi_turn`, `plain`), as in training.
        layout (`str`, *optional*): The name `cgd_layout` had here first, still accepted.
        cgd_instruction, cgd_template, cgd_critique_template (`str`, *optional*): The CGD wording, if training used a
            custom one (see [`CGDConfig`]).
        no_critique_instruction (`str`, *optional*): The wording of `question+initial`, as `cgd build` was given it.
        max_records (`int`, *optional*): Score only the first records.
        max_length (`int`, *optional*): Records whose longest sequence exceeds it are skipped (and counted).
        batch_size (`int`): Sequences per forward pass.
        dtype (`str`): `auto`, `bfloat16`, `float16` or `float32`.
        device (`str`, *optional*): Defaults to CUDA when available.
        trust_remote_code (`bool`): Allow custom model code.
        output_dir (`str`): Where `diagnose.json`, `diagnose.md` and `diagnose_records.jsonl` go.
    """

    model: str | None = field(default=None, metadata={"help": "Model to probe."})
    dataset: str = field(default="builtin:demo", metadata={"help": "CGD records (file, hub id or builtin:demo)."})
    dataset_split: str = field(default="train", metadata={"help": "Split of the dataset."})
    layout: str | None = field(default=None, metadata={"help": "The older name of --cgd_layout, still accepted."})
    max_records: int | None = field(default=None, metadata={"help": "First records only."})
    max_length: int | None = field(default=None, metadata={"help": "Skip records longer than this (tokens)."})
    batch_size: int = field(default=8, metadata={"help": "Sequences per forward pass."})
    dtype: str = field(default="auto", metadata={"help": "auto, bfloat16, float16 or float32."})
    device: str | None = field(default=None, metadata={"help": "Device."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code."})
    output_dir: str = field(default="diagnose_output", metadata={"help": "Output folder."})

    def __post_init__(self) -> None:
        # `layout` is an alias: whichever of the two names is set (to something other than `auto`) decides.
        if self.layout is not None:
            check_layout(self.layout, "layout")
        chosen = {value for value in (self.layout, self.cgd_layout) if value not in (None, "auto")}
        if len(chosen) > 1:
            raise ValueError(
                f"`layout` is another name of `cgd_layout`; set one of them (got layout={self.layout!r}, "
                f"cgd_layout={self.cgd_layout!r})."
            )
        self.cgd_layout = chosen.pop() if chosen else self.cgd_layout
        super().__post_init__()
        self.layout = self.cgd_layout
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1, got {self.batch_size}.")
        if self.max_records is not None and self.max_records < 1:
            raise ValueError(f"`max_records` must be at least 1, got {self.max_records}.")


def render_contexts(
    record: Mapping[str, Any],
    collator: CritiqueCollator,
    layout: str,
    index: int | None = None,
    fmt: RecordFormat | None = None,
):
    """
    Renders the three contexts of one CGD record.

    Args:
        record (`Mapping`): The CGD record.
        collator ([`CritiqueCollator`]): Renders the full CGD context, as training does (and validates the record).
        layout (`str`): `single_turn`, `multi_turn` or `plain`.
        index (`int`, *optional*): Position of the record, for error messages.
        fmt ([`~record_format.RecordFormat`], *optional*): The format of the two shorter contexts (the wording of
            the context without a critique); defaults to the collator's, with the library's wording for it.

    Returns:
        `dict`: `{condition: prompt}`, chat messages (without the answer) for chat layouts, text for `plain`.
    """
    full = collator.format(record, layout, index=index, dataset_name="diagnose")["prompt"]
    fmt = fmt or collator.record_format
    parts = fmt.parts(record)
    return {
        CONDITIONS[0]: fmt.render("question", parts, layout, index, "diagnose"),
        # The `no_critique` condition's context, word for word.
        CONDITIONS[1]: fmt.render("no_critique", parts, layout, index, "diagnose"),
        CONDITIONS[2]: full,
    }


def context_ids(prompt: list[dict[str, str]] | str, tokenizer) -> list[int]:
    """
    Token ids of a context, up to where the answer starts: the chat template with its generation prompt, or the
    plain text with the tokenizer's special tokens (a base model's bos).

    Args:
        prompt (`list[dict]` or `str`): Chat messages or plain text.
        tokenizer: The model's tokenizer.

    Returns:
        `list[int]`
    """
    if isinstance(prompt, list):
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def target_ids(refined: str, tokenizer) -> list[int]:
    """The refined answer's tokens, on their own: the same ids are appended to every context."""
    return list(tokenizer(refined, add_special_tokens=False)["input_ids"])


def score_sequences(
    model, pairs: Sequence[tuple[list[int], list[int]]], pad_token_id: int, batch_size: int = 8
) -> list[tuple[list[float], list[float]]]:
    """
    Per-token NLL and predictive entropy of each target given its context.

    Args:
        model: A causal LM.
        pairs (`Sequence[tuple[list[int], list[int]]]`): `(context ids, target ids)`; the target is scored.
        pad_token_id (`int`): Right-padding id (masked out).
        batch_size (`int`): Sequences per forward pass.

    Returns:
        `list[tuple[list[float], list[float]]]`: For each pair, the NLL (nats) and the entropy (nats) at each target
        token, in input order.
    """
    import torch

    device = next(model.parameters()).device
    results: list[tuple[list[float], list[float]] | None] = [None] * len(pairs)
    # Similar lengths together: less padding.
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        sequences = [pairs[i][0] + pairs[i][1] for i in indices]
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            input_ids[row, : len(sequence)] = torch.tensor(sequence)
            attention_mask[row, : len(sequence)] = 1
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        for row, i in enumerate(indices):
            context, target = pairs[i]
            if not target:
                results[i] = ([], [])
                continue
            # The logits at position t predict token t + 1.
            positions = slice(len(context) - 1, len(context) + len(target) - 1)
            log_probs = torch.log_softmax(logits[row, positions].float(), dim=-1)
            labels = torch.tensor(target, device=log_probs.device)
            nll = -log_probs.gather(-1, labels[:, None]).squeeze(-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1)
            results[i] = (nll.tolist(), entropy.tolist())
    return results  # type: ignore[return-value]


def _load_records(config: DiagnoseConfig) -> list[dict[str, Any]]:
    dataset = load_source(config.dataset)
    if config.dataset_split not in dataset:
        raise ValueError(
            f"The dataset {config.dataset} has no split {config.dataset_split!r}; it has {list(dataset)}."
        )
    split = dataset[config.dataset_split]
    if config.max_records is not None:
        split = split.select(range(min(config.max_records, len(split))))
    return [dict(row) for row in split]


def _summary_stats(values: list[list[float]]) -> dict[str, float | None]:
    pooled = [v for row in values for v in row]
    per_record = [statistics.fmean(row) for row in values if row]
    return {
        "mean": statistics.fmean(pooled) if pooled else None,
        "mean_per_record": statistics.fmean(per_record) if per_record else None,
    }


def _reduction(before: float | None, after: float | None) -> dict[str, float | None]:
    """The drop from `before` to `after` (positive when `after` is lower): the summary's `*_reduction` keys."""
    if before is None or after is None:
        return {"absolute": None, "relative": None}
    return {"absolute": before - after, "relative": (before - after) / before if before else None}


def _change(before: float | None, after: float | None) -> dict[str, Any]:
    """
    The signed change from `before` to `after`, `after - before`: positive when the longer context leaves the model
    more uncertain about the refined answer (`direction` "higher"), negative when less ("lower").
    """
    if before is None or after is None:
        return {"before": before, "after": after, "absolute": None, "relative": None, "direction": None}
    direction = "higher" if after > before else "lower" if after < before else "unchanged"
    return {
        "before": before,
        "after": after,
        "absolute": after - before,
        "relative": (after - before) / before if before else None,
        "direction": direction,
    }


def diagnose(config: DiagnoseConfig, model=None, tokenizer=None) -> dict[str, Any]:
    """
    Runs the refinement-uncertainty diagnostic and writes `diagnose.json`, `diagnose.md` and
    `diagnose_records.jsonl` to `config.output_dir`.

    Args:
        config ([`DiagnoseConfig`]): The configuration.
        model, tokenizer (*optional*): An already loaded model and tokenizer (then `config.model` only labels them).

    Returns:
        `dict`: The summary: per condition the mean NLL and entropy (pooled over tokens, and averaged per record),
        the changes the critique brings (`critique_change`, `context_change`: after - before, with `direction`; the
        older `*_reduction` keys hold before - after), and counts.
    """
    import torch
    from tqdm.auto import tqdm

    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if model is None or tokenizer is None:
        if not config.model:
            raise ValueError("Set `model` (a hub id, a local folder or `builtin:smollm2-135m-instruct`).")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = resolve_model(config.model, output_dir)  # a built-in model: built there, or converted, once
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=config.trust_remote_code)
        dtype = config.dtype if config.dtype == "auto" else getattr(torch, config.dtype)
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=config.trust_remote_code).to(
            device
        )
    from ..collator import CritiqueCollator

    model.eval()
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_token_id is None:
        pad_token_id = 0  # padded positions are masked and never scored

    # The same settings as training: `max_length` here skips long records, it never shortens them.
    collator = CritiqueCollator.from_config(config, processing_class=tokenizer, max_length=None)
    fmt = record_format(config)
    layout = collator.resolve_layout()
    records = _load_records(config)

    pairs: list[tuple[list[int], list[int]]] = []
    kept: list[tuple[int, dict[str, Any], int]] = []  # (record index, record, first pair index)
    skipped_long = skipped_empty = 0
    for index, record in enumerate(records):
        contexts = render_contexts(record, collator, layout, index, fmt)
        target = target_ids(record[config.refined_response_field], tokenizer)
        if not target:
            skipped_empty += 1
            continue
        ids = [context_ids(contexts[condition], tokenizer) for condition in CONDITIONS]
        if config.max_length is not None and max(len(c) for c in ids) + len(target) > config.max_length:
            skipped_long += 1
            continue
        kept.append((index, record, len(pairs)))
        pairs.extend((context, target) for context in ids)
    if skipped_long:
        logger.warning("Skipped %d records longer than max_length=%s tokens.", skipped_long, config.max_length)
    if not kept:
        raise ValueError(f"No record of {config.dataset} could be scored (skipped: {skipped_long} too long).")

    scores: list[tuple[list[float], list[float]]] = []
    progress = tqdm(total=len(pairs), desc="diagnose", unit="sequence", file=sys.stderr)
    for start in range(0, len(pairs), config.batch_size * 8):
        chunk = pairs[start : start + config.batch_size * 8]
        scores.extend(score_sequences(model, chunk, pad_token_id, config.batch_size))
        progress.update(len(chunk))
    progress.close()

    nll: dict[str, list[list[float]]] = {c: [] for c in CONDITIONS}
    entropy: dict[str, list[list[float]]] = {c: [] for c in CONDITIONS}
    rows = []
    for index, record, first in kept:
        row: dict[str, Any] = {"index": index, "id": record.get("id"), "target_tokens": len(pairs[first][1])}
        for offset, condition in enumerate(CONDITIONS):
            token_nll, token_entropy = scores[first + offset]
            nll[condition].append(token_nll)
            entropy[condition].append(token_entropy)
            row[condition] = {
                "context_tokens": len(pairs[first + offset][0]),
                "nll": statistics.fmean(token_nll),
                "entropy": statistics.fmean(token_entropy),
            }
        rows.append(row)
    write_jsonl(output_dir / "diagnose_records.jsonl", rows)

    conditions = {}
    for condition in CONDITIONS:
        n, h = _summary_stats(nll[condition]), _summary_stats(entropy[condition])
        conditions[condition] = {
            "mean_nll": n["mean"],
            "mean_entropy": h["mean"],
            "perplexity": math.exp(n["mean"]) if n["mean"] is not None else None,
            "mean_nll_per_record": n["mean_per_record"],
            "mean_entropy_per_record": h["mean_per_record"],
        }
    q, qa, qac = (conditions[c] for c in CONDITIONS)
    summary = {
        "model": config.model or getattr(model, "name_or_path", None),
        "dataset": config.dataset,
        "layout": layout,
        "records": len(kept),
        "target_tokens": sum(len(pairs[first][1]) for _, _, first in kept),
        "skipped_too_long": skipped_long,
        "skipped_empty_target": skipped_empty,
        "conditions": conditions,
        "critique_reduction": {
            "nll": _reduction(qa["mean_nll"], qac["mean_nll"]),
            "entropy": _reduction(qa["mean_entropy"], qac["mean_entropy"]),
        },
        "context_reduction": {
            "nll": _reduction(q["mean_nll"], qac["mean_nll"]),
            "entropy": _reduction(q["mean_entropy"], qac["mean_entropy"]),
        },
        # The same comparisons signed as `after - before`, which the report prints; the `*_reduction` keys above are
        # `before - after` (a rise shows there as a negative reduction) and stay for readers of older summaries.
        "critique_change": {
            "nll": _change(qa["mean_nll"], qac["mean_nll"]),
            "entropy": _change(qa["mean_entropy"], qac["mean_entropy"]),
        },
        "context_change": {
            "nll": _change(q["mean_nll"], qac["mean_nll"]),
            "entropy": _change(q["mean_entropy"], qac["mean_entropy"]),
        },
        "config": asdict(config),
    }
    (output_dir / "diagnose.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    (output_dir / "diagnose.md").write_text(render_markdown(summary), "utf-8")
    return summary


def render_markdown(summary: Mapping[str, Any]) -> str:
    """
    The markdown report of `cgd diagnose`.

    Args:
        summary (`Mapping`): What [`diagnose`] returns.

    Returns:
        `str`: The report.
    """

    def number(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    def signed(value: float | None, scale: float = 1.0, digits: int = 3, unit: str = "") -> str:
        # An explicit sign on every change, so that a rise never reads as a drop; "n/a", not a bare "-", when unknown.
        return "n/a" if value is None else f"{scale * value:+.{digits}f}{unit}"

    rows = [
        [c, number(v["mean_nll"]), number(v["mean_entropy"]), number(v["perplexity"], 2)]
        for c, v in summary["conditions"].items()
    ]
    conditions = summary["conditions"]
    changes = []
    for name, before, after in (
        ("critique (x, y' → x, y', c)", "question+initial", "question+initial+critique"),
        ("all (x → x, y', c)", "question", "question+initial+critique"),
    ):
        for metric in ("nll", "entropy"):
            change = _change(conditions[before][f"mean_{metric}"], conditions[after][f"mean_{metric}"])
            changes.append(
                [
                    name,
                    metric,
                    number(change["before"]),
                    number(change["after"]),
                    signed(change["absolute"]),
                    signed(change["relative"], 100, 1, "%"),
                    DIRECTION_WORDS.get(change["direction"], "n/a"),
                ]
            )
    lines = [
        "# Refinement uncertainty",
        "",
        f"Model `{summary['model']}` on `{summary['dataset']}` (layout {summary['layout']}): {summary['records']} "
        f"records, {summary['target_tokens']} refined-answer tokens scored in each context "
        f"({summary['skipped_too_long']} records skipped as too long). Means over tokens, in nats.",
        "",
        markdown_table(["context", "mean NLL", "mean entropy", "perplexity"], rows),
        "",
        "## Change when the context grows",
        "",
        "change = after − before, signed. Negative (lower) means the longer context leaves the model less uncertain "
        "about the refined answer, as the paper expects of the critique; positive (higher) means more uncertain.",
        "",
        markdown_table(["from → to", "metric", "before", "after", "change", "relative change", "direction"], changes),
        "",
    ]
    return "\n".join(lines)
