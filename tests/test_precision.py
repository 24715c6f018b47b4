"""Where a run computes: device resolution, mixed precision (bf16-mixed keeps fp32 master
weights and fp32 optimizer state; its loss stays within a stated tolerance of fp32's),
bf16 weights, gradient checkpointing (the same update, computed again), and batches that
move between devices."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tandemrl.errors import ConfigError
from tandemrl.rollout import RolloutBatch, score_tokens
from tandemrl.rollout.logprobs import can_share_prompts
from tandemrl.runtime.device import resolve_compute
from tests import dist_worker

pytestmark = pytest.mark.usefixtures("one_thread")

# GRPO with two updates a step (the second one's ratio is not 1, so the loss depends on the
# forward's precision) and a KL term.
BASE = ["method=grpo", "optim.lr=1e-2", "lora.enabled=false", "device=cpu",
        "grpo.kl_coef=0.05", "grpo.ppo_epochs=2"]  # fmt: skip
# bf16 keeps 8 bits of mantissa: logits off by ~1e-2 relative; measured on the tiny model the
# loss moves by ~1e-4 and the gradient norm by ~0.1 %.
LOSS_ATOL = 2e-3
GRAD_NORM_RTOL = 0.02


def build(*keys: str, sgd: bool = False):
    return dist_worker.build("precision", sgd=sgd, keys=[*BASE, *keys])


@pytest.fixture(scope="module")
def fixed_batch():
    method, examples = build("precision=fp32")
    return method.rollout(0, examples)


def one_step(batch: RolloutBatch, *keys: str, sgd: bool = False):
    method, examples = build(*keys, sgd=sgd)
    method.rollout = lambda step, ex: copy.deepcopy(batch)
    return method, method.step(0, examples)


def test_bf16_mixed_keeps_fp32_weights_and_optimizer_state_near_fp32_loss(fixed_batch):
    _, fp32 = one_step(fixed_batch, "precision=fp32")
    method, mixed = one_step(fixed_batch, "precision=bf16-mixed")
    assert method.compute.precision == "bf16-mixed"
    assert all(p.dtype == torch.float32 for p in method.policy.parameters())
    states = list(method.update_engine.optimizers["policy"].state.values())
    assert states and all(
        s["exp_avg"].dtype == torch.float32 and s["exp_avg_sq"].dtype == torch.float32
        for s in states
    )
    assert mixed["loss"] == pytest.approx(fp32["loss"], abs=LOSS_ATOL)
    assert mixed["kl"] == pytest.approx(fp32["kl"], abs=LOSS_ATOL)
    assert mixed["grad_norm"] == pytest.approx(fp32["grad_norm"], rel=GRAD_NORM_RTOL)
    # ...and the forward did run in bf16 (an autocast that never engaged would match exactly)
    assert mixed["loss"] != fp32["loss"] and mixed["grad_norm"] != fp32["grad_norm"]


def test_log_probs_are_fp32_under_autocast(fixed_batch):
    method, _ = build("precision=bf16-mixed")
    with method.compute.autocast():
        scores = score_tokens(method.policy, fixed_batch, 1.0, with_entropy=True)
    exact = score_tokens(method.policy, fixed_batch, 1.0)
    assert scores.logp.dtype == torch.float32 and scores.entropy.dtype == torch.float32
    mask = fixed_batch.response_mask.bool()
    diff = (scores.logp - exact.logp)[mask].abs()
    assert 0 < diff.mean() < 0.05


def test_bf16_stores_the_weights_in_bf16(fixed_batch):
    method, metrics = one_step(fixed_batch, "precision=bf16")
    assert all(p.dtype == torch.bfloat16 for p in method.policy.parameters())
    assert metrics["update_skipped"] == 0 and metrics["grad_norm"] > 0


def test_gradient_checkpointing_makes_the_same_update(fixed_batch):
    # SGD: parameters compare as tightly as gradients (see dist_worker.use_sgd)
    plain, off = one_step(fixed_batch, "gradient_checkpointing=false", sgd=True)
    method, on = one_step(fixed_batch, "gradient_checkpointing=true", sgd=True)
    assert method.compute.gradient_checkpointing and not plain.compute.gradient_checkpointing
    model = method.run.loaded.model
    # transformers 5.20 renamed is_gradient_checkpointing to is_activation_checkpointing
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    for key in ("loss", "grad_norm", "kl"):
        assert on[key] == pytest.approx(off[key], rel=1e-5, abs=1e-7), key
    for (name, a), (_, b) in zip(
        method.policy.named_parameters(), plain.policy.named_parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    # Hugging Face turns the cache off under checkpointing in training: no prompt sharing then
    method.policy.train()
    assert not can_share_prompts(method.policy)
    method.policy.eval()
    assert can_share_prompts(method.policy)


def test_devices_resolve_or_fail_in_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    auto = resolve_compute("auto", "auto", None)
    assert auto.device.type in ("cpu", "mps") and auto.precision == "fp32"
    assert auto.gradient_checkpointing == (auto.device.type != "cpu")
    assert resolve_compute("cpu", "bf16-mixed", None).precision == "bf16-mixed"
    with pytest.raises(ConfigError, match="device=cuda: this torch build or machine has no CUDA"):
        resolve_compute("cuda", "auto", None)
    with pytest.raises(ConfigError, match="is not a device"):
        resolve_compute("gpu0", "auto", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    gpu = resolve_compute("auto", "auto", None)
    assert gpu.device == torch.device("cuda", 1)  # under torchrun, each rank its own GPU
    assert gpu.precision == "bf16-mixed" and gpu.gradient_checkpointing
    with pytest.raises(ConfigError, match="there are 2 CUDA devices"):
        resolve_compute("cuda:2", "auto", None)


@dataclass
class Extra:
    flags: torch.Tensor


def test_a_batch_moves_with_its_per_row_tensors(fixed_batch):
    assert fixed_batch.to("cpu") is fixed_batch  # nothing to move: no copy
    batch = copy.deepcopy(fixed_batch)
    batch.per_row = Extra(torch.ones(len(batch)))
    batch.advantages = torch.zeros(len(batch))
    moved = batch.to("meta")
    assert moved.response_ids.device.type == "meta" and moved.advantages.is_meta
    assert moved.per_row.flags.is_meta and batch.per_row.flags.device.type == "cpu"
    assert moved.completions == batch.completions and moved.rewards is None


def test_the_gpu_check_script_runs_here_on_the_cpu(tmp_path):
    """scripts/gpu_check.py is what `make gpu-check` runs on a GPU; on the CPU with the tiny
    model it must go through every setting and write its figures (so it cannot rot unseen)."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu-check.json"
    cmd = [sys.executable, str(root / "scripts" / "gpu_check.py"), "--device", "cpu",
           "--model", "tiny", "--steps", "2", "--out", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result["settings"]) == {
        "lora bf16-mixed ckpt",
        "full bf16-mixed ckpt",
        "full bf16-mixed",
        "full fp32",
    }
    for setting in result["settings"].values():
        assert setting["steps"] == 2 and setting["finite_loss"] and setting["median_step_s"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_missing_device_fails_when_the_config_loads():
    from tandemrl.loop import load_config

    with pytest.raises(ConfigError, match="device=cuda: this torch build or machine has no CUDA"):
        load_config(None, ["model=tiny", "device=cuda"])
