import math

import pytest
import torch

from tandemrl.algos import (
    KL_ESTIMATORS,
    entropy_bonus,
    entropy_from_logits,
    kl_in_reward,
    kl_loss,
    kl_penalty,
    logprobs_from_logits,
    sequence_perplexity,
)

LOG2 = math.log(2.0)


def test_kl_estimators_hand_computed():
    # x = +-log 2
    logp = torch.tensor([[LOG2, -LOG2, 0.0]])
    ref = torch.zeros(1, 3)
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([[LOG2, -LOG2, 0.0]]))
    half_sq = 0.5 * LOG2**2
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.tensor([[half_sq, half_sq, 0]]))
    # k3 = exp(-x) + x - 1: x = log 2 -> .5 + log 2 - 1; x = -log 2 -> 2 - log 2 - 1
    expected = torch.tensor([[LOG2 - 0.5, 1.0 - LOG2, 0.0]])
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), expected)


def test_kl_clamp():
    logp = torch.tensor([[50.0, -50.0]])
    k3 = kl_penalty(logp, torch.zeros(1, 2), "k3", clamp=10.0)
    torch.testing.assert_close(k3, torch.tensor([[math.exp(-10) + 9, math.exp(10) - 11]]))
    assert kl_penalty(logp, torch.zeros(1, 2), "k1", clamp=None)[0, 0] == 50.0


def test_kl_unknown_kind():
    with pytest.raises(KeyError, match="k3"):
        kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k4")


def test_custom_kl_estimator_from_registry():
    KL_ESTIMATORS.register("test-abs")(torch.abs)
    try:
        out = kl_penalty(torch.tensor([[-2.0]]), torch.zeros(1, 1), "test-abs")
        assert out.item() == 2.0
    finally:
        KL_ESTIMATORS.unregister("test-abs")


def test_kl_loss_aggregates_and_differentiates():
    logp = torch.tensor([[LOG2, 0.0, 5.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    res = kl_loss(logp, torch.zeros(1, 3), mask, coef=0.1, kind="k3")
    # (LOG2 - .5 + 0) / 2 tokens * .1
    assert res.loss.item() == pytest.approx(0.1 * (LOG2 - 0.5) / 2)
    assert res.metrics["kl"] == pytest.approx((LOG2 - 0.5) / 2)
    res.loss.backward()
    # d k3 / dx = 1 - exp(-x) = .5 at x = log 2, times .1 / 2
    torch.testing.assert_close(logp.grad, torch.tensor([[0.025, 0.0, 0.0]]))


def test_kl_in_reward_sequence_and_token_level():
    rewards = torch.tensor([1.0, float("nan"), 2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5], [0.4, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    shaped, metrics = kl_in_reward(rewards, kl, mask, beta=0.5)
    # 1 - .5 * (.1 + .2) = .85 ; NaN stays NaN ; 2 - .5 * .4 = 1.8
    assert shaped[0].item() == pytest.approx(0.85)
    assert math.isnan(shaped[1].item())
    assert shaped[2].item() == pytest.approx(1.8)
    tok, _ = kl_in_reward(rewards, kl, mask, beta=0.5, token_level=True)
    # terminal reward on the last valid token, -beta kl on every valid token, 0 on padding
    torch.testing.assert_close(tok[0], torch.tensor([-0.05, -0.1 + 1.0, 0.0]))
    torch.testing.assert_close(tok[2], torch.tensor([-0.2 + 2.0, 0.0, 0.0]))
    assert metrics["kl"] == pytest.approx((0.1 + 0.2 + 1.5 + 0.4) / 6)


def test_entropy_from_logits_values_and_stability():
    logits = torch.zeros(1, 1, 4)
    assert entropy_from_logits(logits).item() == pytest.approx(math.log(4))
    assert entropy_from_logits(torch.tensor([[[1000.0, 0.0]]])).item() == pytest.approx(0.0)
    banned = torch.tensor([[[0.0, -float("inf"), 0.0]]], requires_grad=True)
    h = entropy_from_logits(banned)
    assert h.item() == pytest.approx(LOG2)
    h.sum().backward()
    assert torch.isfinite(banned.grad).all()
    torch.manual_seed(0)
    z = torch.randn(2, 3, 7) * 3
    expected = torch.distributions.Categorical(logits=z).entropy()
    torch.testing.assert_close(entropy_from_logits(z), expected)
    torch.testing.assert_close(entropy_from_logits(z, chunk_size=2), expected)


def test_entropy_bonus_sign_and_metric():
    ent = torch.tensor([[1.0, 3.0], [2.0, 9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    res = entropy_bonus(ent, mask, coef=0.01)
    assert res.loss.item() == pytest.approx(-0.01 * 2.0)  # mean of 1, 3, 2
    assert res.metrics["entropy/mean"] == pytest.approx(2.0)
    res.loss.backward()
    assert (ent.grad[mask > 0] < 0).all()  # descending the loss raises entropy


def test_logprobs_from_logits():
    logits = torch.tensor([[[0.0, LOG2]]])  # p = [1/3, 2/3]
    lp = logprobs_from_logits(logits, torch.tensor([[1]]))
    assert lp.item() == pytest.approx(math.log(2 / 3))


def test_sequence_perplexity():
    # mean NLL of tokens with p .5 and .25 = (log 2 + log 4) / 2 = 1.5 log 2 -> ppl = 2^1.5
    lp = torch.tensor([[math.log(0.5), math.log(0.25), -99.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    ppl = sequence_perplexity(lp, mask)
    assert ppl[0].item() == pytest.approx(2**1.5)
    assert math.isnan(ppl[1].item())  # no tokens: no perplexity
