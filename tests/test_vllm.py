"""The vLLM rollout engine (`rollout.engine=vllm`) against the HF engine on SmolLM2.

Each scenario runs once in its own process (tests/vllm_worker.py says why) and these tests
check what it found. Skipped where vllm is not installed (`make setup-vllm` installs it; `make
test` does). What is checked, and the tolerance:
- greedy decoding gives the same token ids as HF `generate`: base model, two LoRA adapters
  served merged and as LoRA adapters, and the policy after training steps;
- one-token sampling frequencies: each of the 8 likeliest tokens within 4.5 standard errors of
  the exact probability, for both engines (a false alarm has probability < 1e-4 per token);
  top-p never draws outside the nucleus;
- the engine's sampling log-probs equal the trainer's within 1e-3 (measured: 1e-5 mean);
- weights are pushed when they changed, and only then: after an in-place edit the engine
  follows the edit, and after a GRPO update the engine's log-probs match the updated policy
  while the pre-update policy is far (a skipped push would show the latter).
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tandemrl.rollout.vllm_engine import vllm_available

pytestmark = pytest.mark.skipif(not vllm_available(), reason="vllm is not installed")

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_SE = 4.5  # standard errors a sampled frequency may sit from its exact probability
LOGP_TOL = 1e-3  # engine vs trainer log-probs of the same tokens (fp32 both)


@functools.cache
def scenario(name: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.vllm_worker", name],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_same_greedy(found: dict) -> None:
    assert found["vllm"] == found["hf"]
    assert found["same_ids"]


def test_greedy_equals_hf_generate_on_the_base_model():
    assert_same_greedy(scenario("base")["greedy"])


def test_sampled_frequencies_match_the_exact_probabilities():
    freq = scenario("base")["frequencies"]
    n = freq["n"]
    for engine in ("hf", "vllm"):
        for p, f in zip(freq["p"], freq[engine], strict=True):
            assert abs(f - p) <= SAMPLE_SE * math.sqrt(p * (1 - p) / n), (engine, p, f)
    assert freq["top_p_outside"] == [] and freq["nucleus_size"] >= 2


def test_engine_log_probs_equal_the_trainers_and_seeds_repeat():
    gap = scenario("base")["gap"]
    assert gap["gap_max"] < LOGP_TOL
    assert gap["same_seed_same"] and gap["other_seed_differs"]
    assert gap["distinct"] > 12  # 24 samples of 6 prompts at T=1 are not all alike


def test_weights_are_pushed_when_they_change_and_only_then():
    base = scenario("base")
    assert base["pushes_unchanged"] == 0
    assert base["pushes_after_edit"] == 1
    assert_same_greedy(base["after_edit"])
    # the edit changed what the model says, so equal outputs mean the engine has the edit
    assert base["after_edit"]["hf"] != base["greedy"]["hf"]


@pytest.mark.parametrize("mode", ["merge", "adapter"])
def test_two_adapters_in_one_call_each_sample_their_own(mode):
    found = scenario(f"lora-{mode}")
    assert_same_greedy(found["greedy"])
    hf = found["greedy"]["hf"]
    assert hf[0::2] != hf[1::2]  # the two adapters do answer differently
    # after an update of the exploiter alone, the engine serves it updated and the explorer
    # as it was
    after = found["after_edit"]
    assert_same_greedy(after)
    assert after["hf"][0::2] == hf[0::2] and after["hf"][1::2] != hf[1::2]
    if mode == "merge":  # one push per adapter and call
        assert found["pushes"] == 4
    else:  # the frozen base once; only the changed adapter is loaded again, under a new id
        assert found["pushes"] == 1
        before, now = found["lora_ids_before"], found["lora_ids_after"]
        assert now["explore"] == before["explore"] and now["exploit"] != before["exploit"]


def test_grpo_samples_from_the_updated_weights():
    found = scenario("grpo")
    records = found["records"]
    assert all(r["grad_norm"] > 0 for r in records)
    for r in records:
        assert r["rollout/logprob_diff_max"] < LOGP_TOL
        assert r["rollout/tis_weight_mean"] == pytest.approx(1.0, abs=1e-3)
    # the policy before the last update is far from what the engine sampled with
    assert found["stale_gap"] > 100 * records[-1]["rollout/logprob_diff_mean"]
    assert_same_greedy(found["greedy"])


def test_dupo_trains_with_both_policies_on_one_engine():
    found = scenario("dupo")
    assert len(found["records"]) == 2
    assert all(math.isfinite(r["loss"]) for r in found["records"])
    assert_same_greedy(found["greedy"])
    assert found["pushes"] >= 4  # both adapters, merged one after the other, each step
