"""A task the tiny random model can learn in a few steps: write lowercase letters.

The untrained tiny model samples nearly uniformly over 259 byte tokens, so about 10% of its
characters are lowercase letters: rewards vary within every group and GRPO has signal."""

from __future__ import annotations

from tandemrl.tasks import Example, RewardSpec, Task, register_task


def share_lowercase(prompts, completions, **columns) -> list[float | None]:
    return [sum("a" <= ch <= "z" for ch in c) / max(1, len(c)) for c in completions]


class LetterTask(Task):
    name = "toy_letters"
    description = "reward = share of lowercase ASCII letters in the completion"

    def __init__(self, size: int = 16):
        self.rewards = [RewardSpec("lowercase", share_lowercase)]
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
        share = share_lowercase([], [completion])[0]
        return {"correct": float(share >= 0.5), "lowercase": share}


@register_task("toy_letters", replace=True)
def toy_letters(size: int = 16) -> Task:
    return LetterTask(size)


def share_uppercase(prompts, completions, **columns) -> list[float | None]:
    return [sum("A" <= ch <= "Z" for ch in c) / max(1, len(c)) for c in completions]


class TwoRewardTask(LetterTask):
    """Two named rewards that pull apart (lowercase vs uppercase share): the multi-reward
    methods (GDPO, GD²PO) see conflicting per-reward advantages on the tiny model."""

    name = "toy_case_rewards"
    description = "rewards: share of lowercase and share of uppercase ASCII letters"

    def __init__(self, size: int = 16):
        super().__init__(size)
        self.rewards = [
            RewardSpec("lowercase", share_lowercase, 1.0),
            RewardSpec("uppercase", share_uppercase, 0.5),
        ]


@register_task("toy_case_rewards", replace=True)
def toy_case_rewards(size: int = 16) -> Task:
    return TwoRewardTask(size)
