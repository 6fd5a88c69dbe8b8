"""`CGDTrainer`: TRL's `SFTTrainer` for Critique-Guided Distillation records."""

from __future__ import annotations

import logging
import textwrap
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from datasets import Dataset, IterableDataset
from datasets.fingerprint import Hasher
from transformers import PreTrainedTokenizerBase, ProcessorMixin, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_utils import EvalPrediction
from trl import SFTConfig, SFTTrainer

from . import trl_boundary
from .collator import DROPPED, KEPT, SHORTENED, CritiqueCollator, has_chat_template
from .config import CGDConfig
from .sources import BUILTIN_PREFIX, is_builtin, resolve_model
from .trl_boundary import (
    get_dataset_column_names,
    get_training_chat_template,
    global_then_local_main_first,
    has_generation_markers,
)

logger = logging.getLogger(__name__)

_STATUS = "__cgd_status__"
# Records rendered and tokenized together: one call to the fast tokenizer per batch.
PREPARE_BATCH_SIZE = 512


class CGDTrainer(SFTTrainer):
    r"""
    Trainer for Critique-Guided Distillation ([arXiv 2505.11628](https://huggingface.co/papers/2505.11628)).

    A drop-in [`~trl.SFTTrainer`] with the same signature. Raw CGD records (columns `prompt`, `initial_response`,
    `critique`, `refined_response`; names set in [`CGDConfig`]) are rendered by [`CritiqueCollator`] with the question,
    initial answer and critique as the context and the refined answer as the completion, and tokenized exactly as TRL
    tokenizes prompt-completion data, with labels on the refined answer only; TRL's own truncation, packing,
    padding-free batching and fused LM-head loss then do the rest. Records longer than `max_length` have their
    context shortened instead of their refined answer (see `cgd_truncation`). Prompt-completion, conversational or
    plain-text SFT data passes through untouched.

    Counts of kept, shortened and dropped records per dataset are logged and kept in `trainer.cgd_stats`.
    All arguments are those of [`~trl.SFTTrainer`]; `args` may be a [`CGDConfig`] or a plain `SFTConfig`.
    """

    # TRL's trainer convention: the tags, name and paper it writes into every model card (see `trl_boundary`).
    _tag_names = ["trl", "sft", "cgd"]
    _name = "CGD"
    _paper = {
        "title": "Critique-Guided Distillation for Robust Reasoning via Refinement",
        "id": "2505.11628",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @inproceedings{kapusuzoglu2026critique,
                title        = {{Critique-Guided Distillation for Robust Reasoning via Refinement}},
                author       = {Kapusuzoglu and others},
                year         = 2026,
                booktitle    = {International Conference on Machine Learning (ICML)},
                eprint       = {arXiv:2505.11628},
            }"""),
    }

    def __init__(
        self,
        model: Any,
        args: SFTConfig | TrainingArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | IterableDataset | dict[str, Dataset | IterableDataset] | None = None,
        processing_class: PreTrainedTokenizerBase | ProcessorMixin | None = None,
        compute_loss_func: Callable | None = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        optimizer_cls_and_kwargs: tuple[type[torch.optim.Optimizer], dict[str, Any]] | None = None,
        preprocess_logits_for_metrics: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        quantization_config: Any = None,
        peft_config: Any = None,
        formatting_func: Callable[[dict], str] | None = None,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
            args = CGDConfig(f"{str(model_name).split('/')[-1].removeprefix(BUILTIN_PREFIX)}-CGD")
        elif isinstance(args, TrainingArguments) and not isinstance(args, SFTConfig):
            # SFTTrainer turns plain TrainingArguments into an SFTConfig, but only after the CGD collator is built: do
            # it first, the same way, so that CGD truncation fits records to the `max_length` TRL will then cut at.
            dict_args = args.to_dict()
            dict_args["hub_token"] = args.hub_token  # `to_dict` hides it
            args = SFTConfig(**dict_args)
        if is_builtin(model):  # e.g. `builtin:smollm2-135m-instruct`: a folder once fetched, built or converted
            model = resolve_model(model, args.output_dir)
        self.cgd_collator = CritiqueCollator.from_config(args)
        self.cgd_stats: dict[str, dict[str, int]] = {}
        self._cgd_pending: list[tuple[Any, Any]] = []

        dataset_kwargs = getattr(args, "dataset_kwargs", None) or {}  # a plain TrainingArguments has none
        skip_prepare = bool(dataset_kwargs.get("skip_prepare_dataset", False))
        datasets = {"train": train_dataset}
        if isinstance(eval_dataset, dict):
            datasets.update(eval_dataset)
        elif eval_dataset is not None:
            datasets["eval"] = eval_dataset
        cgd_names = [name for name, dataset in datasets.items() if dataset is not None and self._is_cgd(dataset)]
        for name in cgd_names:
            _check_not_empty(datasets[name], name)
        if cgd_names and formatting_func is not None:
            raise ValueError(
                "`formatting_func` turns the data into plain language-modeling text, which would train on the "
                "critique and the initial answer too. CGD records are formatted by the trainer: remove "
                "`formatting_func` and use `cgd_template`/`cgd_instruction` in CGDConfig to change the wording."
            )
        if skip_prepare and isinstance(data_collator, CritiqueCollator) and args.remove_unused_columns:
            raise ValueError(
                "`CritiqueCollator` tokenizes raw CGD rows on the fly, so the trainer must keep their columns: set "
                "`remove_unused_columns=False` (with `dataset_kwargs={'skip_prepare_dataset': True}`)."
            )
        if skip_prepare and cgd_names and not isinstance(data_collator, CritiqueCollator):
            raise ValueError(
                "`skip_prepare_dataset=True` leaves raw CGD records untokenized. Pass `data_collator=CritiqueCollator("
                "tokenizer, ...)` to tokenize them on the fly, or drop `skip_prepare_dataset`."
            )
        if "train" in cgd_names and not skip_prepare:
            # SFTTrainer decides the loss mask from the first training example before it prepares any data, so it must
            # see the prompt-completion shape. It gets a one-row stand-in; `_prepare_dataset` swaps the real data back.
            stand_in = self._stand_in(train_dataset, processing_class, args)
            train_dataset = trl_boundary.stand_in(self._cgd_pending, train_dataset, stand_in)

        super().__init__(
            model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_loss_func=compute_loss_func,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
            quantization_config=quantization_config,
            peft_config=peft_config,
            formatting_func=formatting_func,
        )
        self._cgd_pending.clear()
        # DeepSpeed keeps float32 master weights in its optimizer whatever the module's dtype: nothing to check.
        if not self.is_deepspeed_enabled:
            self.add_callback(_UpdatePrecisionCheck())
        if isinstance(data_collator, CritiqueCollator) and data_collator.processing_class is None:
            data_collator.processing_class = self.processing_class
        advice = packed_attention_advice(
            getattr(getattr(self.model, "config", None), "_attn_implementation", None),
            trl_boundary.padding_free(self),
            self.args.device.type,
        )
        if advice:
            logger.warning(advice)
        if not getattr(self.args, "cgd_fused_lm_head", True) and trl_boundary.aux_loss_enabled(self):
            # TRL spreads the router's load-balancing loss over the accumulation steps; the model's own loss does not.
            raise ValueError(
                "`cgd_fused_lm_head=False` does not support mixture-of-experts models with a router auxiliary loss: "
                "keep the default `cgd_fused_lm_head=True` (or set `router_aux_loss_coef=0`)."
            )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """
        TRL's fused LM-head loss, or with `cgd_fused_lm_head=False` the full logits and the model's own cross-entropy
        (what `transformers.Trainer` does), logging the same metrics as TRL: entropy and mean token accuracy over the
        trained tokens, and the number of tokens seen.
        """
        if getattr(self.args, "cgd_fused_lm_head", True):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        mode = "train" if self.model.training else "eval"
        inputs["use_cache"] = False
        labels = inputs["labels"]
        # TRL patched the model's forward; without `fused_lm_head=True` it is the model's own. A copy of the inputs:
        # with label smoothing or a `compute_loss_func`, `Trainer.compute_loss` pops the labels, which TRL's
        # `prediction_step` reads afterwards for `compute_metrics`.
        loss, outputs = Trainer.compute_loss(
            self, model, dict(inputs), return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        logits = outputs.logits
        if logits.size(1) > labels.size(1):  # prompt-learning PEFT prepends virtual tokens, which are never trained
            labels = torch.nn.functional.pad(labels, (logits.size(1) - labels.size(1), 0), value=-100)
        mask, entropy_sum, num_correct = _trained_token_stats(logits, labels)
        gather = self.accelerator.gather_for_metrics
        num_valid = gather(mask.sum()).sum()
        entropy_sum, num_correct = gather(entropy_sum).sum(), gather(num_correct).sum()
        trl_boundary.log_metric(self, mode, "entropy", (entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        accuracy = (num_correct / num_valid).item() if num_valid > 0 else 0.0
        trl_boundary.log_metric(self, mode, "mean_token_accuracy", accuracy)
        seen = None
        if mode == "train":
            if "attention_mask" in inputs:
                seen = gather(inputs["attention_mask"].sum()).sum().item()
            else:  # padding-free rows: every position is a token
                seen = gather(torch.tensor(inputs["position_ids"].size(1), device=loss.device)).sum().item()
        trl_boundary.add_train_tokens(self, mode, seen)
        return (loss, outputs) if return_outputs else loss

    def _is_cgd(self, dataset: Dataset | IterableDataset) -> bool:
        return self.cgd_collator.is_cgd(get_dataset_column_names(dataset))

    def _stand_in(self, dataset: Dataset | IterableDataset, processing_class: Any, args: Any):
        # Render the first record in the layout it will get, so that SFTTrainer's checks (completion-only loss,
        # assistant-only loss on conversational data) see the right shape. When the tokenizer is not known yet
        # (`model` given as a name), assume a chat layout; `_prepare_dataset` checks the real one.
        layout = self.cgd_collator.layout
        if layout == "auto":
            templated = getattr(args, "chat_template_path", None) is not None or has_chat_template(processing_class)
            layout = "plain" if processing_class is not None and not templated else "single_turn"
        _check_layout(layout, args)
        first = dataset.take(1) if isinstance(dataset, IterableDataset) else dataset.select([0])
        return first.map(
            _format_row,
            fn_kwargs={"collator": self.cgd_collator, "layout": layout},
            remove_columns=self._columns_to_remove(dataset),
        )

    def _columns_to_remove(self, dataset: Dataset | IterableDataset, with_prompt: bool = False) -> list[str]:
        # A rendered `prompt` replaces the question column, unless the rows are tokenized here; the other parts go.
        columns = get_dataset_column_names(dataset)
        fields = self.cgd_collator.fields
        return [c for role, c in fields.items() if (with_prompt or role != "prompt") and c in columns]

    def _prepare_dataset(
        self,
        dataset: Dataset | IterableDataset,
        processing_class: PreTrainedTokenizerBase | ProcessorMixin,
        args: SFTConfig,
        packing: bool,
        formatting_func: Callable[[dict], str] | None,
        dataset_name: str,
    ) -> Dataset | IterableDataset:
        # TRL's dataset-preparation hook (private; its use is described in `trl_boundary.prepare_dataset`).
        dataset = trl_boundary.swap_back(self._cgd_pending, dataset)
        fitted = False
        if self._is_cgd(dataset):
            dataset = self._convert(dataset, processing_class, args, dataset_name)
            # Tokenized rows that CGD truncation fitted into max_length: TRL's truncation would change nothing.
            fitted = "input_ids" in get_dataset_column_names(dataset) and self.cgd_collator.truncation != "none"
        return trl_boundary.prepare_dataset(
            super(), dataset, processing_class, args, packing, formatting_func, dataset_name, fitted
        )

    def _convert(
        self,
        dataset: Dataset | IterableDataset,
        processing_class: PreTrainedTokenizerBase | ProcessorMixin,
        args: SFTConfig,
        dataset_name: str,
    ) -> Dataset | IterableDataset:
        """Validates raw CGD records, fits them into `max_length`, and renders and tokenizes them for TRL."""
        _check_not_empty(dataset, dataset_name)
        collator = self.cgd_collator
        layout = collator.resolve_layout(processing_class)
        _check_layout(layout, args)
        # Tokenize here, once, and hand TRL finished `input_ids`/`labels` rows (it then skips its own tokenization and
        # label building; truncation and packing still run). Fall back to prompt-completion rows where TRL's own
        # masking must decide: `assistant_only_loss` (template masks) or an explicit `completion_only_loss=False`.
        completion_only_loss = getattr(args, "completion_only_loss", None)
        pretokenize = not getattr(args, "assistant_only_loss", False) and completion_only_loss is not False
        if completion_only_loss is False:
            logger.warning(
                "`completion_only_loss=False` trains on the question, the initial answer and the critique too, which "
                "is not CGD. Leave it unset to train on the refined answer only."
            )
        fn_kwargs = {
            "layout": layout,
            "processing_class": processing_class,
            "dataset_name": dataset_name,
            "chat_template": trl_boundary.training_chat_template(self),
            "pretokenize": pretokenize,
        }
        remove = self._columns_to_remove(dataset, with_prompt=pretokenize)
        with global_then_local_main_first():
            if isinstance(dataset, Dataset):
                fn_kwargs["collator"] = collator
                # The fingerprint `datasets` would compute from these arguments, computed here because its workers
                # are handed them through `_Inherited`.
                fingerprint = _hash(
                    [dataset._fingerprint, _fit_rows, fn_kwargs, PREPARE_BATCH_SIZE, remove], processing_class
                )
                with _Inherited(fn_kwargs) as inherited:
                    converted = dataset.map(
                        _fit_inherited_rows,
                        fn_kwargs={"inherited": inherited},
                        batched=True,
                        batch_size=PREPARE_BATCH_SIZE,
                        with_indices=True,
                        remove_columns=remove,
                        num_proc=args.dataset_num_proc,
                        new_fingerprint=fingerprint,
                        desc=f"Rendering CGD records of the {dataset_name} dataset",
                    )
                statuses = converted[_STATUS]
                counts = Counter(statuses)
                self._report(dataset_name, counts, len(dataset))
                if counts[DROPPED]:
                    # The statuses are already read: selecting the kept rows needs no pass (or worker pool) of its own.
                    converted = converted.select([i for i, status in enumerate(statuses) if status != DROPPED])
                if len(converted) == 0:
                    raise ValueError(
                        f"Every record of the {dataset_name} dataset was dropped: no refined answer fits "
                        f"max_length={args.max_length}. Raise `max_length` or check the data."
                    )
                return converted.remove_columns(_STATUS)
            # Streaming data is converted lazily, so counts grow as training reads it.
            stats = self.cgd_stats.setdefault(dataset_name, {KEPT: 0, SHORTENED: 0, DROPPED: 0})
            converted = dataset.map(
                _fit_rows,
                fn_kwargs={"collator": collator, "stats": stats, **fn_kwargs},
                batched=True,
                batch_size=PREPARE_BATCH_SIZE,
                with_indices=True,
                remove_columns=remove,
            )
            return converted.filter(lambda status: status != DROPPED, input_columns=[_STATUS]).remove_columns(_STATUS)

    def _report(self, dataset_name: str, counts: Counter, total: int) -> None:
        self.cgd_stats[dataset_name] = {KEPT: counts[KEPT], SHORTENED: counts[SHORTENED], DROPPED: counts[DROPPED]}
        message = (
            f"CGD {dataset_name} dataset: {total} records, {counts[SHORTENED]} shortened to fit max_length, "
            f"{counts[DROPPED]} dropped because the refined answer alone does not fit."
        )
        if counts[SHORTENED] or counts[DROPPED]:
            logger.warning(message)
        else:
            logger.info(message)


def prepare_records(
    dataset: Dataset,
    processing_class: PreTrainedTokenizerBase | ProcessorMixin,
    args: SFTConfig,
    dataset_name: str = "train",
) -> tuple[Dataset, dict[str, int]]:
    """
    Prepares raw CGD records as [`CGDTrainer`] prepares them for training, without loading a model: the same
    conversion, CGD truncation, TRL tokenization, label masking, TRL truncation and removal of fully masked rows
    (packing aside, since a packed row mixes records). What TRL's `SFTTrainer.__init__` does to the tokenizer before
    it prepares data is done here too: `eos_token`, a `.jinja` `chat_template_path`, and the training template of
    `assistant_only_loss`. `cgd inspect` shows records through this function; a test checks that its labels are the
    trainer's.

    Args:
        dataset ([`~datasets.Dataset`]): Raw CGD records.
        processing_class: The tokenizer (changed in place, as TRL changes it).
        args ([`~trl.SFTConfig`] or [`CGDConfig`]): The training configuration.
        dataset_name (`str`, *optional*, defaults to `"train"`): Name used in messages and in the counts.

    Returns:
        `tuple`: The prepared rows (`input_ids`, `labels`) of the records that are trained, and the counts of kept,
        shortened and dropped records.

    Raises:
        `ValueError`: for a `chat_template_path` naming a tokenizer (TRL clones it into the model, with new tokens).
    """
    tokenizer = processing_class.tokenizer if isinstance(processing_class, ProcessorMixin) else processing_class
    if args.eos_token is not None:
        if args.eos_token not in tokenizer.get_vocab():
            raise ValueError(f"`eos_token` {args.eos_token!r} is not in the tokenizer's vocabulary.")
        tokenizer.eos_token = args.eos_token
    if args.chat_template_path is not None:
        if not str(args.chat_template_path).endswith((".jinja", ".j2")):
            raise ValueError(
                f"`chat_template_path={args.chat_template_path}` names a tokenizer, whose template TRL clones into "
                "the model with its added tokens; records are shown without a model only with a .jinja template file."
            )
        with open(args.chat_template_path, encoding="utf-8") as handle:
            processing_class.chat_template = handle.read()
    # A trainer without `SFTTrainer.__init__`: only what preparation reads, set as `__init__` sets it.
    cgd_collator = CritiqueCollator.from_config(args)
    swap = args.assistant_only_loss and not has_generation_markers(processing_class.chat_template)
    trainer = trl_boundary.bare_trainer(
        CGDTrainer,
        args,
        tokenizer,
        chat_template=get_training_chat_template(processing_class) if swap else None,
        # CGD records become prompt-completion rows, for which TRL turns completion-only loss on unless told otherwise.
        completion_only_loss=True if args.completion_only_loss is None else args.completion_only_loss,
    )
    trainer.cgd_collator = cgd_collator
    trainer.cgd_stats = {}
    trainer._cgd_pending = []
    try:
        prepared = trl_boundary.prepare_dataset(trainer, dataset, processing_class, args, False, None, dataset_name)
    except ValueError:
        counts = trainer.cgd_stats.get(dataset_name, {})
        if not counts or counts[DROPPED] != len(dataset):
            raise
        prepared = Dataset.from_dict({"input_ids": [], "labels": []})  # every record dropped: shown as such
    return prepared, trainer.cgd_stats.get(dataset_name, {KEPT: 0, SHORTENED: 0, DROPPED: 0})


@torch.no_grad()
def _trained_token_stats(logits: torch.Tensor, labels: torch.Tensor, chunk: int = 512):
    """
    The mask of trained next-token positions, and the summed entropy and count of top-1 hits over them, computed in
    chunks of positions so that the float32 copies stay small next to the logits themselves.

    Args:
        logits: `(batch, length, vocabulary)` logits.
        labels: `(batch, length)` labels, `-100` where not trained; position `t` predicts `labels[t + 1]`.
        chunk: Positions per chunk.

    Returns:
        `(mask, entropy_sum, num_correct)`: the `(batch, length - 1)` mask and two scalar tensors.
    """
    targets = labels[..., 1:]
    mask = targets != -100
    rows, cols = mask.nonzero(as_tuple=True)
    entropy_sum = torch.zeros((), device=logits.device, dtype=torch.float32)
    num_correct = torch.zeros((), device=logits.device, dtype=torch.long)
    for start in range(0, rows.numel(), chunk):
        r, c = rows[start : start + chunk], cols[start : start + chunk]
        part = logits[r, c].float()
        log_probs = torch.log_softmax(part, dim=-1)
        entropy_sum += -(log_probs.exp() * log_probs).sum()
        num_correct += (part.argmax(-1) == targets[r, c]).sum()
    return mask, entropy_sum, num_correct


def packed_attention_advice(attn_implementation: str | None, padding_free: bool, device_type: str) -> str | None:
    """
    Says when padding-free (packed) batches meet an attention kernel that makes them slow on a GPU.

    With sdpa or eager attention, transformers turns the packed documents' `position_ids` into a dense block-diagonal
    mask, which keeps sdpa off its fast kernels: on an H200 packed sdpa ran 2.5x slower than packed flex_attention and
    even slower than padded batches (docs/performance.md).

    Args:
        attn_implementation: The model's `config._attn_implementation`.
        padding_free: Whether the trainer builds padding-free batches (bfd packing or `padding_free=True`).
        device_type: The training device type (`"cuda"`, `"cpu"`, ...); CPUs have no faster choice, so no advice.

    Returns:
        The advice to log, or `None` when there is nothing to say.
    """
    if not padding_free or device_type != "cuda" or attn_implementation not in ("sdpa", "eager"):
        return None
    return (
        f"Packed (padding-free) batches with attn_implementation={attn_implementation!r} are attended through a dense "
        "block-diagonal mask, which is slow: on an H200 they ran 2.5x slower than with 'flex_attention' and slower "
        "than padded batches (docs/performance.md in cgd-trainer). Use attn_implementation='flash_attention_2' (needs "
        "flash-attn) or 'flex_attention' (in torch), or train padded with packing=False and "
        "train_sampling_strategy='group_by_length'."
    )


# Explicit mantissa bits of the 16-bit float types weights may be stored in.
_MANTISSA_BITS = {torch.bfloat16: 7, torch.float16: 10}


def rounded_away_share(parameters, step_size: float, sample: int = 4096) -> tuple[float, torch.dtype | None]:
    """
    The share of trainable weights stored in a 16-bit float that an update of `step_size` would leave unchanged.

    An update rounds away when it is smaller than half the spacing of the representable numbers near the weight. Adam
    style optimizers step each weight by about the learning rate, so with bf16 weights of ~0.02 any learning rate
    under ~6e-5 is lost (the paper trains at 1e-6), unless the optimizer keeps float32 master weights.

    Args:
        parameters: The model's parameters (frozen ones are skipped; sharded DTensors are read through their shard).
        step_size: The size of one update, e.g. the learning rate.
        sample: At most this many values are read per tensor, evenly spaced.

    Returns:
        `tuple`: The share of the sampled trainable values whose update rounds away, and the 16-bit dtype they are
        stored in (`None` when every trainable weight is in a wider type).
    """
    lost = total = 0
    dtype = None
    for param in parameters:
        if not param.requires_grad:
            continue
        values = param.detach()
        values = values.to_local() if hasattr(values, "to_local") else values
        values = values.reshape(-1)
        if values.numel() == 0:
            continue
        values = values[:: max(1, values.numel() // sample)]
        total += values.numel()
        bits = _MANTISSA_BITS.get(values.dtype)
        if bits is None:
            continue
        dtype = values.dtype
        # |w| = m * 2**e with m in [0.5, 1): the spacing near w is 2**(e - 1 - bits).
        _, exponent = torch.frexp(values.float())
        half_spacing = torch.ldexp(torch.ones_like(values, dtype=torch.float32), exponent - 2 - bits)
        lost += int(((values != 0) & (half_spacing > step_size)).sum())
    return (lost / total if total else 0.0), dtype


class _UpdatePrecisionCheck(TrainerCallback):
    """Warns, once training starts (after FSDP's float32 upcast, if any), when most updates would round away."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None or not state.is_world_process_zero:
            return
        share, dtype = rounded_away_share(model.parameters(), args.learning_rate)
        if share > 0.5:
            name = str(dtype).removeprefix("torch.")
            logger.warning(
                f"{share:.0%} of the trainable weights are stored in {name}, and an optimizer step of about the "
                f"learning rate ({args.learning_rate:g}) is below half the gap between {name} numbers near them: "
                "those updates round away and the model barely trains. Load the model in float32 (`dtype: float32`, "
                "or `model_init_kwargs={'dtype': 'float32'}`; `bf16: true` still computes in bf16), or use DeepSpeed "
                "ZeRO, which keeps float32 master weights. Under FSDP2, accelerate upcasts to float32 itself when "
                "`mixed_precision` is set (except accelerate 1.13.0, where the upcast does nothing)."
            )


def _format_row(example, collator, layout):
    return collator.format(example, layout, index=0, dataset_name="train")


class _Inherited:
    """
    Hands `Dataset.map`'s keyword arguments to worker processes that are forked (the default on Linux) through the
    memory they inherit, instead of pickling a copy for each: unpickling a large vocabulary's tokenizer takes about
    half a second in every worker (Tekken's 131k tokens), more than the records of a small dataset take to prepare.
    Elsewhere (spawned workers, or outside the `with` block) it pickles what it holds.
    """

    def __init__(self, value: Any):
        self.value = value

    def __enter__(self) -> _Inherited:
        _INHERITED[id(self)] = self.value
        return self

    def __exit__(self, *exc_info: Any) -> None:
        _INHERITED.pop(id(self), None)

    def __reduce__(self):
        import multiprocess

        # `datasets` forks its workers with `multiprocess`; the first start method listed is the default one.
        forked = (multiprocess.get_start_method(allow_none=True) or multiprocess.get_all_start_methods()[0]) == "fork"
        if forked and id(self) in _INHERITED:
            return _inherited, (id(self),)
        return _Inherited, (self.value,)


_INHERITED: dict[int, Any] = {}

# What transformers 5 keeps of the files a tokenizer was built from beside the backend built from them.
_BUILT_FROM = ("_vocab", "_merges")


def _hash(value: Any, processing_class: Any) -> str:
    """
    `datasets`' fingerprint of `value`, with `processing_class`'s tokenizer hashed without the vocabulary and merges it
    was built from (`_BUILT_FROM`), whose content its backend holds and is hashed with. `datasets` pickles those in
    Python: 0.7 s for a 32k SentencePiece vocabulary (transformers 5's Llama and Gemma classes keep them), more for
    larger ones, at every preparation, against 0.03 s without them.
    """
    tokenizer = processing_class.tokenizer if isinstance(processing_class, ProcessorMixin) else processing_class
    state = getattr(tokenizer, "__dict__", {})
    set_aside = (
        {key: state.pop(key) for key in _BUILT_FROM if key in state} if getattr(tokenizer, "is_fast", False) else {}
    )
    try:
        return Hasher.hash(value)
    finally:
        state.update(set_aside)


def _inherited(key: int) -> _Inherited:
    return _Inherited(_INHERITED[key])


def _fit_inherited_rows(batch, indices, inherited: _Inherited):
    return _fit_rows(batch, indices, **inherited.value)


def _fit_rows(
    batch, indices, collator, layout, processing_class, dataset_name, chat_template, pretokenize, stats=None
):
    # One batch of `Dataset.map(batched=True)`: the records' texts are tokenized together, each once. Token rows go
    # back as numpy arrays for in-memory datasets: `datasets` writes them to Arrow without visiting every int in
    # Python (4x faster on long records); a stream's rows stay lists.
    columns = list(batch)
    examples = [dict(zip(columns, values, strict=True)) for values in zip(*batch.values(), strict=True)]
    results = collator.fit_batch(
        examples, layout, processing_class, indices, dataset_name, chat_template, tokenize=pretokenize
    )
    rows = []
    for example, index, (row, status) in zip(examples, indices, results, strict=True):
        if stats is not None:
            stats[status] += 1
            if status != KEPT and stats[status] == 1:  # streaming: say it once, keep counting in trainer.cgd_stats
                logger.warning(
                    f"CGD record {index} of the {dataset_name} dataset was {status} to fit max_length; later ones are "
                    "counted in `trainer.cgd_stats` without a message."
                )
        if row is None:
            # Keep the columns' types stable; the row is filtered out right after.
            row = {"input_ids": [0], "labels": [-100]} if pretokenize else collator.format(example, layout, index)
        rows.append({**row, _STATUS: status})
    if pretokenize and stats is None:
        for row in rows:
            row["input_ids"], row["labels"] = np.asarray(row["input_ids"]), np.asarray(row["labels"])
    return {key: [row[key] for row in rows] for key in rows[0]} if rows else {}


def _check_layout(layout: str, args: Any) -> None:
    if getattr(args, "assistant_only_loss", False) and layout == "plain":
        raise ValueError(
            "`assistant_only_loss=True` needs a chat layout, but the CGD layout is 'plain' (no chat template). "
            "Set a chat template or turn `assistant_only_loss` off; the refined answer is the only trained part "
            "either way."
        )


def _check_not_empty(dataset: Dataset | IterableDataset, dataset_name: str) -> None:
    empty = len(dataset) == 0 if isinstance(dataset, Dataset) else next(iter(dataset), None) is None
    if empty:
        raise ValueError(f"The {dataset_name} dataset is empty: CGD training needs at least one record.")
