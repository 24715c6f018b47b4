"""Your own data and reward functions, task ``dataset`` (alias ``jsonl``): prompts from a file, a
Hugging Face dataset or, from Python, a ``datasets.Dataset``.

Config, the way TRL and verl users write it::

    task: dataset
    task_options:
      path: data/train.jsonl            # .jsonl / .json / .parquet / .csv, a dataset folder,
                                        # or a hub id (org/name, org/name:split); from the
                                        # Python API also a datasets.Dataset or a list of dicts
      eval_path: data/test.jsonl        # optional; else eval_size rows are held out by id
      prompt_column: prompt             # a string (the user turn) or a list of chat messages
      rewards:
        - my_pkg.rewards:correctness    # weight 1, named "correctness"
        - {function: my_rewards.py:brevity, weight: 0.2, name: short}
        - rm:path/to/reward-model       # a sequence-classification model's score

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tandemrl.tasks.base import Example, RewardSpec, Task
from tandemrl.tasks.registry import TaskOptionError, check_options, register_task
from tandemrl.tasks.reward_model import REWARD_MODEL_PREFIX, RewardModel
from tandemrl.tasks.rewards import load_reward_function, run_reward
from tandemrl.tasks.rows import read_rows

__all__ = ["DatasetTask", "JsonlTask", "reward_specs_from"]


def _error(message: str, task: str = "dataset") -> TaskOptionError:
    return TaskOptionError(f"task {task!r}: {message}")


def reward_specs_from(rewards: Any, task: str = "dataset") -> list[RewardSpec]:
    """Named, weighted reward functions from what a user writes: `module:function` strings,
    `{function, weight, name}` mappings, `rm:<model>` reward models, Python callables (named by
    their `__name__`) or `RewardSpec`s, alone or in a list."""
    if isinstance(rewards, str | Mapping) or callable(rewards) or isinstance(rewards, RewardSpec):
        rewards = [rewards]
    if not isinstance(rewards, Sequence) or not rewards:
        raise _error("set rewards: a list of 'module:function' or {function, weight, name}", task)
    specs = []
    for entry in rewards:
        if isinstance(entry, RewardSpec):
            specs.append(entry)
            continue
        if callable(entry):
            specs.append(RewardSpec(getattr(entry, "__name__", "reward"), entry, 1.0))
            continue
        entry = {"function": entry} if isinstance(entry, str) else dict(entry)
        check_options(task, entry, ("function", "weight", "name"), kind="reward key")
        if "function" not in entry:
            raise _error(f"reward {entry!r} has no function", task)
        fn = _reward_function(entry["function"])
        default_name = getattr(fn, "__name__", None) or str(entry["function"]).rpartition(":")[2]
        name = str(entry.get("name") or default_name)
        weight = entry.get("weight", 1.0)
        if not isinstance(weight, int | float) or isinstance(weight, bool):
            raise _error(f"reward {name!r}: weight must be a number, got {weight!r}", task)
        specs.append(RewardSpec(name, fn, float(weight)))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise _error(f"reward names must be unique, got {names}; set name: for each", task)
    return specs


def _reward_function(spec: Any) -> Any:
    if callable(spec):
        return spec
    if str(spec).startswith(REWARD_MODEL_PREFIX):
        return RewardModel(str(spec)[len(REWARD_MODEL_PREFIX) :])
    return load_reward_function(str(spec))


@register_task("dataset")
class DatasetTask(Task):
    """Prompts from user data, rewards from user functions (see the module docstring)."""

    name = "dataset"
    source = "user data"

    def __init__(
        self,
        path: Any = None,
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
            raise self._error("set task_options.path: a data file, a dataset folder or a hub id")
        if rewards is None:
            raise self._error("set task_options.rewards, e.g. [my_pkg.rewards:correctness]")
        self.prompt_column, self.system_prompt, self.id_column = (
            prompt_column,
            system_prompt,
            id_column,
        )
        train = self._examples(path, "train")
        self.rewards = reward_specs_from(rewards, self.name)
        names = [s.name for s in self.rewards]
        self.correct_reward = correct_reward or names[0]
        if self.correct_reward not in names:
            raise self._error(
                f"correct_reward {correct_reward!r} is not one of the rewards {names}"
            )
        self.correct_threshold = float(correct_threshold)
        self.description = f"user data {_label(path)} (rewards: {', '.join(names)})"
        if eval_path is not None:
            held_out = self._examples(eval_path, "eval")
        else:
            if not isinstance(eval_size, int) or not 0 <= eval_size < len(train):
                raise self._error(
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
            raise self._error(
                f"id {sorted(overlap)[0]!r} is in both the training and the eval file"
            )
        self._train = tuple(train if train_size is None else train[:train_size])
        self._eval = tuple(held_out)

    def _error(self, message: str) -> TaskOptionError:
        return _error(message, self.name)

    def _examples(self, source: Any, split: str) -> list[Example]:
        rows = read_rows(source, f"task {self.name!r}")
        path = _label(source)
        if not rows:
            raise self._error(f"{path} has no rows")
        out, seen = [], set()
        for number, row in enumerate(rows):
            if self.prompt_column not in row:
                raise self._error(
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
                raise self._error(
                    f"{path} row {number}: {self.prompt_column} must be a string or messages"
                )
            if self.system_prompt and messages[0]["role"] != "system":
                messages.insert(0, {"role": "system", "content": self.system_prompt})
            ident = str(row[self.id_column]) if self.id_column else f"{split}-{number}"
            if self.id_column and self.id_column not in row:
                raise self._error(f"{path} row {number} has no id column {self.id_column!r}")
            if ident in seen:
                raise self._error(f"{path}: id {ident!r} appears twice")
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


@register_task("jsonl")
class JsonlTask(DatasetTask):
    """Task `dataset` under its first name (a JSONL or parquet file)."""

    name = "jsonl"


def _label(source: Any) -> str:
    """How errors and `tandem tasks` name a data source."""
    if isinstance(source, str | Path):
        return str(source)
    return f"<{type(source).__name__} of {len(source)} rows>"
