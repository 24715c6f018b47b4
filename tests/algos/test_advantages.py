import math

import pytest
import torch

from tandemrl.algos import (
    gae,
    gd2po_advantages,
    gdpo_advantages,
    grpo_advantages,
    rloo_advantages,
    to_reward_tensor,
)

NAN = float("nan")


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(
        actual.double(), torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0
    )


# ---------------------------------------------------------------- GRPO


def test_grpo_group_std_hand_computed():
    # group 0: [1,0,0,0]: mean .25, deviations [.75,-.25,-.25,-.25], SS = .5625 + 3*.0625 = .75,
    #   Bessel var = .75/3 = .25, std .5 -> A = [1.5, -.5, -.5, -.5]
    # group 1: [2,4]: mean 3, var = (1+1)/1 = 2 -> A = -+1/sqrt(2)
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 4.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1])
    res = grpo_advantages(r, g, eps=0.0)
    s = 1 / math.sqrt(2)
    close(res.advantages, [1.5, -0.5, -0.5, -0.5, -s, s])
    assert res.keep.all()
    # default eps 1e-6 changes the result by < 1e-5
    close(grpo_advantages(r, g).advantages, [1.5, -0.5, -0.5, -0.5, -s, s])


def test_grpo_population_std_option():
    # [1,0,0,0]: population var = .75/4 = .1875 -> A_1 = .75 / sqrt(.1875) = sqrt(3)
    res = grpo_advantages(
        torch.tensor([1.0, 0, 0, 0]), torch.zeros(4, dtype=torch.long), eps=0.0, unbiased=False
    )
    close(res.advantages[0:1], [math.sqrt(3)])


def test_grpo_batch_std_and_none():
    # groups [0,2] and [4,6]: centred [-1,1,-1,1]
    # batch of rewards [0,2,4,6]: mean 3, SS = 9+1+1+9 = 20, Bessel std = sqrt(20/3)
    r = torch.tensor([0.0, 2.0, 4.0, 6.0])
    g = torch.tensor([0, 0, 1, 1])
    sd = math.sqrt(20 / 3)
    close(
        grpo_advantages(r, g, std_mode="batch", eps=0.0).advantages,
        [-1 / sd, 1 / sd, -1 / sd, 1 / sd],
    )
    # Dr.GRPO: no std at all
    close(grpo_advantages(r, g, std_mode="none").advantages, [-1.0, 1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="std_mode"):
        grpo_advantages(r, g, std_mode="bogus")


def test_grpo_zero_variance_group_is_exactly_zero():
    # 0.1 is not representable: a naive (r - mean) / (std + eps) leaks round-off / 1e-6
    r = torch.tensor([0.1, 0.1, 0.1, 1.0, 1.0, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7])
    g = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2])
    for mode in ("group", "batch", "none"):
        res = grpo_advantages(r, g, std_mode=mode)
        assert torch.equal(res.advantages, torch.zeros(12)), mode
    assert res.metrics["advantage/zero_var_group_frac"] == 1.0


def test_grpo_group_of_size_one_gets_zero():
    r = torch.tensor([5.0, 1.0, 0.0])
    g = torch.tensor([9, 4, 4])
    res = grpo_advantages(r, g, eps=0.0)
    s = 1 / math.sqrt(2)  # group 4: [1, 0] -> +-(0.5 / sqrt(.5))
    close(res.advantages, [0.0, s, -s])
    assert res.keep.all()  # kept, just no signal
    assert res.metrics["advantage/zero_var_group_frac"] == 0.5


def test_grpo_nan_abstains():
    # group [1, NaN, 0]: stats over [1, 0]: mean .5, Bessel std sqrt(.5) -> +-1/sqrt(2)
    r = to_reward_tensor([1.0, None, 0.0, None])
    g = torch.tensor([0, 0, 0, 1])
    res = grpo_advantages(r, g, eps=0.0)
    s = 1 / math.sqrt(2)
    close(res.advantages, [s, 0.0, -s, 0.0])
    assert res.keep.tolist() == [True, False, True, False]
    assert not torch.isnan(res.advantages).any()
    assert res.metrics["advantage/abstain_frac"] == pytest.approx(0.5)


def test_grpo_noncontiguous_groups_match_contiguous():
    r = torch.tensor([1.0, 5.0, 0.0, 3.0, 0.0])
    g = torch.tensor([7, 3, 7, 3, 7])
    res = grpo_advantages(r, g, eps=0.0)
    # group 7: [1,0,0] mean 1/3, SS = 4/9+1/9+1/9 = 2/3, var 1/3 -> A = (2/3)/sqrt(1/3)...
    sd7 = math.sqrt(1 / 3)
    close(
        res.advantages,
        [(2 / 3) / sd7, 1 / math.sqrt(2), (-1 / 3) / sd7, -1 / math.sqrt(2), (-1 / 3) / sd7],
    )


def test_grpo_rejects_multi_reward():
    with pytest.raises(ValueError, match="gdpo"):
        grpo_advantages(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))


