import pytest
import torch

from tandemrl.algos import (
    AGGREGATIONS,
    LossNormalizer,
    aggregate,
    clipped_policy_loss,
    masked_mean,
    masked_whiten,
)

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]

VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


def test_modes_hand_computed():
    # token-mean: (1 + 2 + 4) / 3 tokens
    assert aggregate(VALUES, MASK, "token-mean").item() == pytest.approx(7 / 3)
    # seq-mean-token-mean: (mean(1,2) + mean(4)) / 2 = (1.5 + 4) / 2
    assert aggregate(VALUES, MASK, "seq-mean-token-mean").item() == pytest.approx(2.75)
    # seq-mean-token-sum-norm, horizon = T = 3: ((1+2) + 4) / 3 / 2
    assert aggregate(VALUES, MASK, "seq-mean-token-sum-norm").item() == pytest.approx(7 / 6)
    norm = LossNormalizer(num_tokens=3, num_sequences=2, horizon=10)
    assert aggregate(VALUES, MASK, "seq-mean-token-sum-norm", norm).item() == pytest.approx(0.35)


def test_all_masked_row_contributes_zero_and_is_not_counted():
    values = torch.cat([VALUES, torch.tensor([[7.0, 8.0, 9.0]])])
    mask = torch.cat([MASK, torch.zeros(1, 3)])
    assert aggregate(values, mask, "token-mean").item() == pytest.approx(7 / 3)
    assert aggregate(values, mask, "seq-mean-token-mean").item() == pytest.approx(2.75)
    assert aggregate(values, mask, "seq-mean-token-sum-norm").item() == pytest.approx(7 / 6)
    assert LossNormalizer.from_masks(mask).num_sequences == 2


def test_fully_masked_batch_gives_zero_not_nan():
    v = torch.ones(2, 3, requires_grad=True)
    for mode in MODES:
        out = aggregate(v, torch.zeros(2, 3), mode)
        assert out.item() == 0.0, mode
        out.backward()
        assert torch.equal(v.grad, torch.zeros(2, 3))


def test_unknown_mode_and_shape_errors():
    with pytest.raises(KeyError, match="token-mean"):
        aggregate(VALUES, MASK, "token_mean")
    with pytest.raises(ValueError):
        aggregate(VALUES, MASK[:, :2], "token-mean")
    with pytest.raises(ValueError, match="horizon"):
        aggregate(VALUES, MASK, "seq-mean-token-sum-norm", LossNormalizer(3, 2, None))


def test_custom_aggregation_via_registry_name():
    @AGGREGATIONS.register("test-seq-sum")
    def seq_sum(values, mask, normalizer):
        return (values * mask).sum() / normalizer.num_sequences

    try:
        assert aggregate(VALUES, MASK, "test-seq-sum").item() == pytest.approx(3.5)
    finally:
        AGGREGATIONS.unregister("test-seq-sum")
    assert "test-seq-sum" not in AGGREGATIONS


def test_normalizer_from_masks_and_merge():
    a = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    b = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0]])
    n = LossNormalizer.from_masks(a, b)
    assert (n.num_tokens, n.num_sequences, n.horizon) == (7.0, 2.0, 5.0)
    m = LossNormalizer.merge(LossNormalizer(3, 1, 4), LossNormalizer(5, 2, 6))
    assert (m.num_tokens, m.num_sequences, m.horizon) == (8, 3, 6)
    assert LossNormalizer(1, 1).all_reduce() == LossNormalizer(1, 1)  # no process group: no-op


def test_masked_helpers():
    assert masked_mean(VALUES, MASK).item() == pytest.approx(7 / 3)
    torch.testing.assert_close(masked_mean(VALUES, MASK, dim=-1), torch.tensor([1.5, 4.0]))
    w = masked_whiten(VALUES, MASK)
    assert masked_mean(w, MASK).abs().item() < 1e-6
    assert w[MASK == 0].abs().sum() == 0


# ------------------------------------------------ accumulation and data-parallel equivalence


