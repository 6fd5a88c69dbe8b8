"""Where data comes from and how it is written: named sources (hub ids, local files, `builtin:` names) and JSONL.

- [`load_source`] loads any named dataset for training, generation, evaluation and diagnosis;
- [`resolve_file`] and [`resolve_model`] are the one place where `builtin:` names are resolved: the offline demo's
  data and tiny models, and real pretrained models from registry packages (each registered here by module path, so
  production code never imports the demo);
- [`read_rows`], [`read_jsonl`], [`write_jsonl`] and [`JsonlAppender`] are the one JSONL reader and writer: UTF-8,
  one object per line, `/` not escaped, and no schema inference (a key that first appears on row two million is read
  like any other; missing keys read as `None`).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}

BUILTIN_PREFIX = "builtin:"
# Built-in names -> "module:function" of the demo that provides them, imported only when such a name is used.
BUILTIN_DATASETS = {
    "builtin:demo": "cgd_trainer.demo.problems:demo_data_path",
    "builtin:toy": "cgd_trainer.demo.problems:toy_data_path",
    "builtin:toy-heldout": "cgd_trainer.demo.problems:toy_heldout_path",
}
BUILTIN_MODELS = {
    f"builtin:tiny-{family}": "cgd_trainer.demo.tiny:prepare_builtin_model"
    for family in ("chatml", "llama3", "plain", "digits")
} | {
    # Real pretrained models carried by registry packages, converted once into a shared cache (`pretrained.py`).
    "builtin:smollm2-135m-instruct": "cgd_trainer.pretrained:prepare_packaged_model",
}


def is_builtin(name: str | None) -> bool:
    """Whether a dataset or model name is a `builtin:` name (or looks like one)."""
    return isinstance(name, str) and name.startswith(BUILTIN_PREFIX)


def _entry(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def resolve_file(name: str) -> Path | None:
    """
    The local file behind a dataset name: a built-in dataset's shipped file, or an existing local file.

    Returns:
        `Path` or `None`: `None` when the name is neither (a hub id or a folder).

    Raises:
        `ValueError`: for an unknown `builtin:` name.
    """
    if is_builtin(name):
        if name not in BUILTIN_DATASETS:
            raise ValueError(
                f"Unknown built-in dataset {name!r}; the built-in datasets are {sorted(BUILTIN_DATASETS)}."
            )
        return Path(_entry(BUILTIN_DATASETS[name])())
    path = Path(name)
    return path if path.is_file() else None


def resolve_model(name: str, output_dir: str | os.PathLike) -> str:
    """
    The model to load for a name: a `builtin:tiny-*` model is built (once) under `<output_dir>/base-model`, a packaged
    pretrained model (`builtin:smollm2-135m-instruct`) is fetched and converted (once) into the shared cache; any
    other name (hub id, folder, served name) is returned as it is.
    """
    if not is_builtin(name):
        return name
    if name not in BUILTIN_MODELS:
        raise ValueError(f"Unknown built-in model {name!r}; the built-in models are {sorted(BUILTIN_MODELS)}.")
    return str(_entry(BUILTIN_MODELS[name])(name, str(output_dir)))


def load_source(name: str, config_name: str | None = None, streaming: bool = False):
    """
    Loads one named dataset with `datasets`: `builtin:demo`, a local JSON/JSONL/Parquet/CSV file, or a hub dataset
    (or a local dataset folder).

    Returns:
        `DatasetDict` or `IterableDatasetDict`: its splits (a local file gives a `train` split).
    """
    from datasets import load_dataset

    path = resolve_file(name)
    if path is not None:
        builder = LOCAL_FORMATS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"Cannot tell the format of {name}; use one of {sorted(LOCAL_FORMATS)}.")
        return load_dataset(builder, data_files={"train": str(path)}, streaming=streaming)
    return load_dataset(name, name=config_name, streaming=streaming)


# ---------------------------------------------------------------------------------------------------------------------
# JSONL.
# ---------------------------------------------------------------------------------------------------------------------


def dumps_row(row: Mapping[str, Any]) -> str:
    """One JSON line (with its newline): UTF-8 text as is, so files stay readable and byte-stable."""
    return json.dumps(row, ensure_ascii=False) + "\n"


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]], atomic: bool = False) -> int:
    """
    Writes rows as JSON lines.

    Args:
        path: The file.
        rows: The rows.
        atomic (`bool`): Write to a temporary file and rename it, so that readers never see a half-written file.

    Returns:
        `int`: The number of rows written.
    """
    path = Path(path)
    target = path.with_name(path.name + ".tmp") if atomic else path
    count = 0
    with open(target, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(dumps_row(row))
            count += 1
    if atomic:
        os.replace(target, path)
    return count


class JsonlAppender:
    """
    Appends rows to a JSONL file, flushing each one, so that a crash loses at most the row being written.

    The file is opened on the first append and stays open until [`close`].
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._file: IO[str] | None = None

    def append(self, row: Mapping[str, Any]) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open across appends
        self._file.write(dumps_row(row))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def loads_object(text: str, where: str, fix: str) -> dict[str, Any]:
    """
    Parses one JSON object.

    Raises:
        `ValueError`: naming where the text comes from (a file and line, a setting) and how to fix it.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: not valid JSON ({error}); {fix}.") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(value).__name__}; {fix}.")
    return value


def trim_unfinished_line(path: str | os.PathLike) -> bool:
    """
    Cuts a JSONL file back to its last whole line: what a run killed while appending leaves behind.

    Returns:
        `bool`: Whether a cut-short last line was dropped.
    """
    path = Path(path)
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) == len(data):
        return False
    path.write_bytes(whole)
    return True


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """
    Reads a JSONL file one row at a time (blank lines are skipped).

    Raises:
        `ValueError`: naming the file and the line that is not a JSON object.
    """
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            yield loads_object(line, f"{path}, line {number}", "fix or delete the line")


def _read_json(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return list(read_jsonl(path))  # a `.json` file written as JSON lines, which `datasets` accepts too
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise ValueError(f"{path}: expected a list of JSON objects (or JSON lines).")
    return data


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """
    Reads every row of a JSONL, JSON (a list of objects), Parquet or CSV file.

    JSON and JSONL are read with `json`, without schema inference; Parquet and CSV with `datasets`.

    Returns:
        `list[dict]`: the rows; every row has every key seen in the file (missing values are `None`).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in LOCAL_FORMATS:
        raise ValueError(f"Cannot tell the format of {path}; use one of {sorted(LOCAL_FORMATS)}.")
    if not path.is_file():
        raise ValueError(f"{path} is not a file.")
    if suffix == ".jsonl":
        rows = list(read_jsonl(path))
    elif suffix == ".json":
        rows = _read_json(path)
    else:
        rows = load_source(str(path))["train"].to_list()
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    if any(len(row) != len(keys) for row in rows):
        rows = [{key: row.get(key) for key in keys} for row in rows]
    return rows
