"""tandemrl's algorithm core: pure tensor functions, no models, no I/O.

Flat batch layout everywhere: sequence-level tensors [B], token-level [B, T] with a ``mask``
(1 = response token), groups given by ``group_ids`` [B], several rewards as [B, K] with
``weights`` [K], NaN reward = abstain. Pieces a config selects by name live in registries:

  ADVANTAGES      "grpo", "rloo", "gdpo", "gd2po"
  POLICY_LOSSES   "clipped", "bapo"
  KL_ESTIMATORS   "k1", "k2", "k3"
  AGGREGATIONS    "token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"

Each registry's ``get`` also takes ``"package.module:function"`` for a user's own function.
"""

from tandemrl.algos.advantages import (
    ADVANTAGES,
    gae,
    gd2po_advantages,
    gdpo_advantages,
    grpo_advantages,
    per_reward_advantages,
    rloo_advantages,
    to_reward_tensor,
    whiten,
)
from tandemrl.algos.aggregation import (
    AGGREGATIONS,
    LossNormalizer,
    aggregate,
    masked_mean,
    masked_whiten,
)
from tandemrl.algos.diversity import (
    distinct_answers,
    distinct_n,
    group_distinct_n,
    ngram_novelty,
    pass_at_k,
)
from tandemrl.algos.dual import (
    adaptive_lr_scale,
    cross_policy_reward,
    logprob_gap_metrics,
    reward_progress,
    share_candidates,
    share_gradients,
    truncated_importance_weights,
)
from tandemrl.algos.entropy import (
    entropy_bonus,
    entropy_from_logits,
    logprobs_from_logits,
    sequence_perplexity,
)
from tandemrl.algos.kl import KL_ESTIMATORS, kl_in_reward, kl_loss, kl_penalty
from tandemrl.algos.losses import (
    POLICY_LOSSES,
    ClipBounds,
    bapo_clip_bounds,
    bapo_policy_loss,
    clipped_policy_loss,
    positive_share,
)
from tandemrl.algos.preference import (
    PreferencePairs,
    best_worst_pairs,
    dpo_loss,
    ipo_loss,
    rpo_sft_term,
    sequence_logps,
)
from tandemrl.algos.registry import Registry, UnknownNameError
from tandemrl.algos.shaping import (
    PerplexityQueue,
    ThresholdResult,
    dipo_reallocate,
    groups_with_signal,
    learn_perplexity_threshold,
)
from tandemrl.algos.token_shaping import (
    d3s_sample_select,
    d3s_schedule,
    d3s_token_select,
    policy_split_token_advantages,
)
from tandemrl.algos.types import AdvantageResult, LossResult
from tandemrl.algos.value import clipped_value_loss, explained_variance

__all__ = [
    "ADVANTAGES",
    "AGGREGATIONS",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "AdvantageResult",
    "ClipBounds",
    "LossNormalizer",
    "LossResult",
    "PerplexityQueue",
    "PreferencePairs",
    "Registry",
    "ThresholdResult",
    "UnknownNameError",
    "adaptive_lr_scale",
    "aggregate",
    "bapo_clip_bounds",
    "bapo_policy_loss",
    "best_worst_pairs",
    "clipped_policy_loss",
    "clipped_value_loss",
    "cross_policy_reward",
    "d3s_sample_select",
    "d3s_schedule",
    "d3s_token_select",
    "dipo_reallocate",
    "distinct_answers",
    "distinct_n",
    "dpo_loss",
    "entropy_bonus",
    "entropy_from_logits",
    "explained_variance",
    "gae",
    "gd2po_advantages",
    "gdpo_advantages",
    "group_distinct_n",
    "groups_with_signal",
    "grpo_advantages",
    "ipo_loss",
    "kl_in_reward",
    "kl_loss",
    "kl_penalty",
    "learn_perplexity_threshold",
    "logprobs_from_logits",
    "masked_mean",
    "masked_whiten",
    "ngram_novelty",
    "pass_at_k",
    "per_reward_advantages",
    "policy_split_token_advantages",
    "positive_share",
    "reward_progress",
    "rloo_advantages",
    "rpo_sft_term",
    "sequence_logps",
    "sequence_perplexity",
    "share_candidates",
    "share_gradients",
    "to_reward_tensor",
    "truncated_importance_weights",
    "logprob_gap_metrics",
    "whiten",
]
