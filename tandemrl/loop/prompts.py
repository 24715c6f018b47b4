"""The training prompts a run walks through, and the checks on its data before any work."""

from __future__ import annotations

import random

from tandemrl.errors import ConfigError
from tandemrl.runtime import distributed as dist
from tandemrl.runtime.config import TrainConfig
from tandemrl.tasks import Example


class PromptSampler:
    """Walks the training examples in a seeded shuffled order, reshuffling each epoch.

    `position` (prompts handed out so far) is the whole state: a checkpoint stores it."""

    def __init__(self, examples: list[Example], seed: int):
        if not examples:
            raise ValueError("the task's training split is empty")
        self.examples = examples
        self.seed = seed
        self.position = 0

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(self.seed * 7919 + epoch).shuffle(order)
        return order

    def next(self, n: int) -> list[Example]:
        out = []
        for _ in range(n):
            epoch, idx = divmod(self.position, len(self.examples))
            out.append(self.examples[self._order(epoch)[idx]])
            self.position += 1
        return out


def check_data(cfg: TrainConfig, train_examples: list, eval_examples: list) -> list[str]:
    """Data problems found before the model loads: a one-line ConfigError for what stops the
    run, and the warnings to print for what does not."""
    if not train_examples:
        raise ConfigError(
            f"task {cfg.task!r} has an empty training split; check task_options "
            "(e.g. train_size, path) so that it yields prompts"
        )
    w = dist.world_size()
    if cfg.rollout.prompts_per_step % w:
        raise ConfigError(
            f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} does not split over {w} "
            f"processes; use a multiple of {w} (each rank samples whole groups)"
        )
    if not eval_examples and (cfg.eval.before or cfg.eval.after or cfg.eval.every):
        return [f"warning: task {cfg.task!r} has an empty eval split: no held-out evaluation"]
    return []
