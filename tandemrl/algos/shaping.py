"""Sequence-level reward shaping: DiPO reallocation and the dynamic-sampling filter."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import torch
from torch import Tensor

from tandemrl.algos._groups import group_index, group_stats


@dataclass(frozen=True)
class ThresholdResult:
    """A learned perplexity threshold. ``reason`` says why it is (in)valid."""

    threshold: float
    valid: bool
    error: float
    reason: str


def learn_perplexity_threshold(ppl: Tensor, correct: Tensor) -> ThresholdResult:
    """DiPO's global perplexity threshold (arXiv 2604.13902; reconstruction, METHODS §3).

    tau* = argmin_tau (1/N) sum_i |r_i - 1[p_i < tau]| over the midpoints between consecutive
    distinct perplexities ("low perplexity <-> correct"); ties go to the smallest tau.
    Valid iff P(R=1 | P < tau) > P(R=0 | P < tau) and P(R=0 | P > tau) > P(R=1 | P > tau),
    i.e. the mean correctness is > 1/2 below tau and < 1/2 above it. ``correct`` may be bool or
    a score in [0, 1]; pairs with NaN perplexity or NaN correctness are ignored.
    """
    p = ppl.detach().double().flatten()
    r = correct.detach().double().flatten()
    ok = ~(torch.isnan(p) | torch.isnan(r))
    p, r = p[ok], r[ok]
    if torch.unique(p).numel() < 2:
        return ThresholdResult(float("nan"), False, float("nan"), "fewer than 2 distinct ppl")
    order = torch.argsort(p, stable=True)
    p, r = p[order], r[order]
    n = p.numel()
    # Splitting after position j puts p[:j+1] below tau: those cost |r - 1|, the rest |r - 0|.
    below_cost = torch.cumsum(1.0 - r, 0)
    above_cost = r.sum() - torch.cumsum(r, 0)
    split_ok = p[1:] > p[:-1]  # only between distinct values
    errors = ((below_cost + above_cost)[:-1] / n).masked_fill(~split_ok, float("inf"))
    j = int(torch.argmin(errors))  # first minimum = smallest tau
    tau = float((p[j] + p[j + 1]) / 2)
    below_acc = float(r[: j + 1].mean())
    above_acc = float(r[j + 1 :].mean())
    if not below_acc > 0.5:
        reason = f"low-ppl side not mostly correct (acc {below_acc:.3f})"
    elif not above_acc < 0.5:
        reason = f"high-ppl side not mostly wrong (acc {above_acc:.3f})"
    else:
        reason = "ok"
    return ThresholdResult(tau, reason == "ok", float(errors[j]), reason)


class PerplexityQueue:
    """The (perplexity, correctness) pairs of the last ``num_batches`` batches (DiPO: 2)."""

    def __init__(self, num_batches: int = 2) -> None:
        self._batches: deque[tuple[Tensor, Tensor]] = deque(maxlen=num_batches)

    def push(self, ppl: Tensor, correct: Tensor) -> None:
        self._batches.append((ppl.detach().float().cpu(), correct.detach().float().cpu()))

    def threshold(self) -> ThresholdResult:
        if not self._batches:
            return ThresholdResult(float("nan"), False, float("nan"), "empty queue")
        ppl = torch.cat([b[0] for b in self._batches])
        correct = torch.cat([b[1] for b in self._batches])
        return learn_perplexity_threshold(ppl, correct)

    def state_dict(self) -> dict:
        return {"maxlen": self._batches.maxlen, "batches": list(self._batches)}

    def load_state_dict(self, state: dict) -> None:
        self._batches = deque(state["batches"], maxlen=state["maxlen"])


def dipo_reallocate(
    rewards: Tensor,
    ppl: Tensor,
    group_ids: Tensor,
    threshold: float,
    valid: bool,
    *,
    space: str = "mean",
    success: float = 0.5,
    correct_value: float = 1.0,
    wrong_value: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """DiPO bidirectional reward reallocation (arXiv 2604.13902; reconstruction, METHODS §3).

    Only zero-advantage groups (all valid rewards equal) are touched:
      all wrong (reward < ``success``) and in the low-perplexity space: R_r = the group's
        rewards with its highest-perplexity response set to ``correct_value`` (explore);
      all right (reward >= ``success``) and in the high-perplexity space: R_r = the group's
        rewards with its highest-perplexity response set to ``wrong_value`` (exploit);
      every other group: R_r = 0 (no signal), as is every group when ``valid`` is False.
    Abstained (NaN) rewards stay NaN in R_r so estimators keep ignoring them.
    "Lies in the space" is our choice (the source does not define it): ``space="mean"`` (default)
    compares the group's mean perplexity with tau; ``"all"`` requires every member on that side.
    Use R_r with any group estimator for the alpha * J(theta, R_r) term; keep these groups for
    it even when dynamic sampling drops them from the main term.
    """
    r = rewards.float()
    out = torch.where(torch.isnan(r), r, torch.zeros_like(r))
    metrics = {"dipo/threshold": float(threshold), "dipo/valid": float(valid)}
    metrics.update({"dipo/explore_groups": 0.0, "dipo/exploit_groups": 0.0})
    if not valid:
        return out, metrics
    if space not in ("mean", "all"):
        raise ValueError(f"space must be 'mean' or 'all', got {space!r}")
    st = group_stats(r, group_ids)
    answered = st.valid & ~torch.isnan(ppl)
    inverse, num_groups = group_index(group_ids)
    for g in range(num_groups):
        members = torch.nonzero((inverse == g) & answered).squeeze(-1)
        if members.numel() == 0 or not bool(st.constant[members[0]]):
            continue
        if int(st.count[members[0]]) != members.numel():
            continue  # an answered reward lacks a perplexity: do not guess the group's side
        level = float(r[members[0]])
        p = ppl[members].float()
        low = bool(p.mean() < threshold) if space == "mean" else bool((p < threshold).all())
        high = bool(p.mean() > threshold) if space == "mean" else bool((p > threshold).all())
        top = members[torch.argmax(p)]
        if level < success and low:
            out[members] = r[members]
            out[top] = correct_value
            metrics["dipo/explore_groups"] += 1
        elif level >= success and high:
            out[members] = r[members]
            out[top] = wrong_value
            metrics["dipo/exploit_groups"] += 1
    return out, metrics


def groups_with_signal(rewards: Tensor, group_ids: Tensor) -> Tensor:
    """DAPO dynamic sampling filter (arXiv 2503.14476): True for rollouts of groups whose valid
    rewards are not all equal, i.e. groups that give a non-zero group-relative advantage.

    rewards [B] or [B, K] (a group has signal if any reward varies); NaN = abstain.
    """
    st = group_stats(rewards.float(), group_ids)
    constant = st.constant if rewards.dim() == 1 else st.constant.all(dim=-1)
    return ~constant
