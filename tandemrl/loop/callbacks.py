"""Callbacks: user code that sees a run as it goes (the Python API's `callbacks=`).

A callback is any object with some of `on_step(step, metrics)`, `on_evaluate(tag, result)`
and `on_train_end(summary)`, or a plain function, called as `on_step`. `metrics` are the
step's logged metrics (gathered over ranks; rank 0 only calls them), `result` a held-out
evaluation (`eval.json`'s entry), `summary` what `summary.json` holds. An exception in a
callback stops the run: it is user code, and silence would hide it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tandemrl.runtime import distributed as dist


class Callbacks:
    """Fans a run's events out to user callbacks (module docstring)."""

    def __init__(self, callbacks: Sequence[Any] = ()) -> None:
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            hooks = ("on_step", "on_evaluate", "on_train_end")
            if not callable(cb) and not any(hasattr(cb, h) for h in hooks):
                raise TypeError(f"callback {cb!r} is neither callable nor has {', '.join(hooks)}")

    def _call(self, hook: str, *args: Any) -> None:
        if not dist.is_main():
            return
        for cb in self.callbacks:
            fn = getattr(cb, hook, None)
            if fn is None and hook == "on_step" and callable(cb):
                fn = cb
            if fn is not None:
                fn(*args)

    def on_step(self, step: int, metrics: dict[str, Any]) -> None:
        self._call("on_step", step, metrics)

    def on_evaluate(self, tag: str, result: dict[str, Any]) -> None:
        self._call("on_evaluate", tag, result)

    def on_train_end(self, summary: dict[str, Any]) -> None:
        self._call("on_train_end", summary)
