"""The extension examples in examples/ run as documented (docs/architecture.md): a new
advantage estimator by import path, and a whole new method by import path."""

from __future__ import annotations

import pytest
import torch
import yaml

from examples.custom_advantage import median_baseline
from tandemrl.loop import load_config
from tests.runs import train_tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def test_median_baseline_by_hand():
    nan = float("nan")
    rewards = torch.tensor([1.0, 0.0, 0.0, 5.0, 2.0, nan, 7.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    result = median_baseline(rewards, groups)
    # group 0: torch's median of [0, 0, 1, 5] is the lower middle value, 0
    # group 1: one answered row -> 0; group 2: a group of one -> 0
    torch.testing.assert_close(result.advantages, torch.tensor([1.0, 0, 0, 5, 0, 0, 0]))
    assert result.keep.tolist() == [True] * 5 + [False, True]


def test_custom_advantage_trains_through_grpo(tmp_path):
    records = train_tiny(
        tmp_path / "run", "task=toy_letters", "steps=2", "rollout.prompts_per_step=2",
        "rollout.max_new_tokens=6", "grpo.advantage=examples.custom_advantage:median_baseline",
        "grpo.advantage_options={}",
    )  # fmt: skip
    assert len(records) == 2 and all(r["grad_norm"] > 0 for r in records)


def test_custom_method_runs_with_its_own_section_and_resumes(tmp_path):
    method = "method=examples.custom_method:RunningBaseline"
    args = ["task=toy_letters", "rollout.prompts_per_step=2", "rollout.max_new_tokens=6",
            "reinforce.momentum=0.5", "checkpoint.every=1"]  # fmt: skip
    cfg = load_config(None, ["model=tiny", method, *args])
    assert cfg.method_config.momentum == 0.5 and cfg.to_dict()["reinforce"] == {"momentum": 0.5}
    full = train_tiny(tmp_path / "full", method, *args, "steps=3")
    # b_1 = mean reward of step 1, then b <- 0.5 b + 0.5 mean
    b1 = full[0]["reward/mean"]
    assert full[0]["reinforce/baseline"] == pytest.approx(b1, rel=1e-5)
    assert full[1]["reinforce/baseline"] == pytest.approx(0.5 * b1 + 0.5 * full[1]["reward/mean"])
    assert all(r["grad_norm"] > 0 for r in full)
    saved = yaml.safe_load((tmp_path / "full" / "config.yaml").read_text())
    assert saved["method"] == "examples.custom_method:RunningBaseline"
    assert saved["reinforce"] == {"momentum": 0.5}
    # the baseline is checkpointed: step 3 resumed from step 2 logs the same baseline
    cut = tmp_path / "cut"
    ckpt = tmp_path / "full" / "checkpoints" / "step-000002"
    resumed = train_tiny(cut, method, *args, "steps=3", f"resume={ckpt}")
    assert resumed[-1]["reinforce/baseline"] == pytest.approx(full[2]["reinforce/baseline"])
