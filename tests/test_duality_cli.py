"""`reward=duality` in a real (tiny-model) training run and `tandem rerank` end to end."""

from __future__ import annotations

import json

import pytest

from tandemrl.cli import main
from tests.runs import train_tiny

DUAL_METRICS = {
    "reward/duality/mean",
    "dual/generate_s",
    "dual/samples",
    "dual/prompts",
    "dual/samples_per_response",
    "dual/unparsed_frac",
}


def test_duality_reward_trains_with_grpo_and_logs_its_cost(tmp_path):
    out = tmp_path / "run"
    lines = train_tiny(
        out, "method=grpo", "task=arith2", "reward=duality", "steps=2",
        "rollout.prompts_per_step=2", "rollout.max_new_tokens=8", "duality.max_new_tokens=4",
    )  # fmt: skip
    assert len(lines) == 2
    for rec in lines:
        assert rec.keys() >= DUAL_METRICS
        assert "reward/correct/mean" not in rec  # no gold reward
        # One greedy reconstruction per dual prompt; at most 2 questions x 4 answers x 2 prompts.
        assert rec["dual/samples"] == rec["dual/prompts"] <= 16
        assert rec["dual/samples_per_response"] == rec["dual/samples"] / 8
        assert rec["time/reward_s"] >= rec["dual/generate_s"]
    assert "reward: duality" in (out / "config.yaml").read_text()


def test_rerank_reports_three_picks_over_the_same_candidates(tmp_path, capsys):
    out = tmp_path / "rr"
    code = main(
        [
            "rerank",
            "model=tiny",
            "task=arith2",
            "eval.size=3",
            "n=3",
            "k=2",
            "rollout.max_new_tokens=6",
            "duality.max_new_tokens=4",
            f"output_dir={out}",
        ]
    )
    assert code == 0
    result = json.loads((out / "rerank.json").read_text())
    assert (result["n_problems"], result["N"], result["K"]) == (3, 3, 2)
    for key in ("greedy", "majority", "dual", "dual_filtered", "oracle"):
        assert 0.0 <= result[f"{key}_accuracy"] <= 1.0
    # A pick is one of the candidates, so no pick beats pass@N.
    assert max(result["majority_accuracy"], result["dual_accuracy"]) <= result["oracle_accuracy"]
    assert [len(rec["answers"]) for rec in result["examples"]] == [3, 3, 3]
    assert result["examples"][2]["skip_reason"] == "no usable number (repeated value)"  # 3 * 3
    assert result["dual/samples"] % 2 == 0
    assert '"dual_accuracy"' in capsys.readouterr().out


def test_rerank_scores_each_n_on_a_prefix_of_the_same_candidates(tmp_path):
    out = tmp_path / "rr"
    args = ["rerank", "model=tiny", "task=arith2", "eval.size=4", "n=3,2", "k=1"]
    args += ["rollout.max_new_tokens=6", "duality.max_new_tokens=4", f"output_dir={out}"]
    assert main(args) == 0
    result = json.loads((out / "rerank.json").read_text())
    assert result["N"] == 3 and sorted(result["by_n"]) == ["2", "3"]
    two, three = result["by_n"]["2"], result["by_n"]["3"]
    assert three["dual_accuracy"] == result["dual_accuracy"]
    # The first 2 of 3 candidates: pass@2 cannot beat pass@3 on the same draws.
    assert two["oracle_accuracy"] <= three["oracle_accuracy"]
    assert two["greedy_accuracy"] == three["greedy_accuracy"]
    for size in (two, three):
        diff = size["dual_minus_majority"]
        assert diff["n"] == 4
        assert diff["mean"] == pytest.approx(size["dual_accuracy"] - size["majority_accuracy"])
    for rec in result["examples"]:
        assert len(rec["by_n"]["2"]["dual_scores"]) == 2
        assert rec["by_n"]["2"]["candidate_mean"] == pytest.approx(sum(rec["correct"][:2]) / 2)


def test_rerank_rejects_bad_numbers():
    assert main(["rerank", "model=tiny", "n=zero"]) == 2
    assert main(["rerank", "model=tiny", "k=0"]) == 2
    assert main(["rerank", "model=tiny", "n=8,0"]) == 2


@pytest.mark.slow
def test_rerank_on_smollm2_small(tmp_path):
    out = tmp_path / "rr"
    assert main(["rerank", "eval.size=4", "n=2", "k=1", f"output_dir={out}"]) == 0
    result = json.loads((out / "rerank.json").read_text())
    assert result["n_problems"] == 4 and result["model"] == "smollm2-135m"
