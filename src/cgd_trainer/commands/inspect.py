"""`cgd inspect`: what a training recipe trains, record by record, through the trainer's own preparation.

```bash
cgd inspect --config qwen2.5-math-7b/full --dataset_name data/cgd.jsonl --index 12 --count 3
```

It reads the same recipe and flags as `cgd train`, loads the tokenizer (not the model), and prints each record as the
student sees it, with the tokens the loss trains on marked: in colour on a terminal, between `[[` and `]]` otherwise.
Each record also gets its token counts (context, trained target, total against `max_length`) and whether it was kept,
shortened to fit, or dropped.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field

from . import EXIT_OK
from .parser import UsageError

TRAINED_OPEN, TRAINED_CLOSE = "[[", "]]"
COLOR_OPEN, COLOR_CLOSE = "\x1b[1;32m", "\x1b[0m"  # bold green
COLORS = ("auto", "always", "never")
# Settings that only matter on the training hardware: overridden so that a GPU recipe can be inspected on a laptop.
CPU_OVERRIDES = ["--bf16", "false", "--fp16", "false", "--use_cpu", "true"]


@dataclass
class InspectArguments:
    """Which records `cgd inspect` shows, and how."""

    index: int = field(default=0, metadata={"help": "Position of the first record to show in the split (from 0)."})
    count: int = field(default=1, metadata={"help": "Number of records to show."})
    split: str | None = field(
        default=None, metadata={"help": "Split to read; defaults to the recipe's `dataset_train_split`."}
    )
    color: str = field(
        default="auto",
        metadata={"help": "Mark trained tokens in colour: auto (on a terminal), always, never.", "choices": COLORS},
    )


def render(tokenizer, input_ids: list[int], labels: list[int], color: bool) -> str:
    """
    The decoded text of a prepared row with its trained tokens (labels other than -100) marked.

    Args:
        tokenizer: The tokenizer that made the row.
        input_ids: The row's token ids.
        labels: The row's labels, -100 where nothing is trained.
        color: Mark with a terminal colour instead of `[[`/`]]`.

    Returns:
        `str`: The text.
    """
    opening, closing = (COLOR_OPEN, COLOR_CLOSE) if color else (TRAINED_OPEN, TRAINED_CLOSE)
    pieces, start = [], 0
    for end in range(1, len(input_ids) + 1):
        if end == len(input_ids) or (labels[end] != -100) != (labels[start] != -100):
            text = tokenizer.decode(input_ids[start:end])
            pieces.append(f"{opening}{text}{closing}" if labels[start] != -100 else text)
            start = end
    return "".join(pieces)


def describe(index: int, row: dict | None, status: str, max_length: int | None, layout: str) -> str:
    """The header of one record: where it is, what happened to it, and its token counts."""
    limit = f"max_length={max_length}"
    if row is None:
        reason = (
            f"its refined answer alone does not fit {limit}"
            if status == "dropped"
            else f"TRL's truncation at {limit} left none of its refined answer"
        )
        return f"record {index}: dropped, not trained ({reason})"
    trained = sum(label != -100 for label in row["labels"])
    context = len(row["input_ids"]) - trained
    what = "shortened to fit (the cut parts end with the truncation marker)" if status == "shortened" else status
    total = f"{len(row['input_ids'])} tokens" + (f" of {limit}" if max_length else "")
    return (
        f"record {index}: {what}; layout {layout}; {total}: {context} context (not trained) + {trained} trained "
        "(the refined answer and what closes it)"
    )


def make_parser(prog: str | None = "cgd inspect"):
    """The `cgd inspect` parser: the training parser's arguments (the recipe's) and the [`InspectArguments`]."""
    from . import train as train_command

    return train_command.make_parser(prog=prog, extra_types=(InspectArguments,))


def run(argv: list[str], prog: str = "cgd inspect", stream=None) -> list[dict | None]:
    """
    Shows records of a training recipe's data as the trainer prepares them.

    Returns:
        `list`: Per record shown, its prepared row (`input_ids`, `labels`), or `None` when it is not trained.
    """
    from . import train as train_command

    stream = stream if stream is not None else sys.stdout
    parsed = train_command.parse([*argv, *CPU_OVERRIDES], prog=prog, extra_types=(InspectArguments,))
    script_args, training_args, model_args, dataset_args, _, options = parsed
    if options.index < 0 or options.count < 1:
        raise UsageError(f"--index must be 0 or more and --count 1 or more, got {options.index} and {options.count}.")
    records = _select(script_args, dataset_args, options)
    tokenizer = _load_tokenizer(model_args, training_args)
    training_args.dataset_num_proc = None  # a few records: worker processes would only cost time

    with _quiet():
        return _show(records, options, tokenizer, training_args, stream)


def _show(records: list[dict], options: InspectArguments, tokenizer, training_args, stream) -> list[dict | None]:
    from datasets import Dataset

    from ..collator import CritiqueCollator
    from ..trainer import DROPPED, SHORTENED, prepare_records

    color = options.color == "always" or (options.color == "auto" and _is_terminal(stream))
    marks = "in colour" if color else f"between {TRAINED_OPEN} and {TRAINED_CLOSE}"
    print(f"Trained tokens are shown {marks}; everything else is context the loss does not train.", file=stream)
    rows = []
    for offset, record in enumerate(records):
        index = options.index + offset
        prepared, counts = prepare_records(Dataset.from_list([record]), tokenizer, training_args, "train")
        status = DROPPED if counts.get(DROPPED) else SHORTENED if counts.get(SHORTENED) else "kept"
        row = prepared[0] if len(prepared) else None
        layout = CritiqueCollator.from_config(training_args).resolve_layout(tokenizer)
        print(f"\n=== {describe(index, row, status, training_args.max_length, layout)}", file=stream)
        if row is not None:
            print(render(tokenizer, row["input_ids"], row["labels"], color), file=stream)
        rows.append(row)
    return rows


@contextmanager
def _quiet():
    # Per-record counts and the layout are shown in each record's header: the preparation's own messages and progress
    # bars are held back while it runs, and restored after (a caller's logging is left as it was).
    from datasets.utils.logging import disable_progress_bar, enable_progress_bar, is_progress_bar_enabled

    loggers = {name: logging.getLogger(name) for name in ("cgd_trainer.trainer", "cgd_trainer.collator")}
    levels = {name: logger.level for name, logger in loggers.items()}
    bars = is_progress_bar_enabled()
    loggers["cgd_trainer.trainer"].setLevel(logging.ERROR)
    loggers["cgd_trainer.collator"].setLevel(logging.WARNING)
    disable_progress_bar()
    try:
        yield
    finally:
        for name, logger in loggers.items():
            logger.setLevel(levels[name])
        if bars:
            enable_progress_bar()


def _is_terminal(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty() and not os.environ.get("NO_COLOR")


def _select(script_args, dataset_args, options: InspectArguments) -> list[dict]:
    from ..scripts.train import load_datasets

    splits = load_datasets(script_args, dataset_args)
    split = options.split or script_args.dataset_train_split
    if split not in splits:
        raise UsageError(f"--split {split}: the data has no such split; it has {list(splits)}.")
    dataset = splits[split]
    if hasattr(dataset, "__len__"):
        if options.index >= len(dataset):
            raise UsageError(
                f"--index {options.index}: the {split} split has {len(dataset)} records (0 to {len(dataset) - 1})."
            )
        end = min(len(dataset), options.index + options.count)
        return [dataset[i] for i in range(options.index, end)]
    records = list(dataset.skip(options.index).take(options.count))  # streaming
    if not records:
        raise UsageError(f"--index {options.index}: the {split} split has fewer records than that.")
    return records


def _load_tokenizer(model_args, training_args):
    import tempfile

    from transformers import AutoProcessor

    from ..sources import is_builtin, resolve_model

    model_id = model_args.model_name_or_path
    if not model_id:
        raise UsageError("Set `model_name_or_path` (its tokenizer renders the records).")
    kwargs = {"revision": model_args.model_revision, "trust_remote_code": training_args.trust_remote_code}
    if is_builtin(model_id):  # built in a scratch folder: inspecting writes nothing into the run's output_dir
        with tempfile.TemporaryDirectory() as scratch:
            return AutoProcessor.from_pretrained(resolve_model(model_id, scratch), **kwargs)
    return AutoProcessor.from_pretrained(model_id, **kwargs)


def main(argv: list[str]) -> int:
    run(argv)
    return EXIT_OK
