"""The task interface the trainer consumes: examples, named reward functions, eval scoring.

A task bundles a dataset split into train and held-out eval examples, the reward functions
used during training, and a ``score`` used at evaluation time. Reward functions follow TRL's
convention so user functions drop in unchanged::

    fn(prompts: list[list[dict]], completions: list[str], **columns) -> list[float | None]

where each column is a list aligned with ``completions`` (taken from ``Example.columns``) and
``None`` means the function abstains on that completion.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Example", "RewardFn", "RewardSpec", "Task", "TaskInfo", "completion_text"]

RewardFn = Callable[..., list[float | None]]


@dataclass(frozen=True)
class Example:
    """One prompt: chat messages without the assistant turn, plus columns for the rewards."""

    id: str
    messages: list[dict[str, str]]
    columns: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RewardSpec:
    """A named reward function; logged as ``reward/<name>/mean``."""

    name: str
    fn: RewardFn
    weight: float = 1.0


@dataclass(frozen=True)
class TaskInfo:
    """What ``tandem tasks`` shows about a task."""

    name: str
    description: str
    train_size: int
    eval_size: int
    metrics: list[str]
    rewards: list[str]
    example_prompt: list[dict[str, str]]
    source: str = "tandemrl"

    def example_text(self) -> str:
        """The example prompt as plain text, one ``role: content`` block per message."""
        return "\n".join(f"{m['role']}: {m['content']}" for m in self.example_prompt)


def completion_text(completion: Any) -> str:
    """Accept both plain-text completions and TRL's conversational form (list of messages)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


class Task(ABC):
    """Base class for tasks. Subclasses set ``name`` and ``rewards`` and implement the splits.

    ``train_examples`` and ``eval_examples`` must be deterministic given the task's options,
    and disjoint both by example id and by prompt text. ``score`` returns eval metrics for a
    single completion and always includes ``"correct"`` in ``{0.0, 1.0}``.
    """

    name: str
    rewards: list[RewardSpec]
    description: str = ""
    source: str = "tandemrl"

    @abstractmethod
    def train_examples(self) -> Sequence[Example]: ...

    @abstractmethod
    def eval_examples(self) -> Sequence[Example]: ...

    @abstractmethod
    def score(self, example: Example, completion: str) -> dict[str, float]: ...

    def metric_names(self) -> list[str]:
        """Keys that ``score`` returns; override when there is more than ``correct``."""
        return ["correct"]

    def describe(self) -> TaskInfo:
        """Summary for listings; builds both splits, so override it where that is costly."""
        train, held_out = self.train_examples(), self.eval_examples()
        example = held_out[0] if held_out else train[0]
        return TaskInfo(
            name=self.name,
            description=self.description,
            train_size=len(train),
            eval_size=len(held_out),
            metrics=self.metric_names(),
            rewards=[r.name for r in self.rewards],
            example_prompt=example.messages,
            source=self.source,
        )


def split_seed(task: str, split: str, seed: int) -> int:
    """A 64-bit seed for generating `task`'s `split` from the user's `seed`: fixed across
    machines and Python runs (unlike `hash`), and different for each task and split."""
    return int.from_bytes(hashlib.sha256(f"{task}/{split}/{seed}".encode()).digest()[:8], "big")
