"""
The one place `cgd_trainer` touches TRL's internals.

`CGDTrainer` is a thin subclass of TRL's `SFTTrainer`, and a few of the things it needs are not TRL's public API: a
private tokenizing helper, the trainer's metric buffers, the hook that prepares datasets, the attributes that hook
reads. Those are the first lines to break on a TRL release, so every one of them lives here, as a small function whose
note says what it relies on and where that is in TRL 1.16. The rest of the package calls these functions and never
names a private TRL attribute itself (`tests/training/test_trl_boundary.py` checks both: that each name below still
has the shape we rely on in the installed TRL, and that no other module uses them).

The public helpers TRL does not export from its top level (`trl.data_utils`, `trl.trainer.utils`, ...) are imported
here too, so that a module move in TRL is also fixed in one place.

Upgrading TRL: run `tests/training/test_trl_boundary.py` against the new release, fix what it names here, then record
the new version in `CHECKED_ON` and widen `TRL_REQUIREMENT` (and `pyproject.toml`, which must say the same).
"""

from __future__ import annotations

from typing import Any

from trl.chat_template_utils import get_training_chat_template, has_generation_markers
from trl.data_utils import _tokenize, common_prefix_length, get_dataset_column_names
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
from trl.trainer.utils import global_then_local_main_first

__all__ = [
    "CHECKED_ON",
    "PRIVATE_ATTRIBUTES",
    "TRL_REQUIREMENT",
    "DataCollatorForLanguageModeling",
    "add_train_tokens",
    "aux_loss_enabled",
    "bare_trainer",
    "common_prefix_length",
    "get_dataset_column_names",
    "get_training_chat_template",
    "global_then_local_main_first",
    "has_generation_markers",
    "log_metric",
    "padding_free",
    "prepare_dataset",
    "stand_in",
    "swap_back",
    "tokenize",
    "training_chat_template",
]

# The TRL releases CI tests; `pyproject.toml` pins the same range (a test checks they agree).
TRL_REQUIREMENT = ">=1.16,<1.17"

# Each TRL internal used below, where it lives, and the TRL version it was last checked on. The test checks every
# version against `TRL_REQUIREMENT` and every name against the installed TRL.
CHECKED_ON = {
    # Private names.
    "trl.data_utils._tokenize": "1.16.0",
    "trl.trainer.sft_trainer.SFTTrainer._prepare_dataset": "1.16.0",
    "SFTTrainer._metrics": "1.16.0",
    "SFTTrainer._total_train_tokens": "1.16.0",
    "SFTTrainer._tp_size": "1.16.0",
    "SFTTrainer._tokenizer": "1.16.0",
    "transformers.Trainer._signature_columns": "1.16.0",  # with transformers 5.24
    "trl.trainer.base_trainer._BaseTrainer._tag_names": "1.16.0",
    "trl.trainer.base_trainer._BaseTrainer._name": "1.16.0",
    "trl.trainer.base_trainer._BaseTrainer._paper": "1.16.0",
    # Undocumented attributes `SFTTrainer.__init__` sets, and the order in which it uses its training data.
    "SFTTrainer.chat_template": "1.16.0",
    "SFTTrainer.completion_only_loss": "1.16.0",
    "SFTTrainer.padding_free": "1.16.0",
    "SFTTrainer.aux_loss_enabled": "1.16.0",
    "SFTTrainer.__init__ samples train_dataset before preparing it": "1.16.0",
    # Public helpers imported from TRL's submodules (not exported by `trl`).
    "trl.data_utils.common_prefix_length": "1.16.0",
    "trl.data_utils.get_dataset_column_names": "1.16.0",
    "trl.trainer.sft_trainer.DataCollatorForLanguageModeling": "1.16.0",
    "trl.trainer.utils.global_then_local_main_first": "1.16.0",
    "trl.chat_template_utils.has_generation_markers": "1.16.0",
    "trl.chat_template_utils.get_training_chat_template": "1.16.0",
}

# Private attributes of TRL's (and transformers') trainers that only this module may name (and `CGDTrainer`, which
# declares `_tag_names`, `_name` and `_paper` as every TRL trainer does, and overrides the `_prepare_dataset` hook).
PRIVATE_ATTRIBUTES = (
    "_metrics",
    "_total_train_tokens",
    "_tp_size",
    "_tokenizer",
    "_signature_columns",
    "_prepare_dataset",
    "_tag_names",
    "_name",
    "_paper",
)

# What `bare_trainer` sets: everything `SFTTrainer._prepare_dataset` reads from the trainer (a test checks it).
BARE_TRAINER_ATTRIBUTES = ("args", "_tokenizer", "_signature_columns", "chat_template", "completion_only_loss")


def tokenize(processing_class: Any, input: str | list, **apply_chat_template_kwargs) -> dict[str, list]:
    """
    Tokenizes one prompt or prompt+completion exactly as TRL's dataset preparation does.

    Relies on the private `trl.data_utils._tokenize(processing_class, input, **apply_chat_template_kwargs)`
    (`data_utils.py:367` in 1.16): a list of messages goes through `apply_chat_template(tokenize=True,
    return_dict=True, ...)`, a string through `processing_class(text=input)`; the result has a flat `input_ids` list.
    `tokenization.ExampleEncoder` reproduces this in batches (the rendered chat tokenized without special tokens, plain
    text with them) and calls it as it is for processors, whose rendering is their own.
    """
    return _tokenize(processing_class, input, **apply_chat_template_kwargs)


