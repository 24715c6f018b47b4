"""Hypothesis property tests for the algorithm core."""

import itertools
import math

import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tandemrl.algos import (
    LossNormalizer,
    aggregate,
    clipped_policy_loss,
    d3s_sample_select,
    entropy_from_logits,
    gae,
    gd2po_advantages,
    gdpo_advantages,
    grpo_advantages,
    kl_penalty,
    learn_perplexity_threshold,
    policy_split_token_advantages,
    rloo_advantages,
)

FAST = settings(max_examples=50, deadline=None)

# rewards on a grid keep "all equal" exact and std well away from 0 when not all equal
reward = st.integers(-8, 8).map(lambda v: v / 4)


@st.composite
def grouped_rewards(draw, k=None, min_groups=1):
    sizes = draw(st.lists(st.integers(1, 6), min_size=min_groups, max_size=5))
    ids = [g for g, n in enumerate(sizes) for _ in range(n)]
    perm = draw(st.permutations(range(len(ids))))
    ids = [ids[i] for i in perm]  # groups are not contiguous
    shape = len(ids) if k is None else (len(ids), k)
    n = len(ids) * (1 if k is None else k)
    values = draw(st.lists(reward, min_size=n, max_size=n))
    return torch.tensor(values, dtype=torch.float64).reshape(shape), torch.tensor(ids)


def close(a, b, atol=1e-6):
    torch.testing.assert_close(a.double(), b.double(), atol=atol, rtol=1e-6)


@FAST
@given(grouped_rewards(), st.floats(0.1, 10), st.floats(-5, 5))
def test_grpo_invariant_to_shift_and_positive_scale(data, scale, shift):
    r, g = data
    for mode in ("group", "batch"):
        base = grpo_advantages(r, g, std_mode=mode, eps=0.0).advantages
        moved = grpo_advantages(r * scale + shift, g, std_mode=mode, eps=0.0).advantages
        close(moved, base)
        close(grpo_advantages(-r, g, std_mode=mode, eps=0.0).advantages, -base)
    # Dr.GRPO: shift invariant, scale equivariant
    base = grpo_advantages(r, g, std_mode="none").advantages
    close(grpo_advantages(r * scale + shift, g, std_mode="none").advantages, base * scale)


@FAST
@given(grouped_rewards(), st.randoms())
def test_grpo_permutation_equivariant(data, rnd):
    r, g = data
    perm = list(range(len(r)))
    rnd.shuffle(perm)
    perm = torch.tensor(perm)
    close(grpo_advantages(r[perm], g[perm]).advantages, grpo_advantages(r, g).advantages[perm])


@FAST
@given(grouped_rewards())
def test_grpo_groups_have_zero_mean_unit_std(data):
    r, g = data
    adv = grpo_advantages(r, g, eps=0.0).advantages
    for gid in g.unique():
        a, vals = adv[g == gid], r[g == gid]
        assert abs(a.sum().item()) < 1e-9
        if vals.numel() >= 2 and vals.max() > vals.min():
            assert abs(a.std().item() - 1.0) < 1e-9
        else:
            assert torch.equal(a, torch.zeros_like(a))


@FAST
@given(grouped_rewards())
def test_rloo_is_rescaled_dr_grpo(data):
    r, g = data
    dr = grpo_advantages(r, g, std_mode="none").advantages
    n = torch.stack([(g == gid).sum() for gid in g]).double()
    expected = torch.where(n > 1, dr * n / (n - 1).clamp(min=1), torch.zeros_like(dr))
    close(rloo_advantages(r, g).advantages, expected)


@FAST
@given(
    grouped_rewards(),
    st.lists(st.floats(0.1, 3), min_size=3, max_size=3),
    st.lists(reward, min_size=3, max_size=3),
)
def test_gd2po_without_conflicts_equals_gdpo(data, slopes, offsets):
    # every reward is an increasing function of one score: per-reward advantages share signs
    score, g = data
    r = torch.stack([score * a + b for a, b in zip(slopes, offsets, strict=True)], dim=1)
    w = [1.0, 0.5, 2.0]
    gdpo = gdpo_advantages(r, g, weights=w)
    for flt in ("hard", "snr", "none"):
        res = gd2po_advantages(r, g, weights=w, filter=flt, query_reweight=True)
        assert res.metrics["gd2po/conflict_rate"] == 0.0
        close(res.advantages, gdpo.advantages)
        assert torch.equal(res.keep, gdpo.keep)


