"""Experiment trackers: TensorBoard, Weights & Biases and trackio, behind one small interface,
fed the same metric names as `metrics.jsonl` (`log.trackers`).

W&B runs offline (files under `<run>/wandb/`, `wandb sync` uploads them later) unless
`WANDB_API_KEY` or `WANDB_MODE` says otherwise, so a run never needs a network. A tracker
that cannot start (its package missing) stops the run before training with one line.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Protocol

from tandemrl.errors import ConfigError
from tandemrl.runtime.config import TrainConfig


class Tracker(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_table(self, step: int, name: str, rows: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a step's metrics (text metrics stay in metrics.jsonl)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


class TensorBoardTracker:
    def __init__(self, run_dir: Path, after_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = {"purge_step": after_step + 1} if after_step else {}
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), **purge)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in _numbers(metrics).items():
            self.writer.add_scalar(key, value, step)

    def log_table(self, step: int, name: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            header = list(rows[0])
            lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
            for row in rows:
                cells = [str(row[h]).replace("|", "\\|").replace("\n", " ") for h in header]
                lines.append("| " + " | ".join(cells) + " |")
            self.writer.add_text(name, "\n".join(lines), step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run_dir: Path, config: TrainConfig) -> None:
        import wandb

        offline = not (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"))
        self.wandb = wandb
        self.run = wandb.init(
            project=config.log.project,
            name=config.log.run_name or run_dir.name,
            dir=str(run_dir),
            config=config.to_dict(),
            mode="offline" if offline else None,
            reinit="finish_previous",
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(_numbers(metrics), step=step)

    def log_table(self, step: int, name: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            columns = list(rows[0])
            table = self.wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])
            self.run.log({name: table}, step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioTracker:
    def __init__(self, run_dir: Path, config: TrainConfig) -> None:
        import trackio

        self.trackio = trackio
        self.run = trackio.init(
            project=config.log.project,
            name=config.log.run_name or run_dir.name,
            config=config.to_dict(),
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.trackio.log(_numbers(metrics), step=step)

    def log_table(self, step: int, name: str, rows: list[dict[str, Any]]) -> None:
        table = getattr(self.trackio, "Table", None)
        if rows and table is not None:
            columns = list(rows[0])
            self.trackio.log({name: table(columns=columns, data=[[r[c] for c in columns] for r in rows])}, step=step)  # fmt: skip

    def close(self) -> None:
        self.trackio.finish()


def open_trackers(config: TrainConfig, run_dir: Path, after_step: int) -> list[Tracker]:
    """The trackers `log.trackers` names (`log.tensorboard=false` drops TensorBoard)."""
    names = [n for n in config.log.trackers if n != "tensorboard" or config.log.tensorboard]
    out: list[Tracker] = []
    for name in dict.fromkeys(names):
        try:
            if name == "tensorboard":
                out.append(TensorBoardTracker(run_dir, after_step))
            elif name == "wandb":
                out.append(WandbTracker(run_dir, config))
            else:
                out.append(TrackioTracker(run_dir, config))
        except ImportError as err:
            for tracker in out:
                tracker.close()
            raise ConfigError(
                f"log.trackers: {name} needs its package ({err.name or err}); pip install "
                f"{name}, or drop it from log.trackers"
            ) from None
    return out
