"""Metrics to `metrics.jsonl` (one object per step) and, optionally, TensorBoard."""

from __future__ import annotations

import json
import math
import resource
from pathlib import Path
from typing import Any

from tandemrl.runtime.records import read_records


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class MetricsLogger:
    def __init__(self, run_dir: Path, tensorboard: bool = True, after_step: int = 0):
        """A fresh `metrics.jsonl`, or with `after_step` > 0 (a resumed run) the records of
        steps up to it, the rest dropped (steps the interrupted run logged after its last
        checkpoint, and a torn last line), then appended to. `notes` says what was dropped."""
        self.path = run_dir / "metrics.jsonl"
        self.notes: list[str] = []
        if after_step and self.path.is_file():
            records, torn = read_records(self.path)
            kept = [r for r in records if r.get("step", 0) <= after_step]
            dropped = len(records) - len(kept)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
            if dropped or torn:
                self.notes.append(
                    f"metrics.jsonl: kept the {len(kept)} records up to step {after_step}, dropped "
                    f"{dropped} logged after that checkpoint and {torn} unreadable (torn) line(s)"
                )
        self._file = self.path.open("a" if after_step else "w")
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                purge = {"purge_step": after_step + 1} if after_step else {}
                self._tb = SummaryWriter(str(run_dir / "tensorboard"), **purge)
            except ImportError:  # tensorboard is optional for library users
                self._tb = None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null reads back cleanly in pandas and jq
    return value
