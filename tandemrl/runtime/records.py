"""Reading `metrics.jsonl`: one JSON object a line, the last possibly torn.

A line is written whole and flushed, but a process killed in the middle of a write, or a full
disk, can leave the last line cut short; readers skip it instead of failing on it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_records(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """(records, skipped): every line of `path` that parses as a JSON object, and how many
    did not (a torn last line; never raises on content)."""
    records: list[dict[str, Any]] = []
    skipped = 0
    for line in Path(path).read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            skipped += 1
    return records, skipped


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a `metrics.jsonl`, a torn line skipped."""
    return read_records(path)[0]
