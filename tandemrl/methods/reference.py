"""The reference policy π_ref of a KL term or of DPO/IPO, one way for every method."""

from __future__ import annotations

import copy

from torch import nn

from tandemrl.models.adapters import has_adapters, reference_mode
from tandemrl.rollout import RolloutBatch, TokenScores, score_batch


class ReferencePolicy:
    """π_ref = the starting policy. With LoRA it is the policy itself with its adapters off,
    so it costs no second copy of the weights; with full fine-tuning there is no adapter-free
    base to fall back on, so a frozen copy is taken when this object is built (before any
    update)."""

    def __init__(self, policy: nn.Module) -> None:
        self.policy = policy
        self.copy = None
        if not has_adapters(policy):
            self.copy = copy.deepcopy(policy).eval().requires_grad_(False)

    def scores(self, batch: RolloutBatch, temperature: float, micro_batch_size: int) -> TokenScores:
        """π_ref's per-token log-probs of `batch` (no gradient)."""
        if self.copy is not None:
            return score_batch(self.copy, batch, temperature, micro_batch_size)
        with reference_mode(self.policy):
            return score_batch(self.policy, batch, temperature, micro_batch_size)
