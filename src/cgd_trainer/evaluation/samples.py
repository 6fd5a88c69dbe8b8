"""The samples file of `cgd eval` (and of checkpoint selection) as a resumable store.

Every finished sample is appended and flushed as it arrives, under the key of the request that produced it
([`~cgd_trainer.backends.request_key`]: the model and the fingerprint of a local model's weights, the prompt as sent,
the decoding settings) and its sample index. A rerun after a crash, `kill -9` included, reuses what is there and sends
only what is missing; samples that failed are sent again. When a run finishes, the file is rewritten with exactly that
run's samples, in a stable order.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..sources import JsonlAppender, read_jsonl, trim_unfinished_line, write_jsonl

logger = logging.getLogger(__name__)


class SampleStore:
    """
    An append-only JSONL file of graded samples, readable after an interrupted run.

    Args:
        path (`str` or `os.PathLike`): The file; created when missing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._outputs: dict[str, dict[int, Mapping[str, Any]]] = {}
        if self.path.exists():
            if trim_unfinished_line(self.path):
                logger.warning(f"{self.path}: dropped an unfinished last line (the previous run was interrupted).")
            for row in read_jsonl(self.path):
                if row.get("key") and row.get("output") is not None and row.get("error") is None:
                    self._outputs.setdefault(row["key"], {})[int(row["sample"])] = row
        self._appender = JsonlAppender(self.path)

    def finished(self, key: str, num_samples: int) -> list[Mapping[str, Any]] | None:
        """
        The stored samples of a request, when all `num_samples` of them finished without error.

        Returns:
            `list` or `None`: The rows in sample order, or `None` when the request must be sent.
        """
        stored = self._outputs.get(key, {})
        if all(index in stored for index in range(num_samples)):
            return [stored[index] for index in range(num_samples)]
        return None

    def append(self, row: Mapping[str, Any]) -> None:
        """Appends one graded sample (with its `key` and `sample` index) and flushes it to disk."""
        self._appender.append(row)
        if row.get("output") is not None and row.get("error") is None:
            self._outputs.setdefault(row["key"], {})[int(row["sample"])] = row

    def rewrite(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Replaces the file's content with `rows` (a finished run's own samples), atomically."""
        self._appender.close()
        write_jsonl(self.path, rows, atomic=True)

    def close(self) -> None:
        self._appender.close()

    def __enter__(self) -> SampleStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
