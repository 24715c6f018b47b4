"""Generation and token scoring on the tiny model."""

from __future__ import annotations

import pytest
import torch

from tandemrl.models import load_model
from tandemrl.rollout import SamplingConfig, generate, score_tokens
from tandemrl.rollout.generate import InverseCdfSampler, response_mask_from_ids

PROMPTS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "a much longer prompt than the first one"}],
]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def test_response_mask_keeps_tokens_through_first_eos():
    ids = torch.tensor([[5, 6, 2, 7, 2], [5, 5, 5, 5, 5], [2, 9, 9, 9, 9]])
    mask = response_mask_from_ids(ids, [2])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


def test_generate_layout_groups_and_seed(tiny):
    sampling = SamplingConfig(max_new_tokens=8)
    a = generate(tiny.model, tiny.tokenizer, PROMPTS, 3, sampling, seed=1)
    b = generate(tiny.model, tiny.tokenizer, PROMPTS, 3, sampling, seed=1)
    c = generate(tiny.model, tiny.tokenizer, PROMPTS, 3, sampling, seed=2)
    assert len(a) == 6
    assert a.group_ids.tolist() == [0, 0, 0, 1, 1, 1]
    assert a.example_index == [0, 0, 0, 1, 1, 1]
    assert a.response_ids.shape[1] <= 8
    assert torch.equal(a.response_ids, b.response_ids)
    assert not torch.equal(a.response_ids, c.response_ids)
    assert len({tuple(r.tolist()) for r in a.response_ids[:3]}) > 1  # samples, not copies
    # Left-padded prompts: the shorter prompt's rows start with padding, all rows end real.
    assert a.prompt_mask[:, -1].all()
    assert not a.prompt_mask[0].all() and a.prompt_mask[3].all()


def test_generate_stops_at_eos_and_flags_truncation(tiny):
    eos = tiny.tokenizer.eos_token_id
    model = tiny.model
    # Make EOS the most likely token everywhere: greedy decoding must stop after one token.
    with torch.no_grad():
        saved = model.lm_head.weight[eos].clone()
        model.lm_head.weight[eos] = model.lm_head.weight[eos] * 0 + 5.0
        try:
            batch = generate(model, tiny.tokenizer, PROMPTS, 1, SamplingConfig(8, temperature=0.0))
        finally:
            model.lm_head.weight[eos] = saved
    assert batch.response_mask.sum(-1).tolist() == [1, 1]
    assert batch.response_ids[:, 0].tolist() == [eos, eos]
    assert not batch.truncated.any()
    free = generate(model, tiny.tokenizer, PROMPTS, 1, SamplingConfig(4, temperature=0.0))
    assert (free.truncated == (free.response_mask.sum(-1) == 4)).all()


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_score_tokens_matches_unpadded_forward(tiny, temperature):
    """Left padding, position ids and logits_to_keep must not change any log-prob."""
    batch = generate(tiny.model, tiny.tokenizer, PROMPTS, 2, SamplingConfig(6), seed=0)
    scores = score_tokens(tiny.model, batch, temperature=temperature, with_entropy=True)
    for i in range(len(batch)):
        prompt = batch.prompt_ids[i][batch.prompt_mask[i].bool()]
        n = int(batch.response_mask[i].sum())
        response = batch.response_ids[i, :n]
        ids = torch.cat([prompt, response]).unsqueeze(0)
        with torch.no_grad():
            logits = tiny.model(input_ids=ids).logits[0, len(prompt) - 1 : -1] / temperature
        logp = torch.log_softmax(logits, -1)
        expected = logp.gather(-1, response.unsqueeze(-1)).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1)
        torch.testing.assert_close(scores.logp[i, :n], expected, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(scores.entropy[i, :n], entropy, atol=1e-4, rtol=1e-4)


def test_score_tokens_is_differentiable(tiny):
    batch = generate(tiny.model, tiny.tokenizer, PROMPTS[:1], 2, SamplingConfig(4), seed=0)
    tiny.model.zero_grad()
    scores = score_tokens(tiny.model, batch)
    (scores.logp * batch.response_mask).sum().backward()
    assert tiny.model.lm_head.weight.grad is not None
    assert tiny.model.lm_head.weight.grad.abs().sum() > 0
    tiny.model.zero_grad()


def _draws(sampler, logits: torch.Tensor, n: int) -> torch.Tensor:
    """Token counts of n draws from `sampler` on one row of logits."""
    torch.manual_seed(0)
    scores = sampler(None, logits.repeat(n, 1))
    assert torch.isinf(scores).sum(-1).eq(logits.shape[-1] - 1).all()  # one finite entry a row
    return torch.bincount(scores.argmax(-1), minlength=logits.shape[-1])


def test_inverse_cdf_sampler_draws_the_softmax_distribution():
    """Frequencies over 40,000 draws within 4.5 standard errors of softmax(z / T); a banned
    (-inf) token is never drawn."""
    n = 40_000
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf"), 0.5]])
    for temperature in (1.0, 0.5):
        counts = _draws(InverseCdfSampler(temperature), logits, n)
        p = torch.softmax(logits / temperature, -1)[0]
        se = (p * (1 - p) / n).sqrt()
        assert counts[4] == 0
        assert ((counts / n - p).abs() <= 4.5 * se + 1e-9).all(), (temperature, counts / n, p)


def test_inverse_cdf_sampler_applies_top_k_and_top_p():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    counts = _draws(InverseCdfSampler(1.0, top_k=2), logits, 20_000)
    assert counts[2:].sum() == 0 and counts[0] > counts[1] > 0
    p = torch.softmax(logits, -1)[0]  # top-p 0.8 keeps tokens 0 and 1 (0.665 + 0.245)
    assert p[:2].sum() >= 0.8 > p[0]
    counts = _draws(InverseCdfSampler(1.0, top_p=0.8), logits, 20_000)
    assert counts[2:].sum() == 0 and counts[1] > 0
    share = counts[0] / 20_000
    assert abs(share - p[0] / p[:2].sum()) < 0.02
