"""How varied a step's responses are within each prompt's group (per-policy and per-mode
metrics of the dual-policy method and Policy Split)."""

from __future__ import annotations

from tandemrl.algos import distinct_answers, group_distinct_n
from tandemrl.rollout import RolloutBatch
from tandemrl.tasks.extraction import answer_key


def group_diversity(batch: RolloutBatch, prefix: str = "") -> dict[str, float]:
    """`diversity/distinct_answers` (distinct extracted answers per group) and
    `diversity/distinct_1`, `_2` (distinct-n of the response tokens within a group;
    `algos.diversity.group_distinct_n`), under `prefix`."""
    seqs = batch.response_token_lists()
    answers = [answer_key(c) for c in batch.completions]
    return {
        f"{prefix}diversity/distinct_answers": distinct_answers(answers, batch.group_ids),
        f"{prefix}diversity/distinct_1": group_distinct_n(seqs, batch.group_ids, 1),
        f"{prefix}diversity/distinct_2": group_distinct_n(seqs, batch.group_ids, 2),
    }
