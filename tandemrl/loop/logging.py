"""Metrics to `metrics.jsonl` (one object per step) and to the trackers (`loop.trackers`)."""

from __future__ import annotations

import json
import math
import resource
from pathlib import Path
from typing import Any

import torch

from tandemrl.loop.trackers import Tracker
from tandemrl.runtime.records import read_records


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def accelerator_memory(device: torch.device) -> dict[str, float]:
    """Peak memory allocated on a CUDA device so far (`memory/peak_gpu_mb`); {} elsewhere."""
    if device.type != "cuda":
        return {}
    return {"memory/peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20}


class MetricsLogger:
    def __init__(
        self, run_dir: Path, trackers: list[Tracker] | None = None, after_step: int = 0
    ) -> None:
        """A fresh `metrics.jsonl`, or with `after_step` > 0 (a resumed run) the records of
        steps up to it, the rest dropped (steps the interrupted run logged after its last
        checkpoint, and a torn last line), then appended to. `notes` says what was dropped."""
        self.path = run_dir / "metrics.jsonl"
        self.completions_path = run_dir / "completions.jsonl"
        self.trackers = list(trackers or [])
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

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for tracker in self.trackers:
            tracker.log(step, metrics)

    def log_completions(self, step: int, rows: list[dict[str, Any]]) -> None:
        """A table of sampled completions: appended to `completions.jsonl` (each row with its
        step) and sent to every tracker as `completions`."""
        with self.completions_path.open("a") as f:
            for row in rows:
                f.write(
                    json.dumps({"step": step, **{k: _jsonable(v) for k, v in row.items()}}) + "\n"
                )
        for tracker in self.trackers:
            tracker.log_table(step, "completions", rows)

    def log_eval(self, step: int, tag: str, result: dict[str, Any]) -> None:
        """A held-out evaluation's numbers to the trackers as `eval/<tag>/<metric>` (the
        whole result, examples included, is in eval.json)."""
        numbers = {
            f"eval/{tag.replace(' ', '_')}/{k}": v for k, v in result.items() if k != "examples"
        }
        for tracker in self.trackers:
            tracker.log(step, numbers)

    def close(self) -> None:
        self._file.close()
        for tracker in self.trackers:
            tracker.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; null reads back cleanly in pandas and jq
    return value
