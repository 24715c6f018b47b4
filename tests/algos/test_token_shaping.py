import math

import pytest
import torch

from tandemrl.algos import (
    d3s_sample_select,
    d3s_schedule,
    d3s_token_select,
    policy_split_token_advantages,
)


def _ps_inputs():
    # one group, two rows, e = surprisal (same for both modes so alpha does not matter)
    s = torch.tensor([[1.0, 3.0, 50.0], [2.0, 2.0, -7.0]])  # column 2 is padding
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    return s, mask, torch.tensor([0, 0])


def test_policy_split_hand_computed():
    # valid e = [1, 3, 2, 2]: mean 2, population std sqrt(2/4) -> z = [-sqrt2, sqrt2, 0, 0]
    # A = [1, 0], eta .03, kappa 2: bonus row0 = -+.03 sqrt2 (within +-.5); row1 bound 0
    s, mask, g = _ps_inputs()
    adv, metrics = policy_split_token_advantages(torch.tensor([1.0, 0.0]), s, s, mask, g)
    d = 0.03 * math.sqrt(2)
    torch.testing.assert_close(adv, torch.tensor([[1 - d, 1 + d, 0.0], [0.0, 0.0, 0.0]]))
    assert metrics["policy_split/clip_frac"] == 0.0


def test_policy_split_clamp_and_sign():
    # eta 1: raw bonus -+sqrt2 clipped to -+|A|/kappa = -+.5 (negative A: 1/2 of -2 = 1)
    s, mask, g = _ps_inputs()
    adv, metrics = policy_split_token_advantages(torch.tensor([1.0, -2.0]), s, s, mask, g, eta=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 1.5, 0.0], [-2.0, -2.0, 0.0]]))
    assert metrics["policy_split/clip_frac"] == pytest.approx(0.5)


def test_policy_split_mixes_modes_with_alpha():
    _, mask, g = _ps_inputs()
    own = torch.tensor([[1.0, 3.0, 0.0], [2.0, 2.0, 0.0]])
    other = torch.tensor([[3.0, 1.0, 0.0], [2.0, 2.0, 0.0]])
    # alpha .5 -> e constant 2 -> z 0 -> no bonus at all
    adv, _ = policy_split_token_advantages(torch.tensor([1.0, 1.0]), own, other, mask, g)
    torch.testing.assert_close(adv, mask)
    adv1, _ = policy_split_token_advantages(
        torch.tensor([1.0, 1.0]), own, other, mask, g, alpha=1.0
    )
    assert adv1[0, 0] < 1.0 < adv1[0, 1]


def test_policy_split_groups_are_independent():
    s = torch.tensor([[1.0, 3.0], [10.0, 30.0]])
    mask = torch.ones(2, 2)
    adv, _ = policy_split_token_advantages(
        torch.tensor([1.0, 1.0]), s, s, mask, torch.tensor([0, 1])
    )
    # each row is its own group: both z = [-1, 1], despite different scales
    torch.testing.assert_close(adv[0], adv[1])


def test_d3s_sample_select_hand_computed():
    # sorted [-2, -1, 0, 1, 3]; k = 2: pair {-2, 3} (var 6.25)
    # k = 3 candidates (j smallest + rest largest): {0,1,3} 1.56, {-2,1,3} 4.22,
    #   {-2,-1,3} 4.67, {-2,-1,0} .67 -> {-2,-1,3}
    adv = torch.tensor([3.0, 1.0, 0.0, -1.0, -2.0])
    g = torch.zeros(5, dtype=torch.long)
    keep2, _ = d3s_sample_select(adv, g, keep_ratio=0.4)
    assert keep2.tolist() == [True, False, False, False, True]
    keep3, metrics = d3s_sample_select(adv, g, keep_ratio=0.6)
    assert keep3.tolist() == [True, False, False, True, True]
    assert metrics["d3s/adv_var_after"] == pytest.approx(14 / 3)
    assert metrics["d3s/sample_kept_frac"] == pytest.approx(0.6)


def test_d3s_sample_select_respects_groups_keep_and_min_keep():
    adv = torch.tensor([1.0, -1.0, 0.5, 9.0, -9.0, 0.0])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    keep = torch.tensor([True, True, True, False, True, True])
    sel, _ = d3s_sample_select(adv, g, keep_ratio=0.1, keep=keep)
    # min_keep 2 per group; rollout 3 is not a candidate
    assert sel.tolist() == [True, True, False, False, True, True]


def test_d3s_token_select():
    adv = torch.tensor([1.0, -2.0])
    ent = torch.tensor([[0.5, 1.0, 2.0], [0.1, 0.3, 99.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # scores |A| H: [.5, 1, 2] and [.2, .6, (pad)]; 5 valid, ratio .4 -> top 2
    sel, metrics = d3s_token_select(adv, ent, mask, keep_ratio=0.4)
    assert sel.tolist() == [[False, True, True], [False, False, False]]
    assert metrics["d3s/token_kept_frac"] == pytest.approx(0.4)
    # per sequence, ratio .5: ceil(1.5) = 2 in row 0, ceil(1) = 1 in row 1
    sel, _ = d3s_token_select(adv, ent, mask, keep_ratio=0.5, scope="sequence")
    assert sel.tolist() == [[False, True, True], [False, True, False]]
    for ratio in (1.0, 1.5):  # ratios above 1 keep everything, never padding
        full, _ = d3s_token_select(adv, ent, mask, keep_ratio=ratio)
        assert torch.equal(full, mask.bool())


def test_d3s_schedule():
    assert d3s_schedule(0, 100, 0.5, 1.0) == 0.5
    assert d3s_schedule(50, 100, 0.5, 1.0) == pytest.approx(0.75)
    assert d3s_schedule(500, 100, 0.5, 1.0) == 1.0
    assert d3s_schedule(3, 0, 0.5, 1.0) == 1.0
