"""`cgd build`: every training condition of the paper's comparison from one set of generated CGD records.

From records `(question, initial answer, critique, refined answer, verdict, reference answer)` this package writes, one
JSONL file per condition:

| condition | context | target | format |
|---|---|---|---|
| `cgd` | question, initial answer, critique | refined answer | CGD columns (trained by `CGDTrainer`) |
| `irrelevant_critique` | question, initial answer, another record's critique | refined answer | CGD columns |
| `generic_critique` | question, initial answer, a fixed content-free critique | refined answer | CGD columns |
| `no_critique` | question, initial answer | refined answer | TRL prompt-completion |
| `sft` | question | reference answer | TRL prompt-completion |
| `distilled_sft` | question | refined answer | TRL prompt-completion |
| `cft` | question, initial answer | critique | TRL prompt-completion |

plus verdict-ratio subsets (`ratio_75_25.jsonl`: CGD records, 75% with a right and 25% with a wrong initial answer),
optional Alpaca (LLaMA-Factory) and `messages` exports, a `summary.json` and a dataset card (`README.md`). It also
imports CFT-style `instruction/input/output` data and reads its own Alpaca export back.

Run it with `cgd build --input records.jsonl --output_dir sets/` or `cgd build --config build.yaml`.

The modules, each importing only those above it:

- `sampling`: the seeded critique derangement and the verdict-ratio draws;
- `builders`: one registered builder per condition ([`CONDITION_BUILDERS`]) and the ratio subsets;
- `config`: [`BuildConfig`] and the accepted names;
- `readers`: the input, one reader per `input_format` ([`READERS`]);
- `filters`: decontamination and the correctness filter;
- `writers`: exports, statistics, the dataset card, the printed table and the upload to the hub;
- `runner`: [`build`], the whole command: read, filter, build every condition, write.
"""

from __future__ import annotations

from .builders import CONDITION_BUILDERS, ConditionSet, cgd_context, make_condition, make_ratio_subsets
from .config import CGD_FAMILY, CONDITIONS, DEFAULT_RATIOS, EXPORT_FORMATS, INPUT_FORMATS, BuildConfig
from .filters import Decontaminator, decontaminate_records, filter_correct_records, normalize_text, word_ngrams
from .readers import READERS, load_records, read_questions, resolve_input, split_cft_input, split_sections
from .runner import build
from .sampling import derangement, largest_ratio_size, parse_ratio, ratio_counts, ratio_name, sample_ratio_subsets
from .writers import (
    alpaca_rows,
    condition_summary,
    export_sets,
    format_table,
    messages_rows,
    push_dataset_to_hub,
    render_card,
)

__all__ = [
    "CGD_FAMILY",
    "CONDITIONS",
    "CONDITION_BUILDERS",
    "DEFAULT_RATIOS",
    "EXPORT_FORMATS",
    "INPUT_FORMATS",
    "READERS",
    "BuildConfig",
    "ConditionSet",
    "Decontaminator",
    "alpaca_rows",
    "build",
    "cgd_context",
    "condition_summary",
    "decontaminate_records",
    "derangement",
    "export_sets",
    "filter_correct_records",
    "format_table",
    "largest_ratio_size",
    "load_records",
    "make_condition",
    "make_ratio_subsets",
    "messages_rows",
    "normalize_text",
    "parse_ratio",
    "push_dataset_to_hub",
    "ratio_counts",
    "ratio_name",
    "read_questions",
    "render_card",
    "resolve_input",
    "sample_ratio_subsets",
    "split_cft_input",
    "split_sections",
    "word_ngrams",
]
