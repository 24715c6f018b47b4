"""A group's prompt is computed once (prefill in sampling, prompt pass in scoring): the results
must equal the per-row computation, gradients included."""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import GenerationConfig

from tandemrl.models import LoraConfig, apply_lora, load_model
from tandemrl.models.adapters import apply_lora_adapters, mixed_adapter_rows
from tandemrl.rollout import SamplingConfig, generate, score_tokens
from tandemrl.rollout.generate import encode_prompts, prefill_once
from tandemrl.rollout.logprobs import distinct_prompts, states_before_responses

PROMPTS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "user", "content": "a much longer prompt than the first one"}],
    [{"role": "user", "content": "three"}],
]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def test_distinct_prompts_ignores_padding_but_not_tokens():
    pad = 0
    ids = torch.tensor([[pad, 5, 6], [9, 5, 6], [pad, 5, 6], [7, 5, 6], [pad, 5, 6]])
    # Row 1 has a real token where row 0 has padding (same id under the mask would collide
    # if padding were compared by id alone): it must count as its own prompt.
    mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1], [0, 1, 1]])
    ids[1, 0] = pad
    first, inverse = distinct_prompts(ids, mask)
    assert len(first) == 3
    assert inverse[0] == inverse[2] == inverse[4]
    assert len({int(inverse[0]), int(inverse[1]), int(inverse[3])}) == 3
    assert torch.equal(ids[first][inverse], ids)  # every row maps to a row with its prompt
    assert all(first[inverse[b]] <= b for b in range(5))  # first occurrence


def _scores_and_grads(model, batch, share, **kw):
    model.zero_grad()
    scores = score_tokens(model, batch, 0.7, with_entropy=True, share_prompts=share, **kw)
    (scores.logp * batch.response_mask).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return scores, grads


