"""What a separate rollout engine adds without running one: the served weights (LoRA merged,
checkpoint names), when they count as changed, the engine-vs-trainer log-prob gap and its
truncated importance-sampling correction (hand-computed), and the config errors."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import tests.toy_task  # noqa: F401  (registers toy_letters)
from tandemrl.algos import LossNormalizer, logprob_gap_metrics
from tandemrl.errors import ConfigError
from tandemrl.loop import load_config
from tandemrl.methods import RunContext, get_method_class
from tandemrl.methods.objective import ClippedObjective, EngineLogp
from tandemrl.models import load_model
from tandemrl.models.adapters import LoraConfig, adapter_parameters, apply_lora_adapters
from tandemrl.models.serving import BASE_ADAPTER, serving_weights, weights_version
from tandemrl.tasks import get_task


def test_gap_metrics_by_hand():
    trainer = torch.tensor([[-1.0, -2.0, -3.0]])
    engine = torch.tensor([[-1.1, -2.0, -2.5]])
    mask = torch.tensor([[1, 1, 0]])  # the third token (gap 0.5) is padding
    m = logprob_gap_metrics(trainer, engine, mask, cap=1.05)
    assert m["rollout/logprob_diff_mean"] == pytest.approx(0.05, abs=1e-6)
    assert m["rollout/logprob_diff_max"] == pytest.approx(0.1, abs=1e-6)
    # weights min(e^0.1, 1.05) = 1.05 and e^0 = 1
    assert m["rollout/tis_weight_mean"] == pytest.approx(1.025, abs=1e-6)
    assert m["rollout/tis_capped_frac"] == pytest.approx(0.5)
    assert "rollout/tis_weight_mean" not in logprob_gap_metrics(trainer, engine, mask)


def test_tis_weights_each_tokens_advantage():
    logp = torch.tensor([[-1.0, -1.0], [-2.0, -2.0]], requires_grad=True)
    old = logp.detach().clone()  # ratio 1: the first update of a step
    engine = torch.tensor([[-1.5, -1.0], [-2.0, -1.0]])
    adv, mask = torch.tensor([1.0, -2.0]), torch.ones(2, 2)
    norm = LossNormalizer(num_tokens=4.0, num_sequences=2.0)
    objective = ClippedObjective()
    plain = objective.policy_loss(logp, old, adv, mask, norm, engine=EngineLogp(engine))
    assert plain.loss.item() == pytest.approx(0.5)  # -(1 + 1 - 2 - 2) / 4, no correction
    assert plain.metrics["rollout/logprob_diff_max"] == pytest.approx(1.0)
    fixed = objective.policy_loss(logp, old, adv, mask, norm, engine=EngineLogp(engine, 2.0))
    # w = min(exp(old - engine), 2): e^0.5, 1 | 1, e^-1
    w = torch.tensor([[math.exp(0.5), 1.0], [1.0, math.exp(-1.0)]])
    expected = -(adv[:, None] * w).sum() / 4
    assert fixed.loss.item() == pytest.approx(expected.item(), abs=1e-6)
    (grad,) = torch.autograd.grad(fixed.loss, logp)
    assert torch.allclose(grad, -(adv[:, None] * w) / 4, atol=1e-6)
    capped = objective.policy_loss(logp, old, adv, mask, norm, engine=EngineLogp(engine, 1.2))
    assert capped.metrics["rollout/tis_capped_frac"] == pytest.approx(0.25)  # e^0.5 > 1.2


@pytest.fixture(scope="module")
def two_adapters():
    torch.manual_seed(0)
    model = apply_lora_adapters(load_model("tiny").model, LoraConfig(r=4), ["first", "second"])
    with torch.no_grad():
        for name in ("first", "second"):
            for key, p in adapter_parameters(model, name).items():
                if "lora_B" in key:
                    p.normal_(0, 0.1)
    return model


def test_served_weights_are_the_merged_model_in_checkpoint_names(two_adapters):
    plain_names = set(load_model("tiny").model.state_dict())
    before = {k: v.clone() for k, v in two_adapters.state_dict().items()}
    for adapter in ("first", "second"):
        merged_model = copy.deepcopy(two_adapters)
        merged_model.set_adapter(adapter)
        expected = merged_model.merge_and_unload().state_dict()
        served = dict(serving_weights(two_adapters, adapter))
        assert set(served) == plain_names == set(expected)
        for name, tensor in served.items():
            assert torch.allclose(tensor, expected[name], atol=1e-6), name
    base = dict(serving_weights(two_adapters, BASE_ADAPTER))
    merged_a = dict(serving_weights(two_adapters, "first"))
    q = next(n for n in base if n.endswith("q_proj.weight"))
    assert not torch.equal(base[q], merged_a[q])
    for key, value in two_adapters.state_dict().items():  # the module itself is untouched
        assert torch.equal(value, before[key]), key


def test_weights_version_moves_with_an_update_only(two_adapters):
    v0 = weights_version(two_adapters)
    first, second = weights_version(two_adapters, "first"), weights_version(two_adapters, "second")
    with torch.no_grad():
        two_adapters(torch.tensor([[1, 2, 3]]))
    assert weights_version(two_adapters) == v0
    params = [p for p in two_adapters.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    two_adapters(torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    opt.zero_grad()
    assert weights_version(two_adapters) != v0
    # only the active adapter ("first") trains: the other's served weights did not change
    assert weights_version(two_adapters, "first") != first
    assert weights_version(two_adapters, "second") == second


@pytest.mark.parametrize(
    "keys, fragment",
    [
        (["rollout.tis_cap=2"], "rollout.engine=vllm or leave"),
        (["rollout.engine=vllm", "rollout.tis_cap=0.5"], "tis_cap must be >= 1"),
        (["rollout.engine=vllm", "distributed.strategy=fsdp2"], "not supported yet"),
        (["rollout.engine=vllm", "vllm.gpu_memory_share=0"], "gpu_memory_share"),
    ],
)
def test_engine_settings_are_checked(monkeypatch, keys, fragment):
    monkeypatch.setattr("tandemrl.rollout.vllm_engine.vllm_available", lambda: True)
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, ["model=tiny", *keys])


def test_a_missing_vllm_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr("tandemrl.rollout.vllm_engine.vllm_available", lambda: False)
    with pytest.raises(ConfigError, match="make setup-vllm"):
        load_config(None, ["model=tiny", "rollout.engine=vllm"])


def test_a_method_that_cannot_correct_refuses_tis(monkeypatch):
    monkeypatch.setattr("tandemrl.rollout.vllm_engine.vllm_available", lambda: True)
    keys = ["model=tiny", "task=toy_letters", "method=policy_split", "rollout.engine=vllm",
            "rollout.tis_cap=2"]  # fmt: skip
    cfg = load_config(None, keys)
    run = RunContext(cfg, load_model("tiny"), get_task("toy_letters"))
    with pytest.raises(ConfigError, match="policy_split does not correct"):
        get_method_class("policy_split")(run)
