"""Tasks the tiny random model can learn in a few steps: write characters of a kind.

The untrained tiny model samples nearly uniformly over 259 byte tokens, so about 10% of its
characters are lowercase letters: rewards vary within every group and GRPO has signal.
  toy_letters       reward = share of lowercase letters
  toy_case_rewards  lowercase (weight 1) and uppercase (weight 0.5) shares: two rewards that
                    pull apart, so GDPO/GD²PO see conflicting per-reward advantages
  toy_two_rewards   lower (weight 1) and digit (weight `digit_weight`) shares
"""

from __future__ import annotations

import string

from tandemrl.tasks import Example, RewardSpec, Task, register_task


def share_of(chars: str):
    """A reward function: the share of a completion's characters that are in `chars`."""

    def reward(prompts, completions, **columns) -> list[float | None]:
        return [sum(ch in chars for ch in c) / max(1, len(c)) for c in completions]

    return reward


share_lowercase = share_of(string.ascii_lowercase)


class LetterTask(Task):
    name = "toy_letters"
    description = "reward = share of lowercase ASCII letters in the completion"

    def __init__(self, size: int = 16, rewards: dict[str, tuple[str, float]] | None = None):
        """`rewards`: name -> (characters it counts, weight); the first one decides `correct`."""
        rewards = rewards or {"lowercase": (string.ascii_lowercase, 1.0)}
        self.rewards = [RewardSpec(n, share_of(chars), w) for n, (chars, w) in rewards.items()]
        self._train = [
            Example(f"t{i}", [{"role": "user", "content": f"word {i}"}]) for i in range(size)
        ]
        self._eval = [
            Example(f"e{i}", [{"role": "user", "content": f"other {i}"}]) for i in range(4)
        ]

    def train_examples(self):
        return self._train

    def eval_examples(self):
        return self._eval

    def score(self, example, completion):
        first = self.rewards[0]
        share = first.fn([], [completion])[0]
        return {"correct": float(share >= 0.5), first.name: share}


@register_task("toy_letters", replace=True)
def toy_letters(size: int = 16) -> Task:
    return LetterTask(size)


@register_task("toy_case_rewards", replace=True)
def toy_case_rewards(size: int = 16) -> Task:
    cases = {"lowercase": (string.ascii_lowercase, 1.0), "uppercase": (string.ascii_uppercase, 0.5)}
    return LetterTask(size, cases)


@register_task("toy_two_rewards", replace=True)
def toy_two_rewards(digit_weight: float = 0.2) -> Task:
    rewards = {"lower": (string.ascii_lowercase, 1.0)}
    if digit_weight:
        rewards["digit"] = (string.digits, digit_weight)
    return LetterTask(8, rewards)


@register_task("toy_binary", replace=True)
def toy_binary(size: int = 16) -> Task:
    """Reward 1 when at least a fifth of the characters are lowercase letters, else 0: on the
    untrained tiny model about 3 groups in 10 get the same reward on every sample, the case
    DAPO's dynamic sampling is for."""
    task = LetterTask(size)
    share = task.rewards[0].fn

    def at_least_a_fifth(prompts, completions, **columns):
        return [float(v >= 0.2) for v in share(prompts, completions)]

    task.rewards = [RewardSpec("binary", at_least_a_fifth)]
    return task