def _setup(seed=0, batch=8, horizon=7, dim=5, vocab=11):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(dim, vocab, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(batch, horizon, dim, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, vocab, (batch, horizon), generator=g)
    lengths = torch.tensor([7, 1, 3, 5, 2, 7, 4, 6])[:batch]
    mask = (torch.arange(horizon) < lengths[:, None]).double()
    mask[3] = 0.0  # one fully masked row (a dropped rollout)
    with torch.no_grad():
        old = _logp(w, x, tokens) + 0.3 * torch.randn(batch, horizon, generator=g).double()
    adv = torch.randn(batch, generator=g, dtype=torch.float64)
    return w, x, tokens, mask, old, adv


def _logp(w, x, tokens):
    return torch.log_softmax(x @ w, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _loss(w, x, tokens, mask, old, adv, mode, normalizer):
    logp = _logp(w, x, tokens)
    return clipped_policy_loss(
        logp,
        old,
        adv,
        mask,
        clip_low=0.2,
        clip_high=0.28,
        aggregation=mode,
        normalizer=normalizer,
    ).loss


def _trim(rows, x, tokens, mask, old, adv):
    # each microbatch is padded only to its own longest response, as a real batcher does
    width = max(int(mask[rows].sum(-1).max()), 1)
    return x[rows, :width], tokens[rows, :width], mask[rows, :width], old[rows, :width], adv[rows]


@pytest.mark.parametrize("mode", MODES)
def test_two_ranks_two_microbatches_equal_one_big_batch(mode):
    w, x, tokens, mask, old, adv = _setup()
    horizon = float(mask.shape[1])  # a constant (max response length) for the sum-norm mode
    full = _loss(
        w, x, tokens, mask, old, adv, mode, LossNormalizer.from_masks(mask, horizon=horizon)
    )
    (full_grad,) = torch.autograd.grad(full, w)
    # normalizer=None means "this batch is the whole batch" (horizon defaults to T)
    assert full.item() == _loss(w, x, tokens, mask, old, adv, mode, None).item()
    # the setup really exercises both clip sides, not just the linear part of the surrogate
    metrics = clipped_policy_loss(
        _logp(w, x, tokens), old, adv, mask, clip_low=0.2, clip_high=0.28
    ).metrics
    assert metrics["clip/frac_low"] > 0 and metrics["clip/frac_high"] > 0

    ranks = [[[0, 1, 2], [3]], [[4, 5], [6, 7]]]  # uneven microbatches on purpose
    per_rank = [
        LossNormalizer.from_masks(
            *[_trim(mb, x, tokens, mask, old, adv)[2] for mb in rank], horizon=horizon
        )
        for rank in ranks
    ]
    norm = LossNormalizer.merge(*per_rank)  # what LossNormalizer.all_reduce computes
    assert norm.num_tokens == mask.sum().item()
    total_loss, total_grad = 0.0, torch.zeros_like(w)
    for rank in ranks:
        for mb in rank:
            xs, ts, ms, olds, advs = _trim(mb, x, tokens, mask, old, adv)
            loss = _loss(w, xs, ts, ms, olds, advs, mode, norm)
            (grad,) = torch.autograd.grad(loss, w)
            total_loss += loss.item()
            total_grad += grad  # gradient accumulation, then the all-reduce SUM over ranks
    assert total_loss == pytest.approx(full.item(), abs=1e-12)
    torch.testing.assert_close(total_grad, full_grad, atol=1e-12, rtol=1e-10)


def test_local_normalisation_breaks_equivalence():
    # the bug the explicit normaliser prevents: each microbatch averages over its own tokens
    w, x, tokens, mask, old, adv = _setup()
    full = _loss(w, x, tokens, mask, old, adv, "token-mean", None)
    micro = [[0, 1, 2], [4, 5], [6, 7]]
    naive = sum(
        _loss(w, *_trim(mb, x, tokens, mask, old, adv), "token-mean", None) for mb in micro
    ) / len(micro)
    assert abs(naive.item() - full.item()) > 1e-3
