"""Any reasoning-gym dataset as a task, by its name (``basic_arithmetic``, ``gsm_symbolic``, ...).

Options (config ``task_options.<key>``):

- ``train_size`` (2000), ``eval_size`` (64): split sizes.
- ``seed`` (0): picks the training items; ``eval_seed`` (0): picks the eval items. The eval set
  does not depend on ``seed`` or ``train_size``, so eval numbers stay comparable across runs.
- ``config``: dict passed through to the reasoning-gym dataset config (e.g. ``max_digits``).
- ``instruction``: appended to the question on a new line; default
  ``"End your reply with: Answer: <number>"`` for numeric answers (the best prompt for
  SmolLM2-135M, see DESIGN.md), ``"... Answer: <answer>"`` otherwise; ``""`` for none.
- ``system_prompt`` (none), ``answer_type`` (``auto`` | ``number`` | ``text``; auto means
  number when every gold answer of the first eval items is a plain number).
- ``format_reward`` (False) adds a ``format`` reward of weight ``format_weight`` (0.2): 1 when
  the completion ends with an ``Answer:`` line.
- ``math_verify`` (False): also accept answers math-verify finds equivalent to the gold one.
- ``correct_threshold`` (0.999): reasoning-gym pays 0.01-0.05 for some wrong answers, so an
  answer is correct only when the dataset's ``score_answer`` reaches this.

Splits. reasoning-gym item ``i`` of seed ``s`` is drawn with ``Random(s + i)``, so nearby seeds
give shifted copies of one another. Train and eval therefore draw from hash-derived seeds (one
per split and user seed) far apart in ``[0, 2**31)``. Eval keeps the first ``eval_size`` items
with distinct question text. Train keeps the first ``train_size`` items whose question is not
an eval question; duplicates within train are kept, as the generator's distribution has them.
Filtering train rather than eval keeps the eval distribution unbiased: in ``arith2`` about a
third of questions come from a space of a few hundred one-digit sums that train covers almost
entirely, so dropping eval items instead would leave an eval set of mostly two-digit questions.

Rewards: ``correct`` (1.0 or 0.0, None only when the dataset's scorer raises), see ``score``.
An answer is correct when ``score_answer(extracted, entry) >= correct_threshold``, or, for
numeric tasks, when it equals the gold answer as a number (some scorers mis-read signs).

Presets (``PRESETS``) are registered task names for a dataset with a fixed config; the user's
``config`` is merged over the preset's. ``arith2`` is the default demo task.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tandemrl.tasks.base import Example, RewardSpec, Task, TaskInfo, completion_text
from tandemrl.tasks.extraction import extract_number, extract_text, has_answer_line
from tandemrl.tasks.registry import (
    TaskOptionError,
    TaskProvider,
    check_options,
    register_provider,
    register_task,
)
from tandemrl.tasks.verify import math_verify_equal, numbers_equal

__all__ = ["PRESETS", "Preset", "ReasoningGymOptions", "ReasoningGymTask"]

log = logging.getLogger(__name__)

NUMBER_INSTRUCTION = "End your reply with: Answer: <number>"
TEXT_INSTRUCTION = "End your reply with: Answer: <answer>"
_GOLD_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d+)?|\.\d+)")
_ANSWER_TYPES = ("auto", "number", "text")
# Draw this many times the requested size before declaring the question space too small.
_DRAW_FACTOR = 4
# reasoning-gym datasets that are not tasks on their own: composite mixes others by config.
_NOT_TASKS = {"composite"}


@dataclass(frozen=True)
class Preset:
    """A registered task name for a reasoning-gym dataset with a fixed config."""

    dataset: str
    config: dict[str, Any]
    description: str


PRESETS: dict[str, Preset] = {
    "arith2": Preset(
        "basic_arithmetic",
        {
            "min_terms": 2,
            "max_terms": 2,
            "min_digits": 1,
            "max_digits": 2,
            "operators": ["+", "-", "*"],
            "allow_parentheses": False,
            "allow_negation": False,
        },
        "basic_arithmetic, two terms of 1-2 digits, + - * (SmolLM2-135M: 30% greedy)",
    ),
    "eq2": Preset(
        "simple_equations",
        {
            "min_terms": 2,
            "max_terms": 2,
            "min_value": 1,
            "max_value": 10,
            "operators": ["+", "-"],
            "operators_weights": [0.5, 0.5],
        },
        "simple_equations, two terms valued 1-10, + - (SmolLM2-135M: 9-17% greedy)",
    ),
}


@dataclass(frozen=True)
class ReasoningGymOptions:
    """The options of every reasoning-gym task; see the module docstring for their meaning."""

    train_size: int = 2000
    eval_size: int = 64
    seed: int = 0
    eval_seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    instruction: str | None = None
    system_prompt: str | None = None
    answer_type: str = "auto"
    format_reward: bool = False
    format_weight: float = 0.2
    math_verify: bool = False
    correct_threshold: float = 0.999

    @classmethod
    def parse(cls, task: str, options: Mapping[str, Any]) -> ReasoningGymOptions:
        """Validate raw config options; every problem is a one-line ``TaskOptionError``."""
        check_options(task, options, [f.name for f in dataclasses.fields(cls)])
        parsed = cls(**options)
        for key, minimum in (("train_size", 1), ("eval_size", 0), ("seed", 0), ("eval_seed", 0)):
            value = getattr(parsed, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise TaskOptionError(
                    f"task {task!r}: option {key} must be an integer >= {minimum}, got {value!r}"
                )
        for key in ("format_reward", "math_verify"):
            if not isinstance(getattr(parsed, key), bool):
                raise TaskOptionError(
                    f"task {task!r}: option {key} must be true or false, got {getattr(parsed, key)!r}"
                )
        for key in ("format_weight", "correct_threshold"):
            value = getattr(parsed, key)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise TaskOptionError(
                    f"task {task!r}: option {key} must be a number, got {value!r}"
                )
        for key in ("instruction", "system_prompt"):
            if not isinstance(getattr(parsed, key), str | None):
                raise TaskOptionError(
                    f"task {task!r}: option {key} must be a string, got {getattr(parsed, key)!r}"
                )
        if not isinstance(parsed.config, Mapping):
            raise TaskOptionError(
                f"task {task!r}: option config must be a mapping, got {parsed.config!r}"
            )
        if parsed.answer_type not in _ANSWER_TYPES:
            raise TaskOptionError(
                f"task {task!r}: answer_type must be one of {', '.join(_ANSWER_TYPES)}, "
                f"got {parsed.answer_type!r}"
            )
        return parsed


def _split_seed(split: str, seed: int) -> int:
    # Below 2**31 so seed + index stays a valid numpy seed (< 2**32) in every dataset.
    digest = hashlib.sha256(f"tandemrl/{split}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**31


@functools.cache
def _dataset_registry() -> dict[str, tuple[type, type]]:
    # Imported on first use: reasoning_gym takes about 3 s to import.
    from reasoning_gym.factory import DATASETS

    return DATASETS


class ReasoningGymTask(Task):
    """A reasoning-gym dataset with a held-out split, answer extraction and a 0/1 reward."""

    source = "reasoning-gym"

    def __init__(
        self,
        dataset: str,
        options: ReasoningGymOptions | Mapping[str, Any] | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
    ) -> None:
        self.name = name or dataset
        self.dataset = dataset
        if not isinstance(options, ReasoningGymOptions):
            options = ReasoningGymOptions.parse(self.name, options or {})
        self.options = options
        self._config = self._checked_config(dict(options.config))
        # One instance scores everything: score_answer depends only on the config.
        self._scorer = self._make_dataset(seed=0, size=1)
        dataset_cls = _dataset_registry()[dataset][0]
        doc = (dataset_cls.__doc__ or "").strip().splitlines()
        self.description = description or (doc[0] if doc else dataset)
        self.rewards = [RewardSpec("correct", _CorrectReward(self))]
        if options.format_reward:
            self.rewards.append(RewardSpec("format", _FormatReward(self), options.format_weight))

    def _checked_config(self, config: dict[str, Any]) -> dict[str, Any]:
        config_cls = _dataset_registry()[self.dataset][1]
        allowed = sorted(
            f.name for f in dataclasses.fields(config_cls) if f.name not in ("seed", "size")
        )
        for key in ("seed", "size"):
            if key in config:
                raise TaskOptionError(
                    f"task {self.name!r}: set task_options.{'seed' if key == 'seed' else 'train_size'}"
                    f" instead of config.{key}"
                )
        check_options(self.name, config, allowed, kind=f"{self.dataset} config key")
        return config

    def _make_dataset(self, seed: int, size: int) -> Any:
        from reasoning_gym import create_dataset

        try:
            return create_dataset(self.dataset, seed=seed, size=size, **copy.deepcopy(self._config))
        except (AssertionError, ValueError, TypeError) as err:
            message = " ".join(str(err).split()) or type(err).__name__
            raise TaskOptionError(
                f"task {self.name!r}: invalid config for {self.dataset}: {message}"
            ) from err

    # -- splits ---------------------------------------------------------------------------

    def _source(self, split: str, seed: int, count: int) -> Any:
        # Items are generated lazily on indexing, so a generous virtual size costs nothing;
        # it must still be a pure function of the options (gsm_symbolic's items depend on it).
        return self._make_dataset(_split_seed(split, seed), _DRAW_FACTOR * count + 64)

    def _draw(self, data: Any, split: str, count: int, skip: set[str], distinct: bool) -> list:
        """The first ``count`` (index, entry) pairs of ``data`` whose question is not in ``skip``."""
        size = len(data)
        kept: list[tuple[int, dict[str, Any]]] = []
        seen = set(skip)
        for index in range(size):
            if len(kept) == count:
                return kept
            entry = data[index]
            question = entry["question"].strip()
            if question in seen:
                continue
            if distinct:
                seen.add(question)
            kept.append((index, entry))
        if len(kept) == count:
            return kept
        raise TaskOptionError(
            f"task {self.name!r}: only {len(kept)} usable {split} questions in {size} draws "
            f"(the question space is small); lower {split}_size or widen the config"
        )

    @functools.cached_property
    def _eval_source(self) -> Any:
        return self._source("eval", self.options.eval_seed, self.options.eval_size)

    @functools.cached_property
    def _eval_entries(self) -> list[tuple[int, dict[str, Any]]]:
        return self._draw(self._eval_source, "eval", self.options.eval_size, set(), True)

    @functools.cached_property
    def _gold_sample(self) -> list[str]:
        # A few eval-seed items, independent of which ones the split keeps, so that prompts
        # can be built (e.g. by describe) without generating a whole split.
        return [str(self._eval_source[i].get("answer", "")).strip() for i in range(8)]

    @functools.cached_property
    def answer_type(self) -> str:
        """``number`` or ``text``: chooses the extractor and the default instruction."""
        if self.options.answer_type != "auto":
            return self.options.answer_type
        numeric = all(_GOLD_NUMBER.fullmatch(answer) for answer in self._gold_sample)
        return "number" if numeric else "text"

    @functools.cached_property
    def multiline(self) -> bool:
        """Whether text answers span lines (grids), so extraction keeps every line."""
        return any("\n" in answer for answer in self._gold_sample)

    def _example(self, split: str, seed: int, index: int, entry: dict[str, Any]) -> Example:
        instruction = self.options.instruction
        if instruction is None:
            instruction = NUMBER_INSTRUCTION if self.answer_type == "number" else TEXT_INSTRUCTION
        content = entry["question"] + (f"\n{instruction}" if instruction else "")
        messages = [{"role": "user", "content": content}]
        if self.options.system_prompt:
            messages.insert(0, {"role": "system", "content": self.options.system_prompt})
        return Example(
            id=f"{self.name}/{split}/{seed}/{index}",
            messages=messages,
            columns={"answer": entry.get("answer"), "entry": entry},
        )

    @functools.cached_property
    def _eval(self) -> tuple[Example, ...]:
        seed = self.options.eval_seed
        return tuple(self._example("eval", seed, i, e) for i, e in self._eval_entries)

    @functools.cached_property
    def _train(self) -> tuple[Example, ...]:
        eval_questions = {entry["question"].strip() for _, entry in self._eval_entries}
        seed = self.options.seed
        data = self._source("train", seed, self.options.train_size)
        drawn = self._draw(data, "train", self.options.train_size, eval_questions, False)
        return tuple(self._example("train", seed, i, e) for i, e in drawn)

    def train_examples(self) -> Sequence[Example]:
        return self._train

    def eval_examples(self) -> Sequence[Example]:
        return self._eval

    # -- scoring --------------------------------------------------------------------------

    def _score_entry(self, completion: str, entry: dict[str, Any]) -> dict[str, float]:
        numeric = self.answer_type == "number"
        if numeric:
            extracted = extract_number(completion)
        else:
            extracted = extract_text(completion, multiline=self.multiline)
        metrics = {"format": float(has_answer_line(completion, numeric=numeric))}
        if extracted is None:  # no answer is a wrong answer, not a reason to abstain
            return {"correct": 0.0, "score": 0.0, **metrics}
        raw = float(self._scorer.score_answer(extracted, entry))
        correct = raw >= self.options.correct_threshold
        gold = entry.get("answer")
        if not correct and numeric:
            correct = numbers_equal(gold, extracted)
        if not correct and self.options.math_verify and gold is not None:
            correct = math_verify_equal(str(gold), extracted)
        return {"correct": float(correct), "score": raw, **metrics}

    def score(self, example: Example, completion: str) -> dict[str, float]:
        """``correct`` (0/1), ``score`` (raw reasoning-gym score), ``format`` (Answer line)."""
        return self._score_entry(completion_text(completion), example.columns["entry"])

    def metric_names(self) -> list[str]:
        return ["correct", "score", "format"]

    def describe(self) -> TaskInfo:
        # Generates no split: listing all ~100 tasks must stay quick. The sizes are exact
        # because building a split either fills it or raises.
        seed = self.options.eval_seed
        example = self._example("eval", seed, 0, self._eval_source[0])
        return TaskInfo(
            name=self.name,
            description=self.description,
            train_size=self.options.train_size,
            eval_size=self.options.eval_size,
            metrics=self.metric_names(),
            rewards=[r.name for r in self.rewards],
            example_prompt=example.messages,
            source=f"{self.source}: {self.dataset}",
        )


@dataclass(frozen=True)
class _CorrectReward:
    """TRL-style reward: 1.0 when the completion's answer is correct, None if scoring fails."""

    task: ReasoningGymTask

    def __call__(
        self, prompts: list, completions: list, entry: list[dict[str, Any]], **_: Any
    ) -> list[float | None]:
        rewards: list[float | None] = []
        for completion, item in zip(completions, entry, strict=True):
            try:
                rewards.append(self.task._score_entry(completion_text(completion), item)["correct"])
            except Exception:  # a scorer bug must not kill a run; abstain and say so
                log.warning(
                    "%s: score_answer raised; reward abstains", self.task.name, exc_info=True
                )
                rewards.append(None)
        return rewards


