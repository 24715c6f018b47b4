import math

import pytest
import torch

from tandemrl.algos import dpo_loss, ipo_loss, rpo_sft_term


def _pair():
    # policy chosen -1, rejected -2; reference -1.5 for both
    pc = torch.tensor([-1.0], requires_grad=True)
    return pc, torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5])


def softplus(x):
    return math.log1p(math.exp(x))


def test_dpo_hand_computed():
    # beta .5: chosen reward .5 * .5 = .25, rejected .5 * -.5 = -.25, h = .5
    # loss = -log sigmoid(.5) = log(1 + e^-.5)
    pc, pr, rc, rr = _pair()
    res = dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert res.loss.item() == pytest.approx(softplus(-0.5))
    assert res.metrics["dpo/chosen_reward"] == pytest.approx(0.25)
    assert res.metrics["dpo/rejected_reward"] == pytest.approx(-0.25)
    assert res.metrics["dpo/reward_margin"] == pytest.approx(0.5)
    assert res.metrics["dpo/accuracy"] == 1.0
    res.loss.backward()
    # d/d pc = -beta * sigmoid(-h)
    assert pc.grad.item() == pytest.approx(-0.5 / (1 + math.exp(0.5)))


def test_dpo_label_smoothing():
    # .9 * softplus(-.5) + .1 * softplus(.5)
    res = dpo_loss(*_pair(), beta=0.5, label_smoothing=0.1)
    assert res.loss.item() == pytest.approx(0.9 * softplus(-0.5) + 0.1 * softplus(0.5))


def test_rpo_adds_length_normalised_chosen_nll():
    pc, pr, rc, rr = _pair()
    lengths = torch.tensor([4])
    # NLL of chosen = 1, over 4 tokens = .25
    assert rpo_sft_term(pc, lengths).item() == pytest.approx(0.25)
    res = dpo_loss(pc, pr, rc, rr, beta=0.5, alpha=1.0, chosen_lengths=lengths)
    assert res.loss.item() == pytest.approx(softplus(-0.5) + 0.25)
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(pc, pr, rc, rr, alpha=1.0)


def test_ipo_hand_computed():
    # h = (-1 + 1.5) - (-2 + 1.5) = 1; beta .5 -> target 1/(2*.5) = 1 -> loss 0
    assert ipo_loss(*_pair(), beta=0.5).loss.item() == pytest.approx(0.0)
    # beta .25 -> target 2 -> (1 - 2)^2 = 1
    res = ipo_loss(*_pair(), beta=0.25)
    assert res.loss.item() == pytest.approx(1.0)
    assert res.metrics["ipo/reward_margin"] == pytest.approx(0.25)
    with pytest.raises(ValueError):
        ipo_loss(*_pair(), beta=0.0)


def test_global_pair_count_for_accumulation():
    torch.manual_seed(0)
    logps = [torch.randn(6) for _ in range(4)]
    full = dpo_loss(*logps, beta=0.1).loss
    halves = sum(
        dpo_loss(*[x[s] for x in logps], beta=0.1, num_pairs=6).loss
        for s in (slice(0, 2), slice(2, 6))
    )
    assert halves.item() == pytest.approx(full.item())
    ipo_full = ipo_loss(*logps, beta=0.1).loss
    ipo_halves = sum(
        ipo_loss(*[x[s] for x in logps], beta=0.1, num_pairs=6).loss
        for s in (slice(0, 3), slice(3, 6))
    )
    assert ipo_halves.item() == pytest.approx(ipo_full.item())
