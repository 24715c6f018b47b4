import math

import pytest
import torch

from tandemrl.algos import (
    POLICY_LOSSES,
    aggregate,
    bapo_clip_bounds,
    bapo_policy_loss,
    clipped_policy_loss,
    positive_share,
)


def _one_token_batch(ratios, advs):
    logp = torch.tensor([[math.log(r)] for r in ratios], requires_grad=True)
    old = torch.zeros(len(ratios), 1)
    return logp, old, torch.tensor(advs), torch.ones(len(ratios), 1)


def test_clipped_surrogate_hand_computed_dapo_bounds():
    # clip range [1 - .2, 1 + .28] = [.8, 1.28]; per token l = -min(rho A, clip(rho) A):
    #   rho 1.5, A +1: -min(1.5, 1.28) = -1.28   (clipped high, no gradient)
    #   rho 1.5, A -1: -min(-1.5, -1.28) = 1.5   (unclipped: pessimistic side)
    #   rho 0.5, A -1: -min(-.5, -.8) = .8       (clipped low, no gradient)
    #   rho 0.5, A +1: -min(.5, .8) = -.5        (unclipped)
    # token-mean = (-1.28 + 1.5 + .8 - .5) / 4 = .13
    logp, old, adv, mask = _one_token_batch([1.5, 1.5, 0.5, 0.5], [1.0, -1.0, -1.0, 1.0])
    res = clipped_policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.28)
    assert res.loss.item() == pytest.approx(0.13, abs=1e-6)
    res.loss.backward()
    # d/dlogp of -A rho = -A rho, divided by 4 tokens, only on unclipped tokens
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0], [0.375], [0.0], [-0.125]]))
    assert res.metrics["clip/frac_high"] == pytest.approx(0.25)
    assert res.metrics["clip/frac_low"] == pytest.approx(0.25)
    assert res.metrics["clip/frac"] == pytest.approx(0.5)
    assert res.metrics["policy/ratio_mean"] == pytest.approx(1.0)
    # k3(old -> new) with log rho = x: (rho - 1) - x, averaged
    k3 = [(r - 1) - math.log(r) for r in (1.5, 1.5, 0.5, 0.5)]
    assert res.metrics["policy/approx_kl"] == pytest.approx(sum(k3) / 4, rel=1e-5)


def test_symmetric_default_clip():
    # default clip_high .2: rho 1.25, A +1 is clipped to 1.2
    logp, old, adv, mask = _one_token_batch([1.25], [1.0])
    assert clipped_policy_loss(logp, old, adv, mask).loss.item() == pytest.approx(-1.2)
    dapo = clipped_policy_loss(logp, old, adv, mask, clip_high=0.28)
    assert dapo.loss.item() == pytest.approx(-1.25)  # clip-higher lets it through


def test_on_policy_loss_is_minus_mean_advantage_with_policy_gradient():
    torch.manual_seed(0)
    logp = torch.randn(3, 4, requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float)
    res = clipped_policy_loss(logp, logp.detach(), adv, mask)
    expected = -aggregate(adv[:, None].expand(3, 4), mask, "token-mean")
    assert res.loss.item() == pytest.approx(expected.item())
    res.loss.backward()
    torch.testing.assert_close(logp.grad, -adv[:, None] * mask / mask.sum())
    assert res.metrics["clip/frac"] == 0.0


def test_token_level_advantages_and_shape_check():
    logp = torch.zeros(2, 3, requires_grad=True)
    adv = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # ratio 1: loss = -(1 + 2 + 3 + 0 - 1) / 5 = -1
    assert clipped_policy_loss(logp, logp.detach(), adv, mask).loss.item() == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        clipped_policy_loss(logp, logp.detach(), adv[:, :2], mask)


def test_dual_clip_caps_negative_advantage_loss():
    # rho 5, A -1: PPO loss max(5, 1.2) = 5; dual clip c = 3 caps it at -c A = 3, zero gradient
    logp, old, adv, mask = _one_token_batch([5.0, 5.0], [-1.0, 1.0])
    plain = clipped_policy_loss(logp, old, adv, mask)
    assert plain.loss.item() == pytest.approx((5.0 - 1.2) / 2)
    res = clipped_policy_loss(logp, old, adv, mask, dual_clip=3.0)
    assert res.loss.item() == pytest.approx((3.0 - 1.2) / 2)
    assert res.metrics["clip/dual_frac"] == pytest.approx(0.5)
    res.loss.backward()
    assert torch.equal(logp.grad, torch.zeros(2, 1))
    with pytest.raises(ValueError):
        clipped_policy_loss(logp, old, adv, mask, dual_clip=0.5)


