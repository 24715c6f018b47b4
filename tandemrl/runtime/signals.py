"""Stopping a run cleanly on Ctrl-C (SIGINT) and SIGTERM (schedulers, `kill`, torchrun).

- SIGTERM: the step in flight finishes, then the trainer saves a checkpoint and exits (143)
  with the command that resumes it. Steps are bounded, and a batch scheduler's grace period
  (typically 30 s or more) is what this is for.
- Ctrl-C, or a second SIGTERM: the step in flight is abandoned at once (KeyboardInterrupt);
  the trainer saves the state as of the last finished step and exits (130).

An abandoned step must not leave half an update behind (one adapter stepped and not the
other, an optimizer stepped without its scheduler), nor an update whose step was never
logged. Methods wrap the part of a step that changes persistent state in `commit()`; the
trainer wraps each whole step (and its logging) in `step_scope()`. An interrupt before the
first commit abandons the step at once (nothing persistent changed yet: the trainer saves
the state as of the previous step); one that lands inside or after a commit is held until the
step scope ends, so that step is finished, logged and saved.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from tandemrl.errors import Interrupted

_state = {"depth": 0, "pending": False, "in_step": False, "committed": False}


def _release() -> None:
    if _state["pending"]:
        _state["pending"] = False
        raise Interrupted


@contextlib.contextmanager
def commit() -> Iterator[None]:
    """Hold interrupts (from `StopSignals`) until the block ends, or inside a step scope
    until the step ends; nests."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1
        _state["committed"] = _state["in_step"]
        if _state["depth"] == 0 and not _state["in_step"]:
            _release()


@contextlib.contextmanager
def step_scope() -> Iterator[None]:
    """One training step: after its first `commit()`, interrupts wait for the end of it."""
    _state.update(in_step=True, committed=False)
    try:
        yield
    except BaseException:
        _state["pending"] = False  # the step failed anyway: its own error wins
        raise
    finally:
        _state.update(in_step=False, committed=False)
    _release()


def _abandon() -> None:
    if _state["depth"] or _state["committed"]:
        _state["pending"] = True
        return
    raise Interrupted


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
