"""Your own data and reward functions, task ``jsonl``: a JSONL or parquet file with prompts.

Config, the way TRL and verl users write it::

    task: jsonl
    task_options:
      path: data/train.jsonl            # .jsonl / .json (one object per line) or .parquet
      eval_path: data/test.jsonl        # optional; else eval_size rows are held out by id
      prompt_column: prompt             # a string (the user turn) or a list of chat messages
      rewards:
        - my_pkg.rewards:correctness    # weight 1, named "correctness"
        - {function: my_rewards.py:brevity, weight: 0.2, name: short}

Every other column is passed to every reward function as a keyword argument holding one value
per completion, TRL's signature::

    def correctness(prompts, completions, answer, **columns) -> list[float | None]: ...

``prompts`` are the chat messages, ``completions`` the generated texts; None abstains.
Functions are called through ``tandemrl.tasks.rewards.run_reward``: a row that raises abstains
and is counted (``reward/<name>/errors``), a wrong-length or non-numeric result stops with one
line naming the function and the row. Ready-made: ``tandemrl.tasks.rewards:exact_match`` and
``tandemrl.tasks.rewards:numeric_match`` (against an ``answer`` column).

Other options: ``system_prompt`` (none), ``id_column`` (row number when unset; ids must be
unique), ``eval_size`` (64, when there is no ``eval_path``), ``train_size`` (all), ``seed``
(0, orders the rows held out), ``correct_reward`` (first reward) and ``correct_threshold``
(1.0): an eval completion is ``correct`` when that reward reaches the threshold.

Eval metrics: ``correct`` and each reward's value (an abstaining or failing row counts 0;
failures are counted in ``reward_errors``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tandemrl.tasks.base import Example, RewardSpec, Task
from tandemrl.tasks.registry import TaskOptionError, check_options, register_task
from tandemrl.tasks.rewards import load_reward_function, run_reward

__all__ = ["JsonlTask", "read_json_lines", "read_rows"]


def _error(message: str) -> TaskOptionError:
    return TaskOptionError(f"task 'jsonl': {message}")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``.jsonl``/``.json`` (one object per line) or ``.parquet`` file."""
    file = Path(path)
    if not file.is_file():
        raise _error(f"no such file {str(file)!r}")
    if file.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as err:
            raise _error("reading parquet needs pyarrow (pip install pyarrow)") from err
        return pq.read_table(file).to_pylist()
    try:
        return [row for _, row in read_json_lines(file)]
    except ValueError as err:
        raise _error(str(err)) from None


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


def _reward_specs(rewards: Any) -> list[RewardSpec]:
    if isinstance(rewards, str | Mapping):
        rewards = [rewards]
    if not isinstance(rewards, Sequence) or not rewards:
        raise _error("set rewards: a list of 'module:function' or {function, weight, name}")
    specs = []
    for entry in rewards:
        entry = {"function": entry} if isinstance(entry, str) else dict(entry)
        check_options("jsonl", entry, ("function", "weight", "name"), kind="reward key")
        if "function" not in entry:
            raise _error(f"reward {entry!r} has no function")
        fn = load_reward_function(str(entry["function"]))
        name = str(entry.get("name") or str(entry["function"]).rpartition(":")[2])
        weight = entry.get("weight", 1.0)
        if not isinstance(weight, int | float) or isinstance(weight, bool):
            raise _error(f"reward {name!r}: weight must be a number, got {weight!r}")
        specs.append(RewardSpec(name, fn, float(weight)))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise _error(f"reward names must be unique, got {names}; set name: for each")
    return specs