@pytest.mark.parametrize("lora", [False, True])
def test_shared_prompt_scoring_equals_per_row(tiny, lora):
    model = load_model("tiny").model if lora else tiny.model
    if lora:
        model = apply_lora(model, LoraConfig(r=4, alpha=8))
        with torch.no_grad():  # B = 0 at init would hide errors in the A gradients
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.1)
    batch = generate(model, tiny.tokenizer, PROMPTS, 3, SamplingConfig(6), seed=0)
    # Rows of a group in a different order: sharing must not rely on adjacency.
    batch = batch.select([0, 3, 6, 1, 4, 7, 2, 5, 8])
    per_row, per_row_grads = _scores_and_grads(model, batch, share=False)
    shared, shared_grads = _scores_and_grads(model, batch, share=True)
    mask = batch.response_mask.bool()
    torch.testing.assert_close(shared.logp[mask], per_row.logp[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared.entropy[mask], per_row.entropy[mask], atol=1e-5, rtol=1e-5)
    assert shared_grads.keys() == per_row_grads.keys() and shared_grads
    for name, grad in per_row_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_entropy_with_gradient_equals_the_metric_and_the_direct_formula(tiny):
    """`entropy_grad=True` gives the detached metric's values, and its gradient is that of
    H = -sum p log p over the logits of one plain forward per row."""
    from tandemrl.algos.entropy import entropy_from_logits

    model = tiny.model
    batch = generate(model, tiny.tokenizer, PROMPTS, 2, SamplingConfig(5), seed=4)
    mask = batch.response_mask.bool()
    metric = score_tokens(model, batch, 0.7, with_entropy=True).entropy
    model.zero_grad()
    scored = score_tokens(model, batch, 0.7, entropy_grad=True).entropy
    assert scored.requires_grad and not metric.requires_grad
    torch.testing.assert_close(scored[mask], metric[mask], atol=1e-5, rtol=1e-5)
    (scored * batch.response_mask).sum().backward()
    via_scores = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ids = torch.cat([batch.prompt_ids, batch.response_ids], dim=1)
    attn = torch.cat([batch.prompt_mask, batch.response_mask], dim=1)
    logits = model(
        input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(-1) - 1).clamp(min=0)
    ).logits[:, batch.prompt_ids.shape[1] - 1 : -1]
    direct = entropy_from_logits(logits.float() / 0.7)
    (direct * batch.response_mask).sum().backward()
    assert via_scores
    for name, p in model.named_parameters():
        if name in via_scores:
            torch.testing.assert_close(via_scores[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)
    model.zero_grad()


def test_shared_prompt_scoring_under_overridden_prompts(tiny):
    """Policy Split / DuPO score responses under another context: sharing follows the prompts
    passed in, not the batch's own."""
    batch = generate(tiny.model, tiny.tokenizer, PROMPTS[:2], 2, SamplingConfig(5), seed=1)
    other_ids, other_mask = encode_prompts(tiny.tokenizer, [PROMPTS[2]] * 4)
    kw = {"prompt_ids": other_ids, "prompt_mask": other_mask}
    per_row, _ = _scores_and_grads(tiny.model, batch, share=False, **kw)
    shared, _ = _scores_and_grads(tiny.model, batch, share=True, **kw)
    own, _ = _scores_and_grads(tiny.model, batch, share=True)
    mask = batch.response_mask.bool()
    torch.testing.assert_close(shared.logp[mask], per_row.logp[mask], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(shared.logp[mask], own.logp[mask], atol=1e-3)


def test_shared_prompt_states_equal_per_row_with_gradients():
    """PPO's value head reads the decoder's states before each response token: the shared-prompt
    path must give the same states and the same LoRA gradients as one forward per row."""
    torch.manual_seed(0)
    loaded = load_model("tiny")
    model = apply_lora(loaded.model, LoraConfig(r=4, alpha=8))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    batch = generate(model, loaded.tokenizer, PROMPTS, 3, SamplingConfig(6), seed=2)
    batch = batch.select([0, 3, 6, 1, 4, 7, 2, 5, 8])
    decoder = model.get_base_model().get_decoder()
    # A unit-scale objective (head ~ 1/sqrt(H), mean over tokens): with a plain sum the
    # gradients reach ~1e3 and float32 reassociation alone exceeds atol 1e-5.
    head = torch.randn(decoder.config.hidden_size) / decoder.config.hidden_size**0.5
    results = []
    for share in (False, True):
        model.zero_grad()
        states = states_before_responses(
            decoder, batch.prompt_ids, batch.prompt_mask, batch.response_ids,
            batch.response_mask, share_prompts=share,
        )  # fmt: skip
        (((states @ head) * batch.response_mask).sum() / batch.response_mask.sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((states.detach(), grads))
    (per_row, per_row_grads), (shared, shared_grads) = results
    assert shared.shape == (len(batch), batch.response_ids.shape[1], decoder.config.hidden_size)
    mask = batch.response_mask.bool()
    torch.testing.assert_close(shared[mask], per_row[mask], atol=1e-5, rtol=1e-5)
    assert shared_grads.keys() == per_row_grads.keys() and shared_grads
    for name, grad in per_row_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def _generate_both_ways(model, tokenizer, ids, mask, do_sample, names=None):
    """`model.generate` from scratch and from `prefill_once`'s cache: (sequences, logits)."""
    cfg = GenerationConfig(
        max_new_tokens=8,
        do_sample=do_sample,
        eos_token_id=[tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id,
        output_logits=True,
        return_dict_in_generate=True,
    )
    outs = []
    with torch.no_grad():
        for prefill in ({}, prefill_once(model, ids, mask, names)):
            assert prefill or not outs  # the second pass must use a cache
            rows, extra = contextlib.nullcontext(), {}
            if names is not None:
                rows, extra = mixed_adapter_rows(model, names)
            torch.manual_seed(3)
            with rows:
                outs.append(
                    model.generate(
                        input_ids=ids,
                        attention_mask=mask,
                        generation_config=cfg,
                        **prefill,
                        **extra,
                    )
                )
    return outs


def _assert_same_generation(outs):
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    for per_row, shared in zip(outs[0].logits, outs[1].logits, strict=True):
        torch.testing.assert_close(shared, per_row, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("do_sample", [False, True])
def test_prefill_once_gives_the_same_tokens(tiny, do_sample):
    ids, mask = encode_prompts(tiny.tokenizer, PROMPTS)
    ids, mask = ids.repeat_interleave(4, 0), mask.repeat_interleave(4, 0)
    _assert_same_generation(_generate_both_ways(tiny.model, tiny.tokenizer, ids, mask, do_sample))
    distinct_ids, distinct_mask = encode_prompts(tiny.tokenizer, PROMPTS)
    assert prefill_once(tiny.model, distinct_ids, distinct_mask) == {}


def test_prefill_once_keeps_each_rows_adapter(tiny):
    """DuPO decodes both policies' rows in one batch: a prompt's prefill is shared only among
    rows of the same adapter, and each runs through its own adapter."""
    model = apply_lora_adapters(
        load_model("tiny").model, LoraConfig(r=4, alpha=8), ["first", "second"]
    )
    with torch.no_grad():  # make the two adapters (and the base) differ
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    order = [
        (0, "first"),
        (0, "first"),
        (1, "first"),
        (0, "second"),
        (1, "second"),
        (1, "second"),
        (0, "__base__"),
    ]
    ids, mask = encode_prompts(tiny.tokenizer, [PROMPTS[i] for i, _ in order])
    names = [name for _, name in order]
    outs = _generate_both_ways(model, tiny.tokenizer, ids, mask, False, names)
    _assert_same_generation(outs)
    # Rows 0 and 3 share a prompt but not an adapter: a shared prefill would make them equal.
    assert not torch.allclose(outs[1].logits[0][0], outs[1].logits[0][3], atol=1e-3)
