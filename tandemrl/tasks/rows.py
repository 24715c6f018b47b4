"""The one reader of user data: RL prompts (task `dataset`) and preference pairs (DPO/IPO).

`read_rows(source)` returns a list of dicts, one per row, from
- a `datasets.Dataset` (or anything with `to_list()`), or a list of dicts, in memory;
- a `.jsonl` / `.json` (one object per line) or `.parquet` file, read here with line-exact
  errors;
- any other file (`.csv`, ...), a local dataset folder, or a Hugging Face hub id
  (`org/name`, `org/name:split`), through `datasets.load_dataset`. Offline (no network, or
  `HF_HUB_OFFLINE=1`) a hub id that is not in the local cache fails with one line saying so.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tandemrl.tasks.registry import TaskOptionError

LINE_FORMATS = (".jsonl", ".json")
FILE_SUFFIXES = (*LINE_FORMATS, ".parquet", ".csv", ".tsv", ".txt", ".arrow")


def read_rows(source: Any, what: str = "data") -> list[dict[str, Any]]:
    """Rows of `source` (module docstring); a TaskOptionError naming `what` otherwise."""
    if hasattr(source, "to_list"):
        return list(source.to_list())
    if isinstance(source, list):
        if not all(isinstance(row, dict) for row in source):
            raise TaskOptionError(f"{what}: a list of rows must hold dicts")
        return list(source)
    if not isinstance(source, str | os.PathLike):
        raise TaskOptionError(
            f"{what}: expected a path, a hub id or a datasets.Dataset, got {type(source).__name__}"
        )
    file = Path(source)
    if not file.exists() and (file.suffix in FILE_SUFFIXES or file.is_absolute()):
        raise TaskOptionError(f"{what}: no such file {str(file)!r}")
    if file.is_file() and file.suffix in LINE_FORMATS:
        try:
            return [row for _, row in read_json_lines(file)]
        except ValueError as err:
            raise TaskOptionError(f"{what}: {err}") from None
    if file.is_file() and file.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as err:
            raise TaskOptionError(f"{what}: reading parquet needs pyarrow") from err
        return pq.read_table(file).to_pylist()
    return _load_dataset(str(source), what)


def read_json_lines(file: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file; a ValueError naming
    `file:line` for a line that is not a JSON object."""
    rows = []
    with file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{file}:{number} is not valid JSON ({err.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{file}:{number} is not a JSON object")
            rows.append((number, row))
    return rows


def _load_dataset(source: str, what: str) -> list[dict[str, Any]]:
    """Through `datasets.load_dataset`: a data file of another format, a local dataset
    folder, or a hub id (`name` or `name:split`; the `train` split by default)."""
    try:
        import datasets
    except ImportError as err:
        raise TaskOptionError(f"{what}: {source!r} needs the `datasets` package") from err
    path = Path(source)
    name, _, split = source.partition(":") if not path.exists() else (source, "", "")
    split = split or "train"
    local = path.exists()
    if not local and "/" not in name:
        raise TaskOptionError(
            f"{what}: {source!r} is neither a file, a folder nor a hub id (org/name)"
        )
    kind = "file" if path.is_file() else "folder" if local else "hub id"
    try:
        if path.is_file():
            data = datasets.load_dataset(path.suffix.lstrip("."), data_files=str(path))
        else:
            data = datasets.load_dataset(name)
    except Exception as err:  # noqa: BLE001 - the datasets library raises many kinds
        offline = os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in str(err).lower()
        hint = ""
        if kind == "hub id":
            hint = (
                " (offline: HF_HUB_OFFLINE=1 or no network, and it is not in the local cache; "
                "download it where there is a network, or give a local path)"
                if offline
                else " (no network? download it first, or give a local path)"
            )
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise TaskOptionError(
            f"{what}: could not load {kind} {source!r}{hint}: {message}"
        ) from None
    if hasattr(data, "keys"):  # a DatasetDict
        if split not in data:
            raise TaskOptionError(f"{what}: {source!r} has splits {list(data)}, not {split!r}")
        data = data[split]
    return list(data.to_list())
