"""Stopping a run cleanly on Ctrl-C (SIGINT) and SIGTERM (schedulers, `kill`, torchrun).

- SIGTERM: the step in flight finishes, then the trainer saves a checkpoint and exits (143)
  with the command that resumes it. Steps are bounded, and a batch scheduler's grace period
  (typically 30 s or more) is what this is for.
- Ctrl-C, or a second SIGTERM: the step in flight is abandoned at once (KeyboardInterrupt);
  the trainer saves the state as of the last finished step and exits (130).

An abandoned step must not leave half an update behind (one adapter stepped and not the
other, an optimizer stepped without its scheduler). Methods wrap the part of a step that
changes persistent state in `commit()`: an interrupt that lands inside it is held until the
block ends, so the step is then either wholly applied or not applied at all.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

_commit = {"depth": 0, "pending": False}


@contextlib.contextmanager
def commit() -> Iterator[None]:
    """Hold interrupts (from `StopSignals`) until the block ends; nests."""
    _commit["depth"] += 1
    try:
        yield
    finally:
        _commit["depth"] -= 1
        if _commit["depth"] == 0 and _commit["pending"]:
            _commit["pending"] = False
            raise KeyboardInterrupt


def _abandon() -> None:
    if _commit["depth"]:
        _commit["pending"] = True
        return
    raise KeyboardInterrupt


class StopSignals:
    """Context manager installing the handlers above (main thread only; else a no-op).

    `stop_requested` turns true on the first SIGTERM; the trainer checks it between steps.
    """

    def __init__(self) -> None:
        self.stop_requested = False
        self._previous: dict[int, Any] = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGTERM and not self.stop_requested:
            self.stop_requested = True
            print(
                "[tandemrl] SIGTERM: finishing this step, then saving a checkpoint "
                "(send it again to abandon the step)",
                file=sys.stderr,
                flush=True,
            )
            return
        _abandon()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
