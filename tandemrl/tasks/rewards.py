"""Calling reward functions safely, loading them by import path, and two ready-made ones.

``run_reward`` is how every reward function is called during training (``score_rewards``) so
that one bad row never ends a run:

- The function is called once on the whole batch. If that call raises, it is called again row
  by row; rows that raise abstain (``None``) and are counted in ``RewardOutcome.errors``, and a
  warning names the function, how many rows failed, the first failing row and its exception.
- What the function returns is checked: it must be a sequence with one value per completion,
  each ``None`` (abstain) or a real number (bool, int, float, numpy scalar, 0-d tensor; NaN
  abstains). Anything else is a bug in the function that no retry can fix, so it raises
  ``RewardFunctionError`` with one line naming the function, what was expected and got, and
  the row.
- Each call runs under a time limit (``faults.reward_timeout_s``, 60 s by default; see
  ``reward_limits``). A call that runs over is interrupted and its rows abstain like rows that
  raise; after ``MAX_ROW_TIMEOUTS`` timed-out rows in one batch the rest of the batch abstains
  without being called, so a function that hangs on everything costs a few time limits per
  step, not one per row.
- ``faults.reward_errors=raise`` turns isolation off: the first row that raises or times out
  stops the run with a ``RewardFunctionError`` naming the function and the row.

How the time limit works, and why: in the main thread (``tandem train``, ``torchrun``) a
``SIGALRM`` timer raises ``RewardTimeout`` inside the function. That costs nothing per call and
interrupts Python code (loops, ``time.sleep``, blocking I/O), but not a C extension that holds
the GIL without checking for signals. The alternatives were worse: a thread cannot be killed
(it only stops us waiting), and a fresh process per call costs far more than most reward
functions (and needs picklable functions and data). Outside the main thread (a library user's
worker thread) the call runs in a daemon thread that is abandoned when it runs over: the run
goes on, the stuck thread is leaked.

User functions are named in config by import path, ``package.module:function`` or
``path/to/file.py:function`` (``load_reward_function``), with TRL's signature::

    def my_reward(prompts, completions, **columns) -> list[float | None]: ...

``exact_match`` and ``numeric_match`` compare the answer in a completion with an ``answer``
column, for data that has one: ``rewards: [tandemrl.tasks.rewards:numeric_match]``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import math
import numbers
import signal
import sys
import threading
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tandemrl.errors import Interrupted
from tandemrl.tasks.base import RewardSpec, completion_text
from tandemrl.tasks.extraction import extract_number, extract_text
from tandemrl.tasks.registry import TaskOptionError
from tandemrl.tasks.verify import numbers_equal

__all__ = [
    "RewardFunctionError",
    "RewardOutcome",
    "RewardTimeout",
    "exact_match",
    "load_reward_function",
    "numeric_match",
    "reward_limits",
    "run_reward",
]

log = logging.getLogger("tandemrl.rewards")


class RewardFunctionError(ValueError):
    """A reward function returned something unusable. ``str()`` is one line."""


class RewardTimeout(BaseException):  # noqa: N818
    """Raised inside a reward function that runs over its time limit. A BaseException, so a
    function's own ``except Exception`` cannot swallow it."""


MAX_ROW_TIMEOUTS = 3
_LIMITS = {"timeout_s": 60.0, "on_error": "abstain"}


@contextlib.contextmanager
def reward_limits(timeout_s: float, on_error: str = "abstain") -> Iterator[None]:
    """Time limit (seconds, 0 = none) and error policy (``abstain`` or ``raise``) for every
    ``run_reward`` call inside the block; the trainer sets them from the ``faults`` config."""
    if on_error not in ("abstain", "raise"):
        raise ValueError(f"on_error must be 'abstain' or 'raise', got {on_error!r}")
    saved = dict(_LIMITS)
    _LIMITS.update(timeout_s=float(timeout_s), on_error=on_error)
    try:
        yield
    finally:
        _LIMITS.update(saved)


def _call_with_limit(fn: Callable[[], Any], seconds: float) -> Any:
    """``fn()``, raising ``RewardTimeout`` after ``seconds`` (see the module docstring)."""
    if seconds <= 0:
        return fn()
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):

        def on_alarm(signum: int, frame: Any) -> None:
            raise RewardTimeout(f"timed out after {seconds:g} s")

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return fn()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn()
        except BaseException as err:  # handed to the caller's thread
            result["error"] = err

    worker = threading.Thread(target=target, daemon=True, name="tandemrl-reward")
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise RewardTimeout(f"timed out after {seconds:g} s (its thread is abandoned)")
    if "error" in result:
        raise result["error"]
    return result["value"]