def test_grpo_integer_rewards_accepted():
    res = grpo_advantages(torch.tensor([1, 0]), torch.tensor([0, 0]))
    assert res.advantages.is_floating_point()


# ---------------------------------------------------------------- RLOO


def test_rloo_hand_computed():
    # [1,0,0,0]: A_1 = 1 - 0 = 1; A_j = 0 - 1/3
    # [2,4]: A = 2-4, 4-2 ; group of one -> 0 ; [3, NaN, 1]: valid n=2 -> 3-1, 1-3
    r = to_reward_tensor([1, 0, 0, 0, 2, 4, 9, 3, None, 1])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3, 3, 3])
    res = rloo_advantages(r, g)
    close(res.advantages, [1, -1 / 3, -1 / 3, -1 / 3, -2, 2, 0, 2, 0, -2])
    assert res.keep.tolist() == [True] * 8 + [False, True]


# ---------------------------------------------------------------- GDPO / GD²PO

# One group of 4, two rewards, weights [1, .5].
# r1 = [1,0,1,0] and r2 = [1,1,0,0] both have mean .5, Bessel std sqrt(1/3):
#   A1 = c*[1,-1,1,-1], A2 = c*[1,1,-1,-1] with c = .5/sqrt(1/3) = sqrt(3)/2
#   S = A1 + .5 A2 = c*[1.5, -.5, .5, -1.5]
R1 = [1.0, 0.0, 1.0, 0.0]
R2 = [1.0, 1.0, 0.0, 0.0]
C = math.sqrt(3) / 2


def _two_rewards():
    return torch.tensor([R1, R2]).T, torch.zeros(4, dtype=torch.long)


def test_gdpo_hand_computed():
    r, g = _two_rewards()
    res = gdpo_advantages(r, g, weights=[1.0, 0.5], eps=0.0, batch_norm=False)
    close(res.advantages, [1.5 * C, -0.5 * C, 0.5 * C, -1.5 * C])
    # batch norm: mean 0, Bessel std of [1.5,-.5,.5,-1.5] = sqrt((2*2.25 + 2*.25)/3) = sqrt(5/3)
    res = gdpo_advantages(r, g, weights=[1.0, 0.5], eps=0.0)
    sd = math.sqrt(5 / 3)
    close(res.advantages, [1.5 / sd, -0.5 / sd, 0.5 / sd, -1.5 / sd])


def test_gdpo_single_reward_equals_grpo():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 4.0])
    g = torch.tensor([0, 0, 0, 0, 1, 1])
    one_col = gdpo_advantages(r.unsqueeze(-1), g, batch_norm=False).advantages
    flat = gdpo_advantages(r, g, batch_norm=False).advantages  # [B] accepted as K = 1
    close(one_col, grpo_advantages(r, g).advantages)
    close(flat, one_col)


def test_gdpo_per_reward_abstain():
    # reward 2 abstains for rollout 0: reward-2 stats over [1, 0, 0] only, A2[0] = 0.
    # rollout 3 abstains on both -> dropped.
    r = to_reward_tensor([[1, None], [0, 1], [1, 0], [None, None]])
    g = torch.zeros(4, dtype=torch.long)
    res = gdpo_advantages(r, g, eps=0.0, batch_norm=False)
    # r1 over [1,0,1]: mean 2/3, Bessel var 1/3 -> A1 = [(1/3), (-2/3), (1/3)] / sqrt(1/3)
    # r2 over [1,0]:   A2 = [+-1/sqrt 2] for rollouts 1, 2
    a1 = [x / math.sqrt(1 / 3) for x in (1 / 3, -2 / 3, 1 / 3)]
    s = 1 / math.sqrt(2)
    close(res.advantages, [a1[0], a1[1] + s, a1[2] - s, 0.0])
    assert res.keep.tolist() == [True, True, True, False]


def test_gdpo_weight_count_checked():
    r, g = _two_rewards()
    with pytest.raises(ValueError, match="weights"):
        gdpo_advantages(r, g, weights=[1.0])


def test_gd2po_hard_filter_hand_computed():
    # weighted per-reward signs: rollout 0 (+,+), 1 (-,+), 2 (+,-), 3 (-,-): 1 and 2 conflict.
    # kept = {0, 3}, query weight 2/4; whiten(.5*S over kept) = [x, -x] / (x*sqrt 2)
    r, g = _two_rewards()
    res = gd2po_advantages(r, g, weights=[1.0, 0.5], filter="hard", eps=0.0)
    s = 1 / math.sqrt(2)
    close(res.advantages, [s, 0.0, 0.0, -s])
    assert res.keep.tolist() == [True, False, False, True]
    assert res.metrics["gd2po/conflict_rate"] == 0.5
    assert res.metrics["gd2po/query_weight_mean"] == 0.5


