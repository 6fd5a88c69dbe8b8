"""`cgd generate`: the data pipeline of CGD — probe (student), critique and refine (teacher) — resumable and cached.

- `config`: [`GenerateConfig`], the settings (the backends' shared settings come from `BackendSettings`);
- `stages`: the probe, critique and refine stages as registered objects (role, prompt, budget, stops, inputs, output);
- `store`: the append-only stage files and the request keys that make reruns send nothing twice;
- `pipeline`: reading the questions, running the stages, assembling `records.jsonl` and `summary.json`;
- `merge`: the checks that shard runs are one split of one input, made with one set of models and settings.

The command itself is `cgd_trainer.commands.generate`.
"""

from .config import GenerateConfig
from .pipeline import RECORDS_FILE, SUMMARY_FILE, Pipeline, format_summary, load_items
from .stages import STAGE_OUTPUT, STAGES, Stage
from .store import StageStore, inputs_hash, request_key

__all__ = [
    "RECORDS_FILE",
    "STAGES",
    "STAGE_OUTPUT",
    "SUMMARY_FILE",
    "GenerateConfig",
    "Pipeline",
    "Stage",
    "StageStore",
    "format_summary",
    "inputs_hash",
    "load_items",
    "request_key",
]