@FAST
@given(grouped_rewards(k=2))
def test_gd2po_without_filter_equals_gdpo_always(data):
    r, g = data
    close(
        gd2po_advantages(r, g, filter="none", query_reweight=False).advantages,
        gdpo_advantages(r, g).advantages,
    )
    # whatever it drops gets exactly 0 and keep False; kept advantages are whitened
    res = gd2po_advantages(r, g, filter="hard")
    assert torch.equal(res.advantages[~res.keep], torch.zeros(int((~res.keep).sum())).double())


@st.composite
def token_batch(draw, equal_lengths=False):
    b = draw(st.integers(1, 6))
    t = draw(st.integers(1, 6))
    n = draw(st.integers(1, t))
    lengths = (
        [n] * b if equal_lengths else draw(st.lists(st.integers(0, t), min_size=b, max_size=b))
    )
    values = draw(st.lists(st.floats(-10, 10), min_size=b * t, max_size=b * t))
    mask = (torch.arange(t) < torch.tensor(lengths)[:, None]).double()
    return torch.tensor(values, dtype=torch.float64).reshape(b, t), mask, n


@FAST
@given(token_batch(equal_lengths=True))
def test_aggregation_modes_agree_on_equal_lengths(batch):
    # equal lengths n and horizon n: all three are the plain token mean
    values, mask, n = batch
    norm = LossNormalizer.from_masks(mask, horizon=n)
    results = [
        aggregate(values, mask, mode, norm).item()
        for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
    ]
    assert max(results) - min(results) < 1e-9


@FAST
@given(token_batch(), st.data())
def test_microbatch_losses_sum_to_batch_loss(batch, data):
    values, mask, _ = batch
    cut = sorted(
        set(data.draw(st.lists(st.integers(1, len(values) - 1), max_size=3)))
        if len(values) > 1
        else []
    )
    bounds = [0, *cut, len(values)]
    parts = [(values[a:b], mask[a:b]) for a, b in itertools.pairwise(bounds)]
    norm = LossNormalizer.from_masks(*[m for _, m in parts], horizon=values.shape[1])
    for mode in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        whole = aggregate(values, mask, mode, norm).item()
        summed = sum(aggregate(v, m, mode, norm).item() for v, m in parts)
        assert math.isclose(whole, summed, abs_tol=1e-9)


@FAST
@given(st.lists(st.floats(-30, 30), min_size=1, max_size=20))
def test_kl_estimators_nonnegative(xs):
    x = torch.tensor([xs], dtype=torch.float64)
    zero = torch.zeros_like(x)
    k3 = kl_penalty(x, zero, "k3")
    assert (k3 >= 0).all() and (kl_penalty(x, zero, "k2") >= 0).all()
    assert (k3[x.abs() > 1e-6] > 0).all() and (k3[x == 0] == 0).all()  # zero only at x = 0
    # k1 is antisymmetric in the direction of the log-ratio
    close(kl_penalty(x, zero, "k1"), -kl_penalty(zero, x, "k1"))


