"""Who may write a run directory, and what a fresh run does to an earlier one.

- One writer: `RunDirLock` holds an exclusive `flock` on `<run>/.tandem.lock` (the kernel
  drops it when the process dies, SIGKILL included, so a crash leaves no stale lock) with the
  holder's pid, host and start time in the file; a second run into the same directory stops
  with one line naming them.
- No silent overwrite: a fresh run (no `resume`) into a directory that holds an earlier run's
  files stops with one line, unless `overwrite=true`, which removes them. `resume=auto` that
  finds no valid checkpoint there moves the earlier files aside to `<run>/previous-<time>/`
  before starting over, so nothing of the earlier run is lost without that word.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from tandemrl.errors import ConfigError

LOCK_FILE = ".tandem.lock"
# What a run writes at the top of its directory (checkpoints and TensorBoard are folders).
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "eval.json", "dupo_policies.png")
RUN_FOLDERS = ("checkpoints", "tensorboard")


class RunDirLock:
    """An exclusive, process-lifetime lock on a run directory (module docstring)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise ConfigError(
                f"output_dir {self.path.parent} is in use by another run ({holder}); wait for "
                "it to finish, or choose another output_dir"
            ) from None
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.ctime()}
        os.write(fd, json.dumps(info).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (ValueError, KeyError, OSError):
        return "holder unknown"


def earlier_run_files(run_dir: Path) -> list[str]:
    """The names of an earlier run's files and folders in `run_dir` ([] if none)."""
    run_dir = Path(run_dir)
    found = [name for name in RUN_FILES if (run_dir / name).is_file()]
    found += [name for name in RUN_FOLDERS if (run_dir / name).is_dir()]
    return found


def check_output_dir(run_dir: Path) -> None:
    """One line when `output_dir` cannot be a run directory at all."""
    if Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise ConfigError(f"output_dir {run_dir} is a file; choose a directory")


def prepare_fresh_run(run_dir: Path, overwrite: bool, resuming_auto: bool) -> str | None:
    """Make `run_dir` ready for a run that starts at step 0; returns what it did (a line to
    log) or None. Refuses (ConfigError) to start over an earlier run unless told."""
    found = earlier_run_files(run_dir)
    if not found:
        return None
    if overwrite:
        for name in found:
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()
        return f"overwrite=true: removed the earlier run's {', '.join(found)} from {run_dir}"
    if resuming_auto:
        aside = run_dir / f"previous-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir()
        for name in found:
            (run_dir / name).rename(aside / name)
        return (
            f"resume=auto: {run_dir} holds a run without a valid checkpoint; moved its "
            f"{', '.join(found)} to {aside} and starting over"
        )
    raise ConfigError(
        f"output_dir {run_dir} already holds a run ({', '.join(found)}); continue it with "
        "resume=auto, replace it with overwrite=true, or choose another output_dir"
    )
