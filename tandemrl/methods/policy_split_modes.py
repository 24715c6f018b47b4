"""Policy Split's two prompt modes, the four prompt/response pairings, the entropy guard and
the per-mode metrics (used by `tandemrl.methods.policy_split`).

Modes are selected by the prompt alone; the weights are shared:
  normal        the task's own messages, unchanged (SmolLM2's template then adds its default
                system line);
  high_entropy  the high-entropy instruction as the system message (prepended, with a blank
                line, to a system message the task already has). For chat templates without a
                system role (they raise on one, e.g. Gemma's, or silently drop it) the
                instruction is prefixed to the first user message instead: `system_role=auto`
                probes the template once, `system` / `prefix` force either.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tandemrl.algos import kl_penalty, masked_mean
from tandemrl.methods.diversity import group_diversity
from tandemrl.methods.rewards import reward_metrics
from tandemrl.rollout import RolloutBatch, TokenScores

NORMAL, HIGH_ENTROPY = "normal", "high_entropy"
MODES = (NORMAL, HIGH_ENTROPY)

# Short on purpose: every training row is scored under this prompt too, so its length is
# paid in every update (56 tokens with SmolLM2's template vs 49 for the normal prompt).
DEFAULT_HIGH_ENTROPY_PROMPT = (
    "Explore: solve this in an unusual way, not the first approach you would try. "
    "Keep the final answer exact."
)

Messages = list[dict[str, str]]

_PROBE = "__tandemrl_system_probe__"


def template_has_system_role(tokenizer) -> bool:
    """True if the tokenizer's chat template renders a system message's text."""
    probe = [{"role": "system", "content": _PROBE}, {"role": "user", "content": "hi"}]
    try:
        text = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - templates signal "no system role" by raising anything
        return False
    return _PROBE in text


def high_entropy_messages(messages: Messages, instruction: str, use_system: bool) -> Messages:
    """`messages` in high-entropy mode (see the module docstring for the two placements)."""
    if use_system:
        if messages and messages[0]["role"] == "system":
            merged = f"{instruction}\n\n{messages[0]['content']}"
            return [{**messages[0], "content": merged}, *messages[1:]]
        return [{"role": "system", "content": instruction}, *messages]
    out = [dict(m) for m in messages]
    for m in out:
        if m["role"] == "user":
            m["content"] = f"{instruction}\n\n{m['content']}"
            return out
    raise ValueError("high-entropy prefix fallback needs a user message in the prompt")


def mode_transform(
    mode: str, instruction: str, system_role: str, tokenizer
) -> Callable[[Messages], Messages]:
    """The prompt transform of `mode`; `system_role` is auto, system or prefix."""
    if mode == NORMAL:
        return lambda messages: messages
    if mode != HIGH_ENTROPY:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    use_system = system_role == "system" or (
        system_role == "auto" and template_has_system_role(tokenizer)
    )
    return lambda messages: high_entropy_messages(messages, instruction, use_system)


@dataclass
class ModeRows:
    """Per row of the rollout: whether the response was sampled in high-entropy mode."""

    high_entropy: torch.Tensor  # [B] bool


@dataclass
class PairingRows:
    """Per row of the pairings batch (`pairings`)."""

    prompt_high: torch.Tensor  # [2B] bool: scored under the high-entropy prompt
    row: torch.Tensor  # [2B] the response's row in the rollout
    # [2B, T] the same response's log-probs under the normal prompt, filled by the update's
    # normal pass for the high-entropy pass (the (1 - alpha) surprisal term)
    normal_logp: torch.Tensor | None = None


def pairings(full: RolloutBatch) -> RolloutBatch:
    """Every response of `full` under each mode's prompt: 2 x len(full) rows.

    `full.per_row.high_entropy` [B] marks the responses sampled in high-entropy mode; a
    group's prompt in a mode is the prompt of its responses sampled in that mode. Rows are
    [normal-prompt part | high-entropy-prompt part]; within a part, group by group: its
    normal responses, then its high-entropy ones. So the 2n rows of a group are contiguous
    (the token z-score of the high-entropy advantage is per group) and row i of each part is
    the same response.
    """
    he = full.per_row.high_entropy
    order = sorted(range(len(full)), key=lambda i: (int(full.group_ids[i]), bool(he[i]), i))
    both = full.select(order + order)
    prompt_high = torch.arange(len(both)) >= len(order)
    for high in (False, True):
        source = {int(g): i for i, g in enumerate(full.group_ids.tolist()) if bool(he[i]) == high}
        rows = (prompt_high == high).nonzero().squeeze(-1)
        src = torch.tensor([source[int(both.group_ids[r])] for r in rows])
        both.prompt_ids[rows] = full.prompt_ids[src]
        both.prompt_mask[rows] = full.prompt_mask[src]
    both.per_row = PairingRows(prompt_high=prompt_high, row=torch.tensor(order + order))
    return both


def trim_left_padding(batch: RolloutBatch) -> RolloutBatch:
    """Drop prompt columns that are padding in every row (prompts are left-padded to the
    longest prompt of either mode; a microbatch of normal-mode prompts needs less)."""
    used = batch.prompt_mask.bool().any(0).nonzero()
    start = int(used[0]) if used.numel() else 0
    if start:
        batch.prompt_ids = batch.prompt_ids[:, start:]
        batch.prompt_mask = batch.prompt_mask[:, start:]
    return batch


@dataclass
class EntropyGuard:
    """Backs off eta when the high-entropy mode's entropy runs away (the paper's failure:
    entropy inflation, then accuracy collapse).

    Triggered in a step when H_he > ratio * H_he(first step) or H_he > vs_normal * H_normal
    (either check off when 0); then eta <- max(factor * eta, min(eta, floor)) for the next
    step, warning once per run.
    """

    ratio: float = 1.5
    vs_normal: float = 3.0
    factor: float = 0.5
    floor: float = 0.003
    enabled: bool = True
    initial: float | None = None
    warned: bool = False
    triggers: int = 0

    def update(self, eta: float, h_normal: float, h_high: float) -> tuple[float, bool]:
        if not (math.isfinite(h_high) and math.isfinite(h_normal)):
            return eta, False
        if self.initial is None:
            self.initial = h_high
        reasons = []
        if self.ratio and h_high > self.ratio * self.initial:
            reasons.append(f"{self.ratio} x its first-step {self.initial:.3f}")
        if self.vs_normal and h_high > self.vs_normal * h_normal:
            reasons.append(f"{self.vs_normal} x the normal mode's {h_normal:.3f}")
        if not (self.enabled and reasons):
            return eta, False
        new = max(self.factor * eta, min(eta, self.floor))
        self.triggers += 1
        if not self.warned:
            self.warned = True
            print(
                f"[tandemrl] warning: policy_split high-entropy mode entropy {h_high:.3f} "
                f"exceeds {' and '.join(reasons)}; backing off eta {eta:g} -> {new:g} (again "
                "each step it stays high, floor policy_split.eta_floor; see policy_split/eta)",
                file=sys.stderr,
                flush=True,
            )
        return new, True

    def state_dict(self) -> dict:
        return {"initial": self.initial, "warned": self.warned, "triggers": self.triggers}

    def load_state_dict(self, state: dict) -> None:
        self.initial, self.warned = state.get("initial"), state.get("warned", False)
        self.triggers = state.get("triggers", 0)


def mode_metrics(
    full: RolloutBatch,
    scores: dict[str, TokenScores],
    ref_logp: dict[str, torch.Tensor] | None,
    kl_estimator: str,
) -> dict[str, float]:
    """`<mode>/...` metrics over each mode's own responses scored under its own prompt
    (scores/ref_logp: [B_full, T] per prompt mode), plus the split between the modes."""
    out: dict[str, float] = {}
    he = full.per_row.high_entropy
    for mode, own in ((NORMAL, ~he), (HIGH_ENTROPY, he)):
        rows = own.nonzero().squeeze(-1)
        batch = full.select(rows)
        prefix = f"{mode}/"
        out.update(reward_metrics(batch, prefix))
        mask = batch.response_mask
        out[f"{prefix}entropy/mean"] = masked_mean(scores[mode].entropy[rows], mask).item()
        if ref_logp is not None:
            kl = kl_penalty(scores[mode].logp[rows], ref_logp[mode][rows], kl_estimator)
            out[f"{prefix}kl"] = masked_mean(kl, mask).item()
        out.update(group_diversity(batch, prefix))
    # k1 estimate of KL(pi(.|s,q) || pi(.|q)) on the high-entropy mode's own samples: how far
    # the system prompt moves the policy.
    rows = he.nonzero().squeeze(-1)
    gap = scores[HIGH_ENTROPY].logp[rows] - scores[NORMAL].logp[rows]
    out["policy_split/mode_kl"] = masked_mean(gap, full.response_mask[rows]).item()
    return out