@dataclass(frozen=True)
class _FormatReward:
    """TRL-style reward: 1.0 when the completion has an ``Answer:`` line with an answer."""

    task: ReasoningGymTask

    def __call__(self, prompts: list, completions: list, **_: Any) -> list[float | None]:
        numeric = self.task.answer_type == "number"
        return [float(has_answer_line(completion_text(c), numeric=numeric)) for c in completions]


def _preset_factory(name: str, preset: Preset) -> Callable[..., ReasoningGymTask]:
    def build(**options: Any) -> ReasoningGymTask:
        options = dict(options)
        user_config = options.get("config") or {}
        if not isinstance(user_config, Mapping):
            raise TaskOptionError(
                f"task {name!r}: option config must be a mapping, got {user_config!r}"
            )
        options["config"] = {**copy.deepcopy(preset.config), **user_config}
        return ReasoningGymTask(preset.dataset, options, name=name, description=preset.description)

    return build


for _name, _preset in PRESETS.items():
    register_task(_name)(_preset_factory(_name, _preset))


def _provider_factory(dataset: str) -> Callable[..., ReasoningGymTask]:
    def build(**options: Any) -> ReasoningGymTask:
        return ReasoningGymTask(dataset, options)

    return build


register_provider(
    TaskProvider(
        source="reasoning-gym",
        names=lambda: sorted(n for n in _dataset_registry() if n not in _NOT_TASKS),
        factory=_provider_factory,
    )
)
