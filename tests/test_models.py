"""Model loading and LoRA: the reference policy is the same weights with adapters off."""

from __future__ import annotations

import pytest
import torch

from tandemrl.models import LoraConfig, apply_lora, load_model, reference_mode
from tandemrl.models.loading import ModelLoadError


def test_tiny_is_deterministic_and_small():
    a, b = load_model("tiny"), load_model("tiny")
    assert len(a.tokenizer) < 300
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    text = "Answer: 42 ünï"
    ids = a.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert a.tokenizer.decode(ids) == text


def test_lora_reference_is_base_without_a_second_copy():
    loaded = load_model("tiny")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        base_logits = loaded.model(input_ids=ids).logits.clone()
    n_base = sum(p.numel() for p in loaded.model.parameters())
    policy = apply_lora(loaded.model, LoraConfig(r=4, alpha=8))
    trainable = [p for p in policy.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in policy.named_parameters() if p.requires_grad)
    # Only adapter weights are added: the base weights are not duplicated.
    n_total = sum(p.numel() for p in policy.parameters())
    assert n_total - n_base == sum(p.numel() for p in trainable)
    with torch.no_grad():
        for p in trainable:
            p.add_(0.5)
        moved = policy(input_ids=ids).logits
        with reference_mode(policy):
            ref = policy(input_ids=ids).logits
    assert not torch.allclose(moved, base_logits, atol=1e-4)
    torch.testing.assert_close(ref, base_logits)


def test_top_layers_only_adapts_the_upper_layers():
    policy = apply_lora(load_model("tiny").model, LoraConfig(r=4, top_layers=1))
    adapted = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert adapted and all(".layers.1." in n for n in adapted)


def test_unknown_model_error_suggests():
    with pytest.raises(ModelLoadError, match="did you mean 'tiny'"):
        load_model("tinny")
