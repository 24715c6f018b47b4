"""Held-out evaluation's pass@k curve and per-example counts, on scripted completions."""

from __future__ import annotations

import pytest

from tandemrl.loop import evaluate as evaluate_module
from tandemrl.tasks import Example


class ExactTask:
    """Correct when the completion is the example's answer."""

    def score(self, example: Example, completion: str) -> dict[str, float]:
        return {"correct": float(completion == example.columns["answer"])}


def test_pass_curve_from_the_same_samples(monkeypatch) -> None:
    examples = [
        Example(str(i), [{"role": "user", "content": f"q{i}"}], {"answer": "a"}) for i in range(3)
    ]
    greedy = ["a", "b", "b"]
    # 4 samples each: 1, 0 and 4 correct.
    sampled = ["a", "b", "b", "b"] + ["b"] * 4 + ["a"] * 4

    def complete(model, tokenizer, exs, k, *args):
        return greedy if k == 1 else sampled

    monkeypatch.setattr(evaluate_module, "_complete", complete)
    monkeypatch.setattr(evaluate_module, "sample_diversity", lambda *a: {})
    result = evaluate_module.evaluate(None, None, ExactTask(), examples, max_new_tokens=4, pass_k=4)
    assert result["accuracy"] == pytest.approx(1 / 3)
    assert result["sampled_accuracy"] == pytest.approx(5 / 12)
    # pass@2: 1 - C(3,2)/C(4,2) = 0.5 for one right of four, 0 and 1 for the others.
    assert result["pass@2"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert result["pass@4"] == pytest.approx(2 / 3)
    assert [r["sampled_correct"] for r in result["examples"]] == [1, 0, 4]
    assert "pass@1" not in result  # that is sampled_accuracy


def test_pass_curve_ks() -> None:
    assert evaluate_module.pass_curve_ks(16) == [2, 4, 8, 16]
    assert evaluate_module.pass_curve_ks(6) == [2, 4, 6]
    assert evaluate_module.pass_curve_ks(1) == [1]
