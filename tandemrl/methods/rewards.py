"""Rewards into the batch, and the reward metrics every method logs."""

from __future__ import annotations

import math

import torch

from tandemrl.rollout import RolloutBatch
from tandemrl.tasks import Example, Task
from tandemrl.tasks.rewards import run_reward


def score_rewards(task: Task, examples: list[Example], batch: RolloutBatch) -> None:
    """Run the task's named reward functions; fill `reward_matrix` [B, K] and `rewards` [B].

    Each function runs through `run_reward`: a row on which it raises abstains and is counted
    in `batch.reward_errors[name]` (logged as `reward/<name>/errors`), so a buggy reward costs
    rows, not the run; a wrong-length or non-numeric result raises `RewardFunctionError`.
    None (abstain) becomes NaN. The combined reward is the weighted sum over the rewards that
    did not abstain; a response on which every reward abstained gets NaN.
    """
    rows = [examples[i] for i in batch.example_index]
    prompts = [ex.messages for ex in rows]
    row_ids = [ex.id for ex in rows]
    column_names = sorted({k for ex in rows for k in ex.columns})
    columns = {k: [ex.columns.get(k) for ex in rows] for k in column_names}
    # As TRL passes them: each response's token ids, without padding (length-based rewards).
    pairs = zip(batch.response_ids, batch.response_mask.bool(), strict=True)
    columns["completion_ids"] = [ids[m].tolist() for ids, m in pairs]
    values = []
    errors: dict[str, int] = {}
    for spec in task.rewards:
        outcome = run_reward(spec, prompts, batch.completions, columns, row_ids)
        values.append([math.nan if v is None else v for v in outcome.values])
        errors[spec.name] = outcome.errors
    matrix = torch.tensor(values, dtype=torch.float32).T.reshape(len(batch), len(task.rewards))
    weights = torch.tensor([spec.weight for spec in task.rewards], dtype=torch.float32)
    present = ~torch.isnan(matrix)
    combined = (torch.nan_to_num(matrix) * weights).sum(-1)
    combined[~present.any(-1)] = math.nan
    batch.reward_matrix = matrix
    batch.rewards = combined
    batch.reward_names = [spec.name for spec in task.rewards]
    batch.reward_errors = errors


def finite_mean(values: torch.Tensor) -> float:
    """Mean over the non-NaN entries (NaN when there are none)."""
    kept = values[~torch.isnan(values)]
    return kept.mean().item() if kept.numel() else math.nan


def reward_metrics(batch: RolloutBatch, prefix: str = "") -> dict[str, float]:
    """`reward/mean`, `reward/std`, per named reward `reward/<name>/mean` and `.../errors`,
    response length and the truncated share; `prefix` names a policy or mode (`explore/`)."""
    out: dict[str, float] = {}
    r = batch.rewards[~torch.isnan(batch.rewards)]
    out[f"{prefix}reward/mean"] = r.mean().item() if r.numel() else math.nan
    out[f"{prefix}reward/std"] = r.std(unbiased=False).item() if r.numel() else math.nan
    for k, name in enumerate(batch.reward_names):
        out[f"{prefix}reward/{name}/mean"] = finite_mean(batch.reward_matrix[:, k])
        out[f"{prefix}reward/{name}/errors"] = float(batch.reward_errors.get(name, 0))
    out[f"{prefix}response/length_mean"] = batch.response_lengths.float().mean().item()
    out[f"{prefix}response/truncated_frac"] = batch.truncated.float().mean().item()
    return out
