"""Result types shared by the algorithm core."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class AdvantageResult:
    """Output of every registered advantage estimator.

    advantages: float [B], 0 where ``keep`` is False.
    keep: bool [B]; False = the rollout is dropped (abstained on every reward, or filtered, e.g.
        by GD²PO). Callers zero the loss mask of dropped rows.
    metrics: plain floats, slash-grouped names (``advantage/mean``, ``gd2po/conflict_rate``).
    """

    advantages: Tensor
    keep: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class LossResult:
    """A differentiable scalar ``loss`` (to minimise) and detached float ``metrics``."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