def test_gd2po_snr_filter_threshold():
    # rollout 1: s = (-c + .5c) / (c + .5c) = -1/3; rollout 2: +1/3
    r, g = _two_rewards()
    strict = gd2po_advantages(r, g, weights=[1.0, 0.5], filter="snr", tau=0.5)
    assert strict.keep.tolist() == [True, False, False, True]
    loose = gd2po_advantages(r, g, weights=[1.0, 0.5], filter="snr", tau=0.2)
    assert loose.keep.all()  # |s| = 1/3 >= .2: conflicting but consistent enough
    close(loose.advantages, gdpo_advantages(r, g, weights=[1.0, 0.5]).advantages)
    assert loose.metrics["gd2po/conflict_rate"] == 0.5  # conflicts counted even when kept


def test_gd2po_query_reweighting_across_groups():
    # group A (id 0): the 4 rollouts above, kept {0,3}, S = c*[1.5, -1.5], w_q = .5
    # group B (id 1): r1 = r2 = [1,0]: A1 = A2 = +-1/sqrt 2, S = 1.5/sqrt 2 * [1,-1], w_q = 1
    r1 = R1 + [1.0, 0.0]
    r2 = R2 + [1.0, 0.0]
    r = torch.tensor([r1, r2]).T
    g = torch.tensor([0, 0, 0, 0, 1, 1])
    a = 0.5 * 1.5 * C  # = .6495
    b = 1.5 / math.sqrt(2)  # = 1.0607
    sd = math.sqrt((2 * a * a + 2 * b * b) / 3)  # kept values [a, -a, b, -b], mean 0
    res = gd2po_advantages(r, g, weights=[1.0, 0.5], filter="hard", eps=0.0)
    close(res.advantages, [a / sd, 0, 0, -a / sd, b / sd, -b / sd])
    # without reweighting group A keeps its full scale 1.5c
    a2 = 1.5 * C
    sd2 = math.sqrt((2 * a2 * a2 + 2 * b * b) / 3)
    res2 = gd2po_advantages(r, g, weights=[1.0, 0.5], query_reweight=False, eps=0.0)
    close(res2.advantages, [a2 / sd2, 0, 0, -a2 / sd2, b / sd2, -b / sd2])


def test_gd2po_single_reward_never_conflicts():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    g = torch.tensor([0, 0, 1, 1])
    res = gd2po_advantages(r, g)
    assert res.keep.all() and res.metrics["gd2po/conflict_rate"] == 0.0
    close(res.advantages, gdpo_advantages(r, g).advantages)


def test_gd2po_unknown_filter():
    r, g = _two_rewards()
    with pytest.raises(ValueError, match="filter"):
        gd2po_advantages(r, g, filter="soft")


# ---------------------------------------------------------------- GAE


def test_gae_hand_computed():
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.6, 0.7]])
    m = torch.ones(1, 3)
    # gamma = lam = 1: A_t = reward-to-go - V_t
    adv, ret = gae(r, v, m, gamma=1.0, lam=1.0)
    close(adv, [[0.5, 0.4, 0.3]])
    close(ret, [[1.0, 1.0, 1.0]])
    # gamma .9, lam .8: d2 = 1 - .7 = .3; d1 = .9*.7 - .6 = .03; d0 = .9*.6 - .5 = .04
    # A2 = .3; A1 = .03 + .72*.3 = .246; A0 = .04 + .72*.246 = .21712
    adv, ret = gae(r, v, m, gamma=0.9, lam=0.8)
    close(adv, [[0.21712, 0.246, 0.3]])
    close(ret, [[0.71712, 0.846, 1.0]])


def test_gae_right_padding_and_ragged_rows():
    r = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0], [0.0, 2.0, 0.0, 0.0, 0.0]])
    v = torch.tensor([[0.5, 0.6, 0.7, 9.0, 9.0], [0.1, 0.2, 9.0, 9.0, 9.0]])
    m = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], dtype=torch.float)
    adv, ret = gae(r, v, m, gamma=0.9, lam=0.8)
    close(adv[0, :3], [0.21712, 0.246, 0.3])
    # row 1 alone: d1 = 2 - .2 = 1.8; d0 = .9*.2 - .1 = .08; A0 = .08 + .72*1.8 = 1.376
    close(adv[1, :2], [1.376, 1.8])
    assert torch.equal(adv[m == 0], torch.zeros(5))
    assert torch.equal(ret[m == 0], torch.zeros(5))


def test_gae_skips_interior_masked_tokens():
    # the masked middle token (e.g. a tool output) is stepped over: same as [r0, r2] alone
    r = torch.tensor([[0.0, 5.0, 1.0]])
    v = torch.tensor([[0.5, 9.0, 0.7]])
    adv, _ = gae(r, v, torch.tensor([[1.0, 0.0, 1.0]]), gamma=1.0, lam=1.0)
    close(adv, [[0.5, 0.0, 0.3]])


def test_to_reward_tensor():
    t = to_reward_tensor([1, None, 0.5])
    assert t[0] == 1 and math.isnan(t[1]) and t[2] == 0.5
    t2 = to_reward_tensor([[1, None], [0, 1]])
    assert t2.shape == (2, 2) and math.isnan(t2[0, 1])