@dataclass(frozen=True)
class RewardOutcome:
    """One reward function's values for a batch, and how many rows raised (and abstain)."""

    values: list[float | None]
    errors: int = 0


def describe_function(fn: Any) -> str:
    """``module:qualname`` of a function, for messages."""
    module = getattr(fn, "__module__", None) or "?"
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}:{name}"


def _row(index: int, row_ids: Sequence[str] | None) -> str:
    if row_ids is not None and index < len(row_ids):
        return f"row {index} (example {row_ids[index]!r})"
    return f"row {index}"


def _checked(
    spec: RewardSpec, out: Any, count: int, row_ids: Sequence[str] | None, offset: int = 0
) -> list[float | None]:
    who = f"reward function {spec.name!r} ({describe_function(spec.fn)})"
    if isinstance(out, str | bytes | Mapping) or not hasattr(out, "__len__"):
        raise RewardFunctionError(
            f"{who} returned a {type(out).__name__}; expected a list with one float or None per "
            f"completion ({count})"
        )
    if len(out) != count:
        first = offset + min(len(out), count)
        raise RewardFunctionError(
            f"{who} returned {len(out)} values for {count} completions; expected one float or "
            f"None per completion (first unmatched: {_row(first, row_ids)})"
        )
    values: list[float | None] = []
    for index, value in enumerate(out):
        if value is not None and getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
            value = value.item()  # 0-d numpy array or torch tensor
        if value is None:
            values.append(None)
        elif isinstance(value, numbers.Real) and not math.isinf(float(value)):
            # NaN abstains, as None does (TRL's convention); a step in which every reward
            # abstained is reported by the trainer (faults.max_silent_frac)
            values.append(None if math.isnan(float(value)) else float(value))
        else:
            raise RewardFunctionError(
                f"{who} returned {value!r} ({type(value).__name__}) for "
                f"{_row(offset + index, row_ids)}; expected a finite float or None"
            )
    return values


def _ends_the_process(spec: RewardSpec, err: BaseException, count: int) -> RewardFunctionError:
    """A reward function that calls sys.exit or raises KeyboardInterrupt would end the run as
    if it had finished (exit 0) or been interrupted: report it as that function's error."""
    what = (
        f"called sys.exit({err.code!r})"
        if isinstance(err, SystemExit)
        else "raised KeyboardInterrupt"
    )
    return RewardFunctionError(
        f"reward function {spec.name!r} ({describe_function(spec.fn)}) {what} on a batch of "
        f"{count} completions; a reward function must return its values, not end the process"
    )


def run_reward(
    spec: RewardSpec,
    prompts: Sequence[Any],
    completions: Sequence[Any],
    columns: Mapping[str, Sequence[Any]],
    row_ids: Sequence[str] | None = None,
    *,
    timeout_s: float | None = None,
    on_error: str | None = None,
) -> RewardOutcome:
    """Call ``spec.fn`` on a batch with per-row isolation and a time limit; see the module
    docstring. ``timeout_s`` defaults to ``spec.fn.timeout_s`` when the function has one, else
    to the enclosing ``reward_limits``, as does ``on_error``."""
    count = len(completions)
    if timeout_s is None:  # a function may carry its own limit (e.g. one that generates)
        timeout_s = getattr(spec.fn, "timeout_s", None)
    timeout_s = _LIMITS["timeout_s"] if timeout_s is None else timeout_s
    on_error = _LIMITS["on_error"] if on_error is None else on_error
    try:
        out = _call_with_limit(
            lambda: spec.fn(
                list(prompts), list(completions), **{k: list(v) for k, v in columns.items()}
            ),
            timeout_s,
        )
    except Interrupted:  # Ctrl-C from the user, not from the function
        raise
    except (SystemExit, KeyboardInterrupt) as err:
        raise _ends_the_process(spec, err, count) from None
    except (Exception, RewardTimeout):  # retried row by row below, to find the failing rows
        pass
    else:
        return RewardOutcome(_checked(spec, out, count, row_ids))
    values: list[float | None] = []
    failures: list[tuple[int, BaseException]] = []
    timeouts = 0
    for i in range(count):
        if timeouts >= MAX_ROW_TIMEOUTS:  # treated as hung for the rest of this batch
            values.append(None)
            failures.append((i, RewardTimeout("not called: earlier rows timed out")))
            continue
        row_columns = {k: [v[i]] for k, v in columns.items()}
        try:
            out = _call_with_limit(
                lambda i=i, row_columns=row_columns: spec.fn(
                    [prompts[i]], [completions[i]], **row_columns
                ),
                timeout_s,
            )
        except Interrupted:
            raise
        except (SystemExit, KeyboardInterrupt) as err:
            raise _ends_the_process(spec, err, 1) from None
        except (Exception, RewardTimeout) as err:  # the row abstains; the run goes on
            if on_error == "raise":
                raise RewardFunctionError(
                    f"reward function {spec.name!r} ({describe_function(spec.fn)}) failed on "
                    f"{_row(i, row_ids)}: {type(err).__name__}: {err} (faults.reward_errors="
                    "raise; set it to abstain to skip such rows)"
                ) from None
            timeouts += isinstance(err, RewardTimeout)
            values.append(None)
            failures.append((i, err))
            continue
        values.extend(_checked(spec, out, 1, row_ids, offset=i))
    if failures:
        index, err = failures[0]
        log.warning(
            "reward function %r (%s) raised on %d of %d rows, which abstain; first: %s: %s: %s",
            spec.name,
            describe_function(spec.fn),
            len(failures),
            count,
            _row(index, row_ids),
            type(err).__name__,
            err,
        )
    return RewardOutcome(values, len(failures))


