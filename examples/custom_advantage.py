"""An advantage-only method in one file: a new estimator, used by GRPO (or any group method).

    tandem train model=tiny task=arith2 grpo.advantage=examples.custom_advantage:median_baseline \
        grpo.advantage_options={} steps=2

A_i = r_i - median of r over the group (a baseline robust to one outlier reward), 0 for groups
of one and for abstained (NaN) rewards. Nothing else changes: rollout, loss, update, logging.
"""

from __future__ import annotations

import torch

from tandemrl.algos import AdvantageResult


def median_baseline(rewards: torch.Tensor, group_ids: torch.Tensor) -> AdvantageResult:
    """A_i = r_i - median_{j in g(i)} r_j over the group's answered rows."""
    advantages = torch.zeros_like(rewards, dtype=torch.float32)
    answered = ~torch.isnan(rewards)
    for group in group_ids.unique():
        rows = (group_ids == group) & answered
        if int(rows.sum()) >= 2:
            advantages[rows] = rewards[rows] - rewards[rows].median()
    return AdvantageResult(
        advantages, keep=answered, metrics={"advantage/abs_mean": float(advantages.abs().mean())}
    )
