"""The stage files of `cgd generate`: append-only results keyed by what was sent, so that reruns send nothing twice."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from ..backends import request_key  # noqa: F401 - the pipeline's keys are the backends'
from ..sources import JsonlAppender, read_jsonl, trim_unfinished_line

logger = logging.getLogger(__name__)


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
            if trim_unfinished_line(path):
                logger.warning(f"{path}: dropped an unfinished last line (the previous run was interrupted).")
            for entry in read_jsonl(path):
                self.entries[entry["id"]] = entry
        self._appender = JsonlAppender(path)

    def done(self, record_id: str, key: str) -> bool:
        entry = self.entries.get(record_id)
        return entry is not None and entry["key"] == key

    def append(self, entry: dict) -> None:
        self._appender.append(entry)
        self.entries[entry["id"]] = entry

    def close(self) -> None:
        self._appender.close()


def inputs_hash(values: dict[str, str]) -> str:
    """Hash of the texts a stage's prompt was built from (question, and the draft and critique where used)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]
