import math

import pytest
import torch

from tandemrl.algos import (
    adaptive_lr_scale,
    cross_policy_reward,
    grpo_advantages,
    reward_progress,
    share_candidates,
    share_gradients,
    truncated_importance_weights,
)

NAN = float("nan")


def test_share_candidates_need_success_and_to_beat_the_receiver_mean():
    # group 0: receiver rows 0,1 (mean 0.5); giver rows 2 (1.0), 3 (0.0)
    # group 1: receiver row 4 (1.0); giver row 5 (1.0): successful but not better -> no
    # group 2: receiver abstained (NaN) -> mean -inf; giver row 7 (1.0) -> yes, row 8 NaN -> no
    r = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, NAN, 1.0, NAN])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2])
    recv = torch.tensor([1, 1, 0, 0, 1, 0, 1, 0, 0]).bool()
    give = ~recv
    out = share_candidates(r, g, give, recv, min_reward=1.0)
    assert out.tolist() == [False, False, True, False, False, False, False, True, False]
    # the success bar applies on top of beating the receiver
    assert not share_candidates(r, g, give, recv, min_reward=1.5).any()
    assert not (out & recv).any()


def test_truncated_importance_weights_hand_computed():
    target = torch.tensor([[math.log(0.5), math.log(0.9)]])
    behaviour = torch.tensor([[math.log(0.25), math.log(0.9)]])
    w = truncated_importance_weights(target, behaviour, cap=1.5)
    # 0.5 / 0.25 = 2 -> capped at 1.5; 0.9 / 0.9 = 1
    torch.testing.assert_close(w, torch.tensor([[1.5, 1.0]]))
    behaviour2 = torch.tensor([[math.log(1.0), math.log(0.9)]])
    w2 = truncated_importance_weights(target, behaviour2, cap=2.0)
    torch.testing.assert_close(w2, torch.tensor([[0.5, 1.0]]))


def test_truncated_importance_weights_carry_no_gradient():
    target = torch.zeros(1, 3, requires_grad=True)
    w = truncated_importance_weights(target, torch.zeros(1, 3))
    assert not w.requires_grad
    with pytest.raises(ValueError):
        truncated_importance_weights(target, target, cap=0.0)


def test_cross_policy_reward_is_the_positive_advantage_in_the_receivers_group():
    # one prompt: receiver rewards [0, 0], giver rows [1, 0]. Joint group [0, 0, 1, 0]:
    # mean .25, Bessel std .5 -> advantages [-.5, -.5, 1.5, -.5]; giver credit [1.5, 0]
    r = torch.tensor([0.0, 0.0, 1.0, 0.0])
    g = torch.zeros(4, dtype=torch.long)
    recv = torch.tensor([True, True, False, False])
    give = torch.tensor([False, False, True, True])
    c = cross_policy_reward(r, g, give, recv, grpo_advantages, eps=0.0)
    torch.testing.assert_close(c, torch.tensor([0.0, 0.0, 1.5, 0.0]))
    # rows that neither give nor receive are left out of the group statistics
    r2 = torch.cat([r, torch.tensor([5.0])])
    g2 = torch.zeros(5, dtype=torch.long)
    c2 = cross_policy_reward(
        r2, g2, torch.cat([give, torch.tensor([False])]), torch.cat([recv, torch.tensor([False])]),
        grpo_advantages, eps=0.0,
    )  # fmt: skip
    torch.testing.assert_close(c2, torch.tensor([0.0, 0.0, 1.5, 0.0, 0.0]))
    none = cross_policy_reward(r, g, torch.zeros(4, dtype=torch.bool), recv, grpo_advantages)
    assert none.abs().sum() == 0


def test_reward_progress_compares_two_windows():
    assert reward_progress([0.1, 0.2, 0.3], window=2) is None
    # last 2: (0.5 + 0.7)/2 = 0.6; before: (0.1 + 0.3)/2 = 0.2
    assert reward_progress([0.0, 0.1, 0.3, 0.5, 0.7], window=2) == pytest.approx(0.4)
    with pytest.raises(ValueError):
        reward_progress([1.0], 0)


def test_adaptive_lr_scale_slows_only_the_faster_policy():
    # lead 0.3 - 0.1 = 0.2, minus tolerance 0.05 -> 0.15; 1 / (1 + 5 * 0.15) = 1 / 1.75
    assert adaptive_lr_scale(0.3, 0.1) == pytest.approx(1 / 1.75)
    assert adaptive_lr_scale(0.1, 0.3) == 1.0  # the slower one is never sped up
    assert adaptive_lr_scale(0.14, 0.1) == 1.0  # within tolerance
    assert adaptive_lr_scale(None, 0.1) == 1.0
    assert adaptive_lr_scale(5.0, 0.0, min_scale=0.25) == 0.25


def test_share_gradients_uses_the_gradients_before_mixing():
    ga = {"w": torch.tensor([1.0, 0.0]), "b": None}
    gb = {"w": torch.tensor([0.0, 2.0]), "b": torch.tensor([4.0])}
    a, b = share_gradients(ga, gb, coef=0.5)
    torch.testing.assert_close(a["w"], torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(b["w"], torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(a["b"], torch.tensor([2.0]))
    torch.testing.assert_close(b["b"], torch.tensor([4.0]))
    with pytest.raises(ValueError):
        share_gradients({"w": None}, {"v": None}, 0.1)
