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


def test_rerank_interrupted_continues_from_its_finished_chunks(tmp_path, monkeypatch):
    from tandemrl.cli import rerank

    def args(out):
        return ["rerank", "model=tiny", "task=arith2", "eval.size=7", "n=2", "k=1", "chunk=2",
                "rollout.max_new_tokens=6", "duality.max_new_tokens=4", f"output_dir={out}"]  # fmt: skip

    assert main(args(tmp_path / "whole")) == 0
    whole = json.loads((tmp_path / "whole" / "rerank.json").read_text())
    assert whole["chunks_reused"] == 0
    assert not (tmp_path / "whole" / rerank.PARTIAL).exists()  # folded into rerank.json

    real = rerank._rerank_chunk

    def interrupt_at_call(n):
        calls = []

        def chunk(*a, **kw):
            calls.append(kw["seed"])
            if len(calls) == n:
                raise KeyboardInterrupt
            return real(*a, **kw)

        return chunk

    partial = tmp_path / "cut" / rerank.PARTIAL
    monkeypatch.setattr(rerank, "_rerank_chunk", interrupt_at_call(3))
    assert main(args(tmp_path / "cut")) == 130  # Ctrl-C during chunk 3 of 4
    assert len(partial.read_text().splitlines()) == 3  # settings and chunks 1-2
    with partial.open("a") as f:
        f.write('{"chunk": 2, "recor')  # a line torn by the interruption
    monkeypatch.setattr(rerank, "_rerank_chunk", interrupt_at_call(2))
    assert main(args(tmp_path / "cut")) == 130  # chunk 3 done, Ctrl-C during chunk 4
    # The torn line was dropped before chunk 3 was appended: every line parses.
    lines = [json.loads(line) for line in partial.read_text().splitlines()]
    assert [rec.get("chunk") for rec in lines] == [None, 0, 1, 2]
    monkeypatch.setattr(rerank, "_rerank_chunk", real)
    assert main(args(tmp_path / "cut")) == 0
    resumed = json.loads((tmp_path / "cut" / "rerank.json").read_text())
    assert resumed["chunks_reused"] == 3 and not partial.exists()
    # Each chunk has its own seeds, so resuming gives the uninterrupted run's records.
    assert resumed["examples"] == whole["examples"]
    assert resumed["dual_accuracy"] == whole["dual_accuracy"]


def test_rerank_starts_over_when_the_settings_changed(tmp_path, capsys):
    from tandemrl.cli import rerank

    out = tmp_path / "rr"
    out.mkdir()
    (out / rerank.PARTIAL).write_text('{"settings": {"k": 99}}\n{"chunk": 0, "records": []}\n')
    args = ["rerank", "model=tiny", "task=arith2", "eval.size=2", "n=2", "k=1", "chunk=2"]
    assert main([*args, "rollout.max_new_tokens=4", f"output_dir={out}"]) == 0
    captured = capsys.readouterr()
    assert "written with other settings; starting over" in captured.out + captured.err
    result = json.loads((out / "rerank.json").read_text())
    assert result["chunks_reused"] == 0 and len(result["examples"]) == 2


def test_rerank_rejects_bad_numbers():
    assert main(["rerank", "model=tiny", "n=zero"]) == 2
    assert main(["rerank", "model=tiny", "k=0"]) == 2
    assert main(["rerank", "model=tiny", "n=8,0"]) == 2
    assert main(["rerank", "model=tiny", "chunk=0"]) == 2


@pytest.mark.slow
def test_rerank_on_smollm2_small(tmp_path):
    out = tmp_path / "rr"
    assert main(["rerank", "eval.size=4", "n=2", "k=1", f"output_dir={out}"]) == 0
    result = json.loads((out / "rerank.json").read_text())
    assert result["n_problems"] == 4 and result["model"] == "smollm2-135m"
