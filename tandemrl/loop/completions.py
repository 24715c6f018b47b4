"""A table of a step's sampled completions (`log.completions_every`), as TRL's
`log_completions` and verl's `log_val_generations` give: prompt, completion, each named
reward, the combined reward and the advantage, for the first rows of the step's batch."""

from __future__ import annotations

import math
from typing import Any

from tandemrl.methods.base import StepState


def _prompt_text(messages: list[dict[str, str]]) -> str:
    users = [m["content"] for m in messages if m.get("role") == "user"]
    return users[-1] if users else messages[-1]["content"]


def completion_rows(state: StepState, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` rows of `state.batch`: prompt, completion, `reward/<name>` per named
    reward, `reward` (combined) and `advantage` (a row's mean over its tokens when the method
    gives token-level advantages; NaN when it has none on this batch)."""
    batch = state.batch
    rows = []
    for i in range(min(limit, len(batch))):
        example = state.examples[batch.example_index[i]]
        row: dict[str, Any] = {
            "prompt": _prompt_text(example.messages),
            "completion": batch.completions[i],
        }
        for k, name in enumerate(batch.reward_names):
            row[f"reward/{name}"] = float(batch.reward_matrix[i, k])
        row["reward"] = float(batch.rewards[i]) if batch.rewards is not None else math.nan
        adv = batch.advantages
        if adv is None:
            row["advantage"] = math.nan
        elif adv.dim() == 1:
            row["advantage"] = float(adv[i])
        else:
            mask = batch.response_mask[i].bool()
            row["advantage"] = float(adv[i][mask].mean()) if mask.any() else math.nan
        rows.append(
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        )
    return rows
