"""Data parallelism: 2 gloo processes on CPU make the update 1 process makes on the same
global batch (GRPO and DuPO); a `torchrun` launch of `tandem train` writes from rank 0 only."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tandemrl.runtime import distributed as dist
from tests import dist_worker
from tests.threads import one_torch_thread

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def one_and_two_processes(tmp_path_factory):
    with one_torch_thread():  # module-scoped: runs before the one_thread fixture
        batches = {name: dist_worker.global_batch(name) for name in dist_worker.CONFIGS}
        single = {name: dist_worker.run_steps(name, b) for name, b in batches.items()}
    out = tmp_path_factory.mktemp("dist") / "rank0.pt"
    mp.spawn(dist_worker.rank_main, args=(2, _free_port(), batches, str(out)), nprocs=2, join=True)
    return single, torch.load(out, weights_only=False)


@pytest.mark.parametrize(
    ("name", "keys"),
    [
        ("grpo", ["loss", "grad_norm", "kl", "reward/mean"]),
        (
            "dupo",
            [
                "loss",
                "explore/loss",
                "exploit/loss",
                "explore/grad_norm",
                "exploit/grad_norm",
                "explore/lr_scale",
                "exploit/lr_scale",
            ],
        ),  # fmt: skip
        (
            "dipo",
            ["loss", "grad_norm", "reward/mean", "dipo/ppl_mean", "dipo/valid", "dipo/threshold"],
        ),
    ],
)
def test_two_ranks_make_the_single_process_update(one_and_two_processes, name, keys):
    single, double = one_and_two_processes
    one, two = single[name], double[name]
    for step, (m1, m2) in enumerate(zip(one["metrics"], two["metrics"], strict=True)):
        for key in keys:
            assert m2[key] == pytest.approx(m1[key], rel=1e-5, abs=1e-7), (step, key)
        # grad_norm is taken before clipping: a mean instead of a sum over ranks halves it
        norms = [v for k, v in m1.items() if k.endswith("grad_norm")]
        assert norms and all(v > 1e-4 for v in norms)
    if name == "dupo":  # the interactions the test means to cover did happen
        assert one["metrics"][0]["explore/shared_count"] > 0
        assert (
            two["metrics"][0]["explore/shared_count"] == one["metrics"][0]["explore/shared_count"]
        )
    start, _ = dist_worker.build(name)
    initial = {n: p for n, p in start.policy.named_parameters() if "lora_" in n}
    moved = max((one["params"][k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-4
    for key, value in one["params"].items():
        # SGD (dist_worker.use_sgd): parameters move by lr x the reduced gradient, so they
        # agree to float reassociation of that gradient; a mean instead of a sum over ranks,
        # or a rank's gradient left out, moves them by ~the size of the update (>1e-4).
        torch.testing.assert_close(two["params"][key], value, atol=1e-6, rtol=1e-5)


def test_metrics_combine_by_kind():
    assert dist.reduce_metric("explore/loss", [0.25, 0.5]) == 0.75
    assert dist.reduce_metric("reward/correct/errors", [1.0, 2.0]) == 3.0
    assert dist.reduce_metric("time/step_s", [1.0, 3.0]) == 3.0
    assert dist.reduce_metric("reward/mean", [0.2, 0.4, math.nan]) == pytest.approx(0.3)
    assert math.isnan(dist.reduce_metric("kl", [math.nan, math.nan]))


def test_torchrun_launch_writes_from_rank_zero_only(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "tandemrl.cli", "train", "model=tiny",
           "task=arith2", "steps=2", f"output_dir={out}", "eval.before=false",
           "eval.after=false", "rollout.prompts_per_step=4", "rollout.max_new_tokens=6",
           "log.progress=false", "checkpoint.every=1"]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("loading model tiny on 2 processes") == 1  # rank 0 logs
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001", "step-000002"]
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2


def test_prompts_must_split_over_ranks(monkeypatch):
    monkeypatch.setattr(dist, "world_size", lambda: 3)
    from tandemrl.errors import ConfigError

    with pytest.raises(ConfigError, match=r"prompts_per_step=4 does not split over 3 processes"):
        dist.shard(list(range(4)))