def load_reward_function(path: str) -> Any:
    """The callable named by ``module:function`` or ``file.py:function``; one-line errors."""
    module_name, sep, attr = path.rpartition(":")
    if not sep or not module_name or not attr:
        raise TaskOptionError(
            f"reward function {path!r}: expected 'package.module:function' or 'file.py:function'"
        )
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise TaskOptionError(f"reward function {path!r}: no such file {file}")
            name = f"tandemrl_user_rewards.{file.stem}"
            spec = importlib.util.spec_from_file_location(name, file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses and pickling look the module up
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except TaskOptionError:
        raise
    except Exception as err:
        raise TaskOptionError(
            f"reward function {path!r}: importing {module_name} failed: {type(err).__name__}: {err}"
        ) from err
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise TaskOptionError(f"reward function {path!r}: {module_name} has no function {attr!r}")
    return fn


def _normalize_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(text.split()).strip(" .!?\"'`*")


def exact_match(prompts: list, completions: list, answer: list, **_: Any) -> list[float | None]:
    """1.0 when the answer (after ``Answer:``, else the whole reply) equals ``answer``.

    Case, surrounding quotes and punctuation, and runs of spaces are ignored. A row whose
    ``answer`` is None abstains.
    """
    out: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        if gold is None:
            out.append(None)
            continue
        text = completion_text(completion)
        said = extract_text(text) or text
        out.append(float(_normalize_text(said) == _normalize_text(str(gold))))
    return out


def numeric_match(prompts: list, completions: list, answer: list, **_: Any) -> list[float | None]:
    """1.0 when the number extracted from the completion equals ``answer`` as a number.

    Extraction as in ``tandemrl.tasks.extraction.extract_number``; None answers abstain.
    """
    out: list[float | None] = []
    for completion, gold in zip(completions, answer, strict=True):
        if gold is None:
            out.append(None)
            continue
        said = extract_number(completion_text(completion))
        out.append(float(said is not None and numbers_equal(said, gold)))
    return out


def overlong_reward(max_len: int, buffer: int):
    """DAPO's soft overlong punishment as a reward function (arXiv 2503.14476):

        0 if L <= max_len - buffer;  ((max_len - buffer) - L) / buffer inside the buffer;
        -1 if L > max_len,

    with L the response's token count (the `completion_ids` column every reward receives).
    A response cut at the generation budget (L = max_len) gets -1: truncation costs reward
    smoothly instead of silently scoring whatever text was cut off."""
    start = max_len - buffer

    def overlong(prompts: list, completions: list, completion_ids: list, **_: Any) -> list:
        out: list[float | None] = []
        for ids in completion_ids:
            length = len(ids)
            if length <= start:
                out.append(0.0)
            elif length > max_len:
                out.append(-1.0)
            else:
                out.append((start - length) / buffer)
        return out

    return overlong