def prepare_dataset(
    trainer: Any,
    dataset: Any,
    processing_class: Any,
    args: Any,
    packing: bool,
    formatting_func: Any,
    dataset_name: str,
    fitted: bool = False,
) -> Any:
    """
    Runs TRL's dataset preparation (formatting, tokenization, labels, truncation, packing) on `dataset`.

    `trainer` is a trainer or `super()` inside an override of the hook. Relies on the private
    `SFTTrainer._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)`
    (`sft_trainer.py:1228` in 1.16), which `SFTTrainer.__init__` calls for the train and eval sets (:1026-1039) and
    `evaluate()` for a dataset passed to it (:1539-1547). `CGDTrainer` overrides that hook to render CGD records first;
    the override must keep this signature.

    With `fitted=True` the rows are CGD's tokenized records, each within `max_length` and with a trained token: TRL's
    truncation to `max_length` and its removal of fully masked rows (:1436-1462), which it runs only when `max_length`
    is set and the rows are not packed, would change nothing but cost two passes over every token in Python. They are
    skipped by hiding `max_length` from TRL while it prepares the rows; nothing else in the method reads it then.
    """
    if fitted and not packing and args.max_length is not None:
        max_length, args.max_length = args.max_length, None
        try:
            return trainer._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)
        finally:
            args.max_length = max_length
    return trainer._prepare_dataset(dataset, processing_class, args, packing, formatting_func, dataset_name)


def bare_trainer(cls: type, args: Any, tokenizer: Any, chat_template: str | None, completion_only_loss: bool) -> Any:
    """
    An instance of trainer class `cls` made without `__init__` (no model), on which `prepare_dataset` can run.

    Relies on `SFTTrainer._prepare_dataset` (1.16) reading only `args` (passed in as well), `self._tokenizer` (set at
    `sft_trainer.py:719-723` from the processing class), `self.chat_template` (the training template of
    `assistant_only_loss`, :940-944) and `self.completion_only_loss` (:961-964). `_signature_columns` is set to
    `None` as `transformers.Trainer.__init__` sets it. The caller sets its own attributes on the result.
    """
    trainer = cls.__new__(cls)
    trainer.args = args
    trainer._tokenizer = tokenizer
    trainer._signature_columns = None
    trainer.chat_template = chat_template
    trainer.completion_only_loss = completion_only_loss
    return trainer


def stand_in(pending: list[tuple[Any, Any]], raw: Any, substitute: Any) -> Any:
    """
    Records that `substitute` is handed to `SFTTrainer.__init__` in place of the training set `raw`, and returns it.

    Relies on `SFTTrainer.__init__` (1.16) deciding the loss mask from `next(iter(train_dataset))`
    (`sft_trainer.py:761`, used at :933-964) before it prepares any data, and then passing that same object to
    `_prepare_dataset` (:1026), where `swap_back` puts the real data back. `pending` is the trainer's list of swaps.
    """
    pending.append((substitute, raw))
    return substitute


def swap_back(pending: list[tuple[Any, Any]], dataset: Any) -> Any:
    """The training set that `dataset` stands in for (see `stand_in`), or `dataset` itself."""
    for substitute, raw in pending:
        if dataset is substitute:
            dataset = raw
    return dataset


def log_metric(trainer: Any, mode: str, name: str, value: float) -> None:
    """
    Adds one value to a metric TRL averages and logs.

    Relies on `SFTTrainer._metrics`, `{"train": defaultdict(list), "eval": defaultdict(list)}` (set at
    `sft_trainer.py:1214` in 1.16), whose lists `SFTTrainer.log` averages and clears (:1695-1706); TRL's
    `compute_loss` appends its `entropy` and `mean_token_accuracy` there (:1643-1644).
    """
    trainer._metrics[mode][name].append(value)


def add_train_tokens(trainer: Any, mode: str, seen: int | None) -> None:
    """
    Counts `seen` more training tokens (gathered over all processes; `None` in eval) and logs the total as TRL does.

    Relies on `SFTTrainer._total_train_tokens` (:1215 in 1.16) and `SFTTrainer._tp_size`, the tensor-parallel group
    size (:1220-1223), which divides the gathered count because tensor-parallel ranks see the same batch; and on
    TRL logging the total as the `num_tokens` metric (`sft_trainer.py:1656-1657`).
    """
    if seen is not None:
        trainer._total_train_tokens += seen // trainer._tp_size
    trainer._metrics[mode]["num_tokens"] = [trainer._total_train_tokens]


def training_chat_template(trainer: Any) -> str | None:
    """
    The chat template TRL swapped in for `assistant_only_loss` (one with `{% generation %}` markers), if any.

    Relies on `SFTTrainer.chat_template`, set in `__init__` (`sft_trainer.py:940-944` in 1.16) and passed to
    `apply_chat_template` when tokenizing.
    """
    return getattr(trainer, "chat_template", None)


def padding_free(trainer: Any) -> bool:
    """
    Whether the trainer builds padding-free batches (bfd packing or `padding_free=True`).

    Relies on `SFTTrainer.padding_free`, set in `__init__` (`sft_trainer.py:916` in 1.16).
    """
    return getattr(trainer, "padding_free", False)


def aux_loss_enabled(trainer: Any) -> bool:
    """
    Whether TRL adds a mixture-of-experts router's load-balancing loss to the loss.

    Relies on `SFTTrainer.aux_loss_enabled`, set in `__init__` (`sft_trainer.py:1205` in 1.16).
    """
    return trainer.aux_loss_enabled