@register_task("jsonl")
class JsonlTask(Task):
    """Prompts from a user file, rewards from user functions (see the module docstring)."""

    name = "jsonl"
    source = "user data"

    def __init__(
        self,
        path: str | None = None,
        rewards: Any = None,
        *,
        eval_path: str | None = None,
        prompt_column: str = "prompt",
        system_prompt: str | None = None,
        id_column: str | None = None,
        eval_size: int = 64,
        train_size: int | None = None,
        seed: int = 0,
        correct_reward: str | None = None,
        correct_threshold: float = 1.0,
    ) -> None:
        if path is None:
            raise _error("set task_options.path to a .jsonl or .parquet file")
        if rewards is None:
            raise _error("set task_options.rewards, e.g. [my_pkg.rewards:correctness]")
        self.prompt_column, self.system_prompt, self.id_column = (
            prompt_column,
            system_prompt,
            id_column,
        )
        train = self._examples(path, "train")
        self.rewards = _reward_specs(rewards)
        names = [s.name for s in self.rewards]
        self.correct_reward = correct_reward or names[0]
        if self.correct_reward not in names:
            raise _error(f"correct_reward {correct_reward!r} is not one of the rewards {names}")
        self.correct_threshold = float(correct_threshold)
        self.description = f"user data {Path(path).name} (rewards: {', '.join(names)})"
        if eval_path is not None:
            held_out = self._examples(eval_path, "eval")
        else:
            if not isinstance(eval_size, int) or not 0 <= eval_size < len(train):
                raise _error(
                    f"eval_size must be from 0 to {len(train) - 1} rows, got {eval_size!r}"
                )
            order = sorted(
                train, key=lambda ex: hashlib.sha256(f"{seed}/{ex.id}".encode()).digest()
            )
            held_ids = {ex.id for ex in order[:eval_size]}
            held_out = [ex for ex in train if ex.id in held_ids]
            train = [ex for ex in train if ex.id not in held_ids]
        overlap = {ex.id for ex in train} & {ex.id for ex in held_out}
        if overlap:
            raise _error(f"id {sorted(overlap)[0]!r} is in both the training and the eval file")
        self._train = tuple(train if train_size is None else train[:train_size])
        self._eval = tuple(held_out)

    def _examples(self, path: str, split: str) -> list[Example]:
        rows = read_rows(path)
        if not rows:
            raise _error(f"{path} has no rows")
        out, seen = [], set()
        for number, row in enumerate(rows):
            if self.prompt_column not in row:
                raise _error(
                    f"{path} row {number} has no column {self.prompt_column!r} "
                    f"(columns: {', '.join(sorted(row))}); set prompt_column"
                )
            prompt = row[self.prompt_column]
            if isinstance(prompt, str):
                messages = [{"role": "user", "content": prompt}]
            elif isinstance(prompt, list) and all(
                isinstance(m, dict) and "role" in m for m in prompt
            ):
                messages = [{"role": m["role"], "content": m.get("content", "")} for m in prompt]
            else:
                raise _error(
                    f"{path} row {number}: {self.prompt_column} must be a string or messages"
                )
            if self.system_prompt and messages[0]["role"] != "system":
                messages.insert(0, {"role": "system", "content": self.system_prompt})
            ident = str(row[self.id_column]) if self.id_column else f"{split}-{number}"
            if self.id_column and self.id_column not in row:
                raise _error(f"{path} row {number} has no id column {self.id_column!r}")
            if ident in seen:
                raise _error(f"{path}: id {ident!r} appears twice")
            seen.add(ident)
            columns = {k: v for k, v in row.items() if k != self.prompt_column}
            out.append(Example(ident, messages, columns))
        return out

    def train_examples(self) -> Sequence[Example]:
        return self._train

    def eval_examples(self) -> Sequence[Example]:
        return self._eval

    def score(self, example: Example, completion: str) -> dict[str, float]:
        """Each reward's value (0 when it abstains or fails), ``correct`` and ``reward_errors``."""
        columns = {k: [v] for k, v in example.columns.items()}
        out: dict[str, float] = {"reward_errors": 0.0}
        for spec in self.rewards:
            outcome = run_reward(spec, [example.messages], [completion], columns, [example.id])
            value = outcome.values[0]
            out[spec.name] = 0.0 if value is None else value
            out["reward_errors"] += outcome.errors
        out["correct"] = float(out[self.correct_reward] >= self.correct_threshold)
        return out

    def metric_names(self) -> list[str]:
        return ["correct", *(s.name for s in self.rewards), "reward_errors"]
