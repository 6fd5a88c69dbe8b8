"""
Merging the shard runs of one `cgd generate` job (`--merge out/shard0 out/shard1 ...`).

Everything is checked before anything is written, so a refused merge leaves its output folder as it was: every folder
is a finished run of one `--shard i/n` split, each `i` is given exactly once, the shards read the same input as the
merge (the same rows after shuffling and `max_records`, compared by content) and were made with the same models,
decoding settings and templates. Two runs used the same model when the keys of [`~backends.Backend.identity`] agree
(name, fingerprint of local files, extra request fields) and so does the prompt format: the rule that also decides
whether a rerun reuses a stored output. The server address does not count.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..backends import identity_of
from .config import GenerateConfig, parse_shard
from .stages import STAGES

SUMMARY_FILE = "summary.json"
# The settings that decide which questions a run reads, and in which order (ids included).
INPUT_SETTINGS = (
    "dataset_name",
    "dataset_config",
    "dataset_split",
    "question_field",
    "reference_field",
    "id_field",
    "initial_response_field",
    "critique_field",
    "max_records",
    "shuffle",
    "data_seed",
    "streaming",
    "shuffle_buffer",
)


def input_settings(config: GenerateConfig) -> dict[str, Any]:
    """The settings of `config` that choose the questions (recorded in every run's `summary.json`)."""
    return {name: getattr(config, name) for name in INPUT_SETTINGS}


def input_digest(items: list[dict]) -> str:
    """A hash of the whole input as read (every question with its id, reference and given texts, in order)."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(json.dumps(item, sort_keys=True, ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()


@dataclass
class ShardRun:
    """The finished run in one folder given to `merge`, as its `summary.json` describes it."""

    folder: str
    summary: dict[str, Any]
    index: int
    count: int

    @property
    def label(self) -> str:
        return f"{self.index}/{self.count}"


def read_shards(folders: list[str]) -> list[ShardRun]:
    """
    Reads the summary of every folder given to `merge`. A folder without `shard` in its summary is an unsharded run,
    the only shard of `0/1`.

    Raises:
        `ValueError`: when a folder is given twice or is not a finished run of this version of `cgd generate`.
    """
    shards, seen = [], {}
    for folder in folders:
        resolved = Path(folder).resolve()
        if resolved in seen:
            raise ValueError(f"`merge`: {folder} is given twice (as {seen[resolved]} before); give each shard once.")
        seen[resolved] = folder
        path = Path(folder) / SUMMARY_FILE
        if not path.is_file():
            raise ValueError(f"`merge`: {folder} has no {SUMMARY_FILE}; give the output folders of shard runs.")
        summary = json.loads(path.read_text("utf-8"))
        if "input_sha256" not in summary or "stages_sent" not in summary:
            raise ValueError(
                f"`merge`: {path} does not record which input its run read (it was written by an older "
                "cgd-trainer); rerun that shard's command, which reuses every finished output, and merge again."
            )
        index, count = parse_shard(summary.get("shard", "0/1"))
        shards.append(ShardRun(str(folder), summary, index, count))
    return shards


def differences(first: Any, second: Any, path: str = "") -> list[str]:
    """The dotted paths at which two JSON values differ (`teacher.model`, `sampling.critique.max_tokens`, ...)."""
    if isinstance(first, dict) and isinstance(second, dict):
        found = []
        for key in sorted(set(first) | set(second), key=str):
            found += differences(first.get(key), second.get(key), f"{path}.{key}" if path else str(key))
        return found
    return [] if first == second else [path or "value"]


def _comparable(provenance: dict[str, Any], stages: set[str]) -> dict[str, Any]:
    """
    The parts of a run's provenance that must agree between shards, for the stages both sent requests in: the models
    that answered them (not where they were served) and their resolved settings, and every stage's wording. A stage
    a shard did not send (its drafts came with the data, or it ran `--stages probe` last) has no resolved model.
    """
    roles = sorted({STAGES[stage].role for stage in stages})
    return {
        **{role: identity_of(provenance[role]) for role in roles},
        "sampling": {stage: provenance["sampling"][stage] for stage in sorted(stages)},
        "templates": provenance["templates"],
    }


def check_shards(shards: list[ShardRun], config: GenerateConfig, digest: str, partial: bool = False) -> list[int]:
    """
    Checks that `shards` can be merged into one run of `config`'s input, whose items hash to `digest`.

    Args:
        shards (`list[ShardRun]`): The folders given to `merge`, read by [`read_shards`].
        config ([`GenerateConfig`]): The merge's settings.
        digest (`str`): [`input_digest`] of the whole input the merge reads.
        partial (`bool`): Accept a merge that lacks some shards (`allow_partial_merge`).

    Returns:
        `list[int]`: The indices `i` of the shards not given; empty unless `partial`.

    Raises:
        `ValueError`: naming the folders and the fix, when the shards are of different splits, a shard is given
            twice, a shard read another input or was made with other models or settings, or (unless `partial`) a
            shard is missing.
    """
    first = shards[0]
    for shard in shards[1:]:
        if shard.count != first.count:
            raise ValueError(
                f"`merge`: {first.folder} is shard {first.label} but {shard.folder} is shard {shard.label}; give "
                "the folders of one `--shard i/n` split."
            )
    by_index: dict[int, ShardRun] = {}
    for shard in shards:
        if shard.index in by_index:
            raise ValueError(
                f"`merge`: {by_index[shard.index].folder} and {shard.folder} are both shard {shard.label}; give each "
                "shard once."
            )
        by_index[shard.index] = shard
    ours = input_settings(config)
    for shard in shards:
        if shard.summary["input_sha256"] == digest:
            continue  # the same questions, whatever path the dataset was read from
        changed = [
            f"{name} {shard.summary['input_settings'].get(name)!r} there, {ours[name]!r} here"
            for name in differences(shard.summary.get("input_settings", {}), ours)
        ]
        reason = (
            "its input settings differ: " + "; ".join(changed)
            if changed
            else f"{config.dataset_name} no longer holds the same questions, ids or references as when it ran"
        )
        raise ValueError(
            f"`merge`: shard {shard.label} ({shard.folder}) was made from another input than this merge reads: "
            f"{reason}. Merge with the settings the shards were run with, and shards of one input only."
        )
    for shard in shards[1:]:
        both = set(first.summary["stages_sent"]) & set(shard.summary["stages_sent"])
        changed = differences(
            _comparable(first.summary["provenance"], both), _comparable(shard.summary["provenance"], both)
        )
        if changed:
            raise ValueError(
                f"`merge`: {shard.folder} was made with other models, decoding settings or templates than "
                f"{first.folder} (they differ in {', '.join(changed)}; compare `provenance` in their summary.json); "
                "merge only shards of one run."
            )
    missing = [index for index in range(first.count) if index not in by_index]
    if missing and not partial:
        labels = [f"{index}/{first.count}" for index in missing]
        raise ValueError(
            f"`merge`: {', '.join(f'shard {label} missing' for label in labels)}: run `cgd generate` with the shards' "
            f"settings and `--shard {labels[0]}` (in its own `--output_dir`), then merge all the folders; or add "
            "`--allow_partial_merge true` to merge only these."
        )
    return missing