def test_extreme_log_ratio_stays_finite():
    logp = torch.tensor([[200.0, -200.0]], requires_grad=True)
    res = clipped_policy_loss(logp, torch.zeros(1, 2), torch.tensor([-1.0]), torch.ones(1, 2))
    assert math.isfinite(res.loss.item())
    res.loss.backward()
    assert torch.isfinite(logp.grad).all()


# ---------------------------------------------------------------- BAPO

# tokens (ratio, A): (1.42,+1) (1.0,+1) (1.0,-1) (0.72,-1) (0.87,-1)
RATIOS = [1.42, 1.0, 1.0, 0.72, 0.87]
ADVS = [1.0, 1.0, -1.0, -1.0, -1.0]


def test_positive_share_counts_only_gradient_carrying_tokens():
    ratio = torch.tensor([RATIOS])
    adv = torch.tensor([ADVS])
    mask = torch.ones(1, 5)
    # bounds [.6, 1.2]: positive active {1.0}; negative active {1.0, .72, .87}
    assert positive_share(ratio, adv, mask, 0.6, 1.2) == pytest.approx(1 / 3.59)
    # bounds [.75, 1.45]: positive {1.42, 1.0}; negative {1.0, .87}
    assert positive_share(ratio, adv, mask, 0.75, 1.45) == pytest.approx(2.42 / 4.29)
    assert positive_share(ratio, adv, torch.zeros(1, 5), 0.6, 1.2) == 1.0


def test_bapo_bounds_hand_traced():
    # step k: c_low = .6 + .05k, c_high = 1.2 + .05k
    # k=0..2: share 1/3.59 ~ .279; k=3: c_low .75 drops .72 -> 1/2.87 ~ .348;
    # k=5: c_high 1.45 admits 1.42 -> 2.42/4.29 ~ .564 >= .5: stop at [.85, 1.45]
    logp, old, adv, mask = _one_token_batch(RATIOS, ADVS)
    b = bapo_clip_bounds(logp.T, old.T, adv[None, :], mask.T)  # one sequence of 5 tokens
    assert b.clip_low == pytest.approx(0.15)
    assert b.clip_high == pytest.approx(0.45)
    assert b.positive_share == pytest.approx(2.42 / 4.29)
    assert b.reached_target


def test_bapo_bounds_start_when_balanced_and_saturate_when_unreachable():
    logp, old, _, mask = _one_token_batch([1.0, 1.0], [0, 0])
    balanced = bapo_clip_bounds(logp.T, old.T, torch.tensor([[1.0, -1.0]]), mask.T)
    assert (balanced.clip_low, balanced.clip_high) == pytest.approx((0.4, 0.2))
    negative_only = bapo_clip_bounds(logp.T, old.T, torch.tensor([[-1.0, -1.0]]), mask.T)
    assert (negative_only.clip_low, negative_only.clip_high) == pytest.approx((0.1, 2.0))
    assert not negative_only.reached_target and negative_only.positive_share == 0.0


def test_bapo_loss_uses_adaptive_bounds_and_reports_them():
    logp, old, adv, mask = _one_token_batch(RATIOS, ADVS)
    args = (logp.T, old.T, adv[None, :], mask.T)
    res = POLICY_LOSSES.get("bapo")(*args)
    manual = clipped_policy_loss(*args, clip_low=0.15, clip_high=0.45)
    assert res.loss.item() == pytest.approx(manual.loss.item())
    assert res.metrics["bapo/clip_high"] == pytest.approx(0.45)
    assert res.metrics["bapo/reached_target"] == 1.0
    fixed = bapo_policy_loss(*args, bounds=bapo_clip_bounds(*args, target_positive=0.0))
    assert fixed.metrics["bapo/clip_high"] == pytest.approx(0.2)
