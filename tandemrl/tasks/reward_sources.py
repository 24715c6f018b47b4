"""Rewards that sample from the policy, and the ``reward=`` switch that installs them.

Most rewards are plain ``f(prompts, completions, **columns)``. A few need the model being
trained, e.g. the duality reward of the DuPO paper (``tandemrl.tasks.duality_reward``), which asks the policy to
reconstruct part of the input from each response. Such a reward stays a plain callable and
adds two optional methods, which the trainer calls on every reward of the task:

- ``bind_policy(generate)``: called once after the method is built. ``generate(prompts, n,
  *, temperature, max_new_tokens, seed) -> list[str]`` samples ``n`` completions per chat
  prompt (row ``i*n + j``) from the current policy (``tandemrl.rollout.PolicySampler``).
- ``pop_metrics() -> dict[str, float]``: called after every step; what it returns is logged
  with the step's metrics (``dual/generate_s``, ``dual/samples``, ...).

``reward=`` (config key) picks where the step's rewards come from: ``task`` (the task's own,
the default) or any name in ``REWARD_SOURCES`` (``duality``). A source is a function
``(config, task) -> list[RewardSpec]``; ``register_reward_source`` adds one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from tandemrl.errors import ConfigError
from tandemrl.tasks.base import RewardSpec, Task

__all__ = [
    "REWARD_SOURCES",
    "Generate",
    "bind_policy_rewards",
    "bind_reward_device",
    "check_reward_config",
    "pop_reward_metrics",
    "register_reward_source",
    "reward_specs",
]

RewardSource = Callable[[Any, Task], list[RewardSpec]]
REWARD_SOURCES: dict[str, RewardSource] = {"task": lambda config, task: list(task.rewards)}


class Generate(Protocol):
    def __call__(
        self,
        prompts: list[list[dict[str, str]]],
        n: int,
        *,
        temperature: float,
        max_new_tokens: int,
        seed: int,
    ) -> list[str]: ...


def register_reward_source(name: str) -> Callable[[RewardSource], RewardSource]:
    """Decorator: ``reward=<name>`` builds the step's rewards with the decorated function."""

    def decorate(fn: RewardSource) -> RewardSource:
        REWARD_SOURCES[name] = fn
        return fn

    return decorate


def _load_sources() -> None:
    import tandemrl.tasks.duality_reward  # noqa: F401  (registers "duality")


def check_reward_config(config: Any) -> None:
    """One-line ``ConfigError`` when ``reward=`` names no source."""
    _load_sources()
    if config.reward not in REWARD_SOURCES:
        raise ConfigError(
            f"unknown reward source {config.reward!r}; known: {', '.join(sorted(REWARD_SOURCES))}"
        )


def reward_specs(config: Any, task: Task) -> list[RewardSpec]:
    """The rewards a run trains on: ``REWARD_SOURCES[config.reward](config, task)``, plus
    DAPO's overlong punishment as the named reward ``overlong`` when ``overlong.buffer > 0``
    (weight ``overlong.penalty_factor``; ``tasks.rewards.overlong_reward``)."""
    from tandemrl.tasks.rewards import overlong_reward

    check_reward_config(config)
    specs = REWARD_SOURCES[config.reward](config, task)
    shaping = config.overlong
    if shaping.buffer > 0:
        fn = overlong_reward(config.rollout.max_new_tokens, shaping.buffer)
        specs = [*specs, RewardSpec("overlong", fn, shaping.penalty_factor)]
    return specs


def bind_policy_rewards(specs: list[RewardSpec], generate: Generate) -> None:
    """Hand ``generate`` to every reward that has ``bind_policy``."""
    for spec in specs:
        bind = getattr(spec.fn, "bind_policy", None)
        if callable(bind):
            bind(generate)


def bind_reward_device(specs: list[RewardSpec], device: Any) -> None:
    """Hand the policy's device to every reward that has ``bind_device`` (reward models)."""
    for spec in specs:
        bind = getattr(spec.fn, "bind_device", None)
        if callable(bind):
            bind(device)


def pop_reward_metrics(specs: list[RewardSpec]) -> dict[str, float]:
    """Metrics the rewards collected since the last call (rewards with ``pop_metrics``)."""
    out: dict[str, float] = {}
    for spec in specs:
        pop = getattr(spec.fn, "pop_metrics", None)
        if callable(pop):
            out.update(pop())
    return out
