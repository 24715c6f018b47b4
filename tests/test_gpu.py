"""On a CUDA device (`make gpu-check`; skipped without one): every method trains there in
bf16-mixed, an fp32 update on the GPU equals the CPU's on the same batch, sampling is seeded
and hands back a CPU batch, and bf16-mixed keeps fp32 weights and optimizer state there."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from tandemrl.cli import main
from tandemrl.models import load_model
from tandemrl.rollout import SamplingConfig, generate
from tests import dist_worker, golden_runs

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("name", sorted(golden_runs.RUNS))
def test_every_method_trains_on_cuda_in_bf16_mixed(tmp_path, name):
    out = tmp_path / name
    args = [*golden_runs.COMMON, *golden_runs.RUNS[name], "steps=2", "device=cuda",
            "precision=bf16-mixed", f"output_dir={out}"]  # fmt: skip
    assert main(["train", *args]) == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2
    for record in records:
        assert math.isfinite(record["loss"])
        assert record["memory/peak_gpu_mb"] > 0


def test_an_fp32_update_on_cuda_equals_the_cpu_one():
    keys = ["method=grpo", "optim.lr=1e-2", "grpo.kl_coef=0.05", "lora.enabled=false",
            "precision=fp32"]  # fmt: skip
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu, examples = dist_worker.build("gpu", keys=keys)
    batch = cpu.rollout(0, examples)
    results = {}
    for device in ("cpu", "cuda"):
        method, examples = dist_worker.build("gpu", keys=[*keys, f"device={device}"])
        method.rollout = lambda step, ex: copy.deepcopy(batch)
        metrics = method.step(0, examples)
        params = {n: p.detach().cpu() for n, p in method.policy.named_parameters()}
        results[device] = (metrics, params)
        assert next(method.policy.parameters()).device.type == device
    (m_cpu, p_cpu), (m_gpu, p_gpu) = results["cpu"], results["cuda"]
    for key in ("loss", "grad_norm", "kl", "reward/mean"):
        assert m_gpu[key] == pytest.approx(m_cpu[key], rel=1e-4, abs=1e-6), key
    for name, value in p_cpu.items():
        torch.testing.assert_close(p_gpu[name], value, atol=1e-5, rtol=1e-4, msg=name)


def test_sampling_on_cuda_is_seeded_and_returns_a_cpu_batch():
    loaded = load_model("tiny")
    model = loaded.model.to("cuda")
    prompts = [[{"role": "user", "content": f"count to {i}"}] for i in range(3)]
    draws = [
        generate(model, loaded.tokenizer, prompts, 4, SamplingConfig(12, 1.0), seed=7)
        for _ in range(2)
    ]
    assert draws[0].response_ids.device.type == "cpu"
    assert torch.equal(draws[0].response_ids, draws[1].response_ids)


def test_bf16_mixed_on_cuda_keeps_fp32_weights_and_optimizer_state():
    keys = ["method=grpo", "optim.lr=1e-2", "lora.enabled=false", "device=cuda",
            "precision=bf16-mixed"]  # fmt: skip
    method, examples = dist_worker.build("gpu", sgd=False, keys=keys)
    metrics = method.step(0, examples)
    assert math.isfinite(metrics["loss"])
    assert all(p.dtype == torch.float32 and p.is_cuda for p in method.policy.parameters())
    for state in method.update_engine.optimizers["policy"].state.values():
        assert state["exp_avg"].dtype == torch.float32 and state["exp_avg"].is_cuda