@FAST
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=6), st.floats(0.0, 0.5), st.floats(0.0, 0.5))
def test_clipped_loss_is_pessimistic_and_exact_on_policy(log_ratios, clip_low, clip_high):
    lr = torch.tensor([log_ratios], dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0] * (len(log_ratios) // 2) + [0.5] * (len(log_ratios) % 2))
    adv = adv.double()[None, :]
    mask = torch.ones_like(lr)
    res = clipped_policy_loss(
        lr, torch.zeros_like(lr), adv, mask, clip_low=clip_low, clip_high=clip_high
    )
    # the clipped objective never exceeds the unclipped one: loss >= -mean(rho A)
    assert res.loss.item() >= -(lr.exp() * adv).mean().item() - 1e-9
    on_policy = clipped_policy_loss(lr, lr, adv, mask, clip_low=clip_low, clip_high=clip_high)
    assert math.isclose(on_policy.loss.item(), -adv.mean().item(), abs_tol=1e-9)


@FAST
@given(st.lists(st.floats(-4, 4), min_size=1, max_size=7), st.integers(1, 7))
def test_d3s_selection_matches_brute_force(values, k):
    adv = torch.tensor(values, dtype=torch.float64)
    n = adv.numel()
    k = min(k, n)
    sel, _ = d3s_sample_select(adv, torch.zeros(n, dtype=torch.long), keep_ratio=k / n, min_keep=1)
    assert int(sel.sum()) == k
    best = max(
        adv[list(c)].var(unbiased=False).item() if k > 1 else 0.0
        for c in itertools.combinations(range(n), k)
    )
    got = adv[sel].var(unbiased=False).item() if k > 1 else 0.0
    assert got >= best - 1e-9


@FAST
@given(
    st.lists(st.floats(-3, 3), min_size=2, max_size=4),
    st.floats(0.01, 5),
    st.floats(1.0, 4.0),
    st.randoms(),
)
def test_policy_split_stays_within_clamp(advs, eta, kappa, rnd):
    b = len(advs)
    own = torch.tensor([[rnd.uniform(0, 8) for _ in range(5)] for _ in range(b)])
    other = torch.tensor([[rnd.uniform(0, 8) for _ in range(5)] for _ in range(b)])
    mask = torch.tensor([[float(t < rnd.randint(1, 5)) for t in range(5)] for _ in range(b)])
    a = torch.tensor(advs)
    out, _ = policy_split_token_advantages(
        a, own, other, mask, torch.zeros(b).long(), eta=eta, kappa=kappa
    )
    diff = (out - a[:, None]) * mask
    assert (diff.abs() <= a.abs()[:, None] / kappa + 1e-6).all()
    assert torch.equal(out[a == 0], torch.zeros_like(out[a == 0]))  # vanishes with A = 0
    assert (out * mask * a[:, None] >= -1e-6).all()  # kappa >= 1 never flips the sign
    assert torch.equal(out[mask == 0], torch.zeros_like(out[mask == 0]))


@FAST
@given(st.lists(st.tuples(st.integers(1, 12), st.booleans()), min_size=2, max_size=12))
def test_threshold_is_the_brute_force_minimum(pairs):
    ppl = torch.tensor([float(p) for p, _ in pairs], dtype=torch.float64)
    correct = torch.tensor([float(c) for _, c in pairs], dtype=torch.float64)
    assume(ppl.unique().numel() >= 2)
    res = learn_perplexity_threshold(ppl, correct)
    u = ppl.unique()
    candidates = ((u[1:] + u[:-1]) / 2).tolist()
    errors = [((correct - (ppl < tau).double()).abs().mean().item(), tau) for tau in candidates]
    best = min(e for e, _ in errors)
    assert math.isclose(res.error, best, abs_tol=1e-9)
    assert res.threshold == min(tau for e, tau in errors if math.isclose(e, best, abs_tol=1e-9))


@FAST
@given(st.integers(1, 3), st.integers(2, 9), st.floats(-50, 50), st.randoms())
def test_entropy_bounds_and_shift_invariance(b, v, shift, rnd):
    logits = torch.tensor([[[rnd.uniform(-20, 20) for _ in range(v)]] * 2] * b)
    h = entropy_from_logits(logits.double())
    assert (h >= -1e-9).all() and (h <= math.log(v) + 1e-9).all()
    close(entropy_from_logits(logits.double() + shift), h)


@FAST
@given(st.integers(1, 6), st.integers(0, 4), st.randoms())
def test_gae_padding_invariant_and_reward_to_go(t, pad, rnd):
    r = torch.tensor([[rnd.uniform(-1, 1) for _ in range(t)]], dtype=torch.float64)
    v = torch.tensor([[rnd.uniform(-1, 1) for _ in range(t)]], dtype=torch.float64)
    adv, _ = gae(r, v, torch.ones_like(r), gamma=0.9, lam=0.7)
    junk = torch.full((1, pad), 7.0, dtype=torch.float64)
    mask = torch.cat([torch.ones(1, t), torch.zeros(1, pad)], dim=1).double()
    padded, _ = gae(torch.cat([r, junk], 1), torch.cat([v, junk], 1), mask, gamma=0.9, lam=0.7)
    close(padded[:, :t], adv)
    mc, _ = gae(r, v, torch.ones_like(r), gamma=1.0, lam=1.0)
    close(mc, r.flip(1).cumsum(1).flip(1) - v)
