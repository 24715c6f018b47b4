"""FSDP2 (`distributed.strategy=fsdp2`) on CPU with gloo: 2 sharded ranks make the update
1 process makes on the same global batch (GRPO full fine-tuning and LoRA), and a sharded
checkpoint written by 2 ranks resumes in 1 process, exports and evaluates."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tandemrl.loop.checkpoint import load_policy_weights, load_trainer_state, verify_checkpoint
from tandemrl.models import load_model
from tests import dist_worker
from tests.test_distributed import _free_port
from tests.threads import one_torch_thread

ROOT = Path(__file__).resolve().parents[1]
NAMES = list(dist_worker.FSDP2_CONFIGS)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process, two sharded ranks (with a checkpoint after step 1), and one process
    resuming that checkpoint, all on the same fixed global batches."""
    tmp = tmp_path_factory.mktemp("fsdp2")
    with one_torch_thread():
        batches = {name: dist_worker.global_batch(name) for name in NAMES}
        single = {name: dist_worker.run_steps(name, b) for name, b in batches.items()}
    out = tmp / "rank0.pt"
    args = (2, _free_port(), batches, str(out), str(tmp / "runs"))
    mp.spawn(dist_worker.rank_main, args=args, nprocs=2, join=True)
    double = torch.load(out, weights_only=False)
    with one_torch_thread():
        resumed = {
            name: dist_worker.resume_then_step(
                name, batches[name], double[f"{name}/checkpoint"]["checkpoint"]
            )
            for name in NAMES
        }
    return single, double, resumed


@pytest.mark.parametrize("name", NAMES)
def test_two_sharded_ranks_make_the_single_process_update(runs, name):
    single, double, _ = runs
    one, two = single[name], double[name]
    assert two["held"] == pytest.approx(0.5, abs=0.02)  # each rank holds half the weights
    assert one["held"] == 1.0
    for step, (m1, m2) in enumerate(zip(one["metrics"], two["metrics"], strict=True)):
        for key in ("loss", "grad_norm", "kl", "reward/mean"):
            assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-7), (step, key)
        assert m1["grad_norm"] > 1e-4 and m1["update_skipped"] == 0
    start, _ = dist_worker.build(name)
    initial = {n: p.detach() for n, p in start.policy.named_parameters() if p.requires_grad}
    assert set(initial) == set(one["params"]) == set(two["params"])
    moved = max((one["params"][k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-4
    for key, value in one["params"].items():
        # SGD: parameters move by lr x the reduced gradient. FSDP2 averages gradients over
        # ranks; without the world-size loss scale they would move by half (off by ~1e-3).
        torch.testing.assert_close(two["params"][key], value, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_sharded_checkpoint_of_two_ranks_resumes_in_one_process(runs, name):
    _, double, resumed = runs
    written, back = double[f"{name}/checkpoint"], resumed[name]
    ckpt = Path(written["checkpoint"])
    verify_checkpoint(ckpt)
    shards = sorted(p.name for p in (ckpt / "sharded").glob("*.distcp"))
    assert len(shards) == 2  # one file per rank
    assert load_trainer_state(ckpt)["method"]["update_engine"]["optimizers"] is None
    assert back["step"] == 1 and back["position"] == 4
    for key, value in written["saved"]["params"].items():
        torch.testing.assert_close(back["loaded"]["params"][key], value, atol=0, rtol=0)
    saved, loaded = written["saved"]["moments"], back["loaded"]["moments"]
    assert set(saved) == set(loaded) and saved
    for key in saved:
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(loaded[key][moment], saved[key][moment], atol=0, rtol=0)
    nxt, ref = back["next"], written["next"]
    for key in ("loss", "grad_norm", "kl", "reward/mean", "lr"):
        assert nxt[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize("name", NAMES)
def test_sharded_checkpoint_loads_as_one_model(runs, name):
    _, double, _ = runs
    written = double[f"{name}/checkpoint"]
    model = load_policy_weights(load_model("tiny").model, Path(written["checkpoint"]))
    got = dict(model.named_parameters())
    for key, value in written["saved"]["params"].items():
        torch.testing.assert_close(got[key], value, atol=0, rtol=0)


def test_torchrun_fsdp2_trains_saves_and_resumes_in_one_process(tmp_path):
    out = tmp_path / "run"
    common = ["model=tiny", "task=arith2", f"output_dir={out}", "eval.before=false",
              "eval.size=4", "rollout.prompts_per_step=4", "rollout.max_new_tokens=6",
              "log.progress=false", "checkpoint.every=1", "distributed.strategy=fsdp2",
              "lora.enabled=true"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "tandemrl.cli", "train", "steps=2",
           *common]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and "eval/after" in summary
    ckpt = out / "checkpoints" / "step-000002"
    assert (ckpt / "sharded").is_dir() and (ckpt / "policy" / "adapter_config.json").is_file()
    again = [sys.executable, "-m", "tandemrl.cli", "train", "steps=3", "resume=auto", *common]
    proc = subprocess.run(again, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and "(step 2 of 3)" in proc.stderr
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    export = tmp_path / "export"
    cmd = [sys.executable, "-m", "tandemrl.cli", "export", f"checkpoint={out / 'checkpoints' / 'step-000003'}",
           f"out={export}", "merged=true"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (export / "config.json").is_file()
