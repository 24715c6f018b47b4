"""`tandem bench speed`: the pure pieces (statistics, FLOP estimate, tables, result shape) by
hand-computed values; nothing here times anything. TRL is optional: the one test that runs
it is slow and skipped without it."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math

import pytest

from tandemrl.bench import report, run_bench
from tandemrl.bench import speed as bench_speed
from tandemrl.bench.trl_grpo import _task_reward
from tandemrl.cli import main
from tandemrl.tasks import Example, RewardSpec


def _run(name, framework, config, steps, peak, tokens=64.0, repeat=0):
    per_step = [
        {
            "step": i + 1,
            "step_s": s,
            "generate_s": s / 2,
            "reward_s": 0.0,
            "logprob_s": 0.0,
            "update_s": s / 2,
            "completion_tokens": tokens,
        }
        for i, s in enumerate(steps)
    ]
    return {
        "name": name,
        "framework": framework,
        "config": config,
        "repeat": repeat,
        "per_step": per_step,
        "peak_rss_mb": peak,
    }


def test_measured_steps_drop_warmup_and_keep_a_lone_step():
    steps = [{"step_s": 9.0}, {"step_s": 1.0}, {"step_s": 2.0}]
    assert report.measured_steps(steps) == steps[1:]
    assert report.measured_steps(steps[:1]) == steps[:1]


def test_median_and_ratio_ignore_missing_values():
    assert report.median([3.0, None, 1.0, math.nan, 2.0]) == 2.0
    assert math.isnan(report.median([]))
    assert report.ratio(1.0, 4.0) == 0.25
    assert math.isnan(report.ratio(1.0, 0.0))
    assert math.isnan(report.ratio(math.nan, 1.0))


def test_pool_takes_medians_over_repeats_without_warmup_and_the_largest_peak():
    runs = [
        _run("tandem-lora", "tandem", "lora", [100.0, 2.0, 4.0], 1000.0),
        _run("tandem-lora", "tandem", "lora", [100.0, 6.0, 8.0], 1200.0, repeat=1),
    ]
    p = report.pool(runs)
    assert p["measured_steps"] == 4
    assert p["step_s"] == 5.0  # median of 2, 4, 6, 8
    assert p["generate_s"] == 2.5
    assert p["tokens_per_s"] == pytest.approx(report.median([32.0, 16.0, 64 / 6, 8.0]))
    assert p["peak_rss_mb"] == 1200.0


@pytest.mark.parametrize(
    ("adapter_params", "base_trained", "expected"),
    [
        (0, True, 3120),  # full fine-tune, 6NT: 6 * (100 * 5 + 10 * 2)
        (4, False, 2200),  # LoRA, 4NT + 6 per adapter token: 4 * 520 + 6 * 4 * 5
    ],
)
def test_update_flops(adapter_params, base_trained, expected):
    flops = report.update_flops(
        body_params=100, head_params=10, adapter_params=adapter_params, tokens=5,
        head_tokens=2, base_trained=base_trained,
    )  # fmt: skip
    assert flops == expected


def test_generate_flops_is_one_forward_with_the_head_on_sampled_tokens():
    # 2 * ((100 + 4) * 5 + 10 * 2) = 2 * 540 = 1080
    flops = report.generate_flops(
        body_params=100, head_params=10, adapter_params=4, tokens=5, head_tokens=2
    )
    assert flops == 1080


def test_markdown_table_formats_numbers_nan_and_text():
    table = report.markdown_table(("a", "b", "c"), [[1.234, math.nan, "x"], [2, None, True]])
    assert table == "| a | b | c |\n| --- | --- | --- |\n| 1.2 | – | x |\n| 2 | – | yes |"


def test_speed_rows_end_each_config_with_the_ratio_row():
    t = report.pool([_run("tandem-lora", "tandem", "lora", [9.0, 10.0], 1000.0)])
    r = report.pool([_run("trl-lora", "trl", "lora", [9.0, 20.0], 2000.0)])
    entry = report.compare_frameworks(t, r, "lora")
    assert entry["ratio"]["step_s"] == 0.5
    assert entry["ratio"]["peak_rss_mb"] == 0.5
    assert entry["ratio"]["tokens_per_s"] == 2.0
    rows = report.speed_rows([entry])
    assert [row[1] for row in rows] == ["tandem", "trl", "**tandem / TRL**"]
    assert rows[2][2] == "**0.50x**"


def test_target_is_met_below_the_limit_and_unknown_when_not_measured():
    assert report.target("x", 0.4, 0.5)["met"] is True
    assert report.target("x", 0.6, 0.5)["met"] is False
    assert report.target("x", math.nan, 0.5)["met"] is None


def test_plan_alternates_frameworks_and_adds_missing_baselines():
    ns = bench_speed.parse_args(["--repeats", "2", "--configs", "lora"])
    kinds = [(kind, config) for kind, _, config, _ in bench_speed.plan(ns)]
    assert kinds[:4] == [("tandem", "lora"), ("trl", "lora")] * 2
    methods = [name for kind, name, _, _ in bench_speed.plan(ns) if kind == "method"]
    # policy_split reuses the tandem-lora runs; DuPO gets its KL baseline, run first.
    assert methods == ["grpo-kl", "policy_split", "dupo-simultaneous"]
    ns = bench_speed.parse_args(["--what", "methods-cost", "--methods", "policy_split"])
    assert [name for _, name, _, _ in bench_speed.plan(ns)] == ["grpo", "policy_split"]


def test_engines_alternate_and_vllm_is_judged_against_the_best_trl():
    args = ["--what", "speed", "--configs", "lora", "--engines", "hf,vllm", "--trl-vllm"]
    ns = bench_speed.parse_args([*args, "--repeats", "2"])
    names = [name for _, name, _, _ in bench_speed.plan(ns)]
    assert names == ["tandem-lora", "tandem-vllm-lora", "trl-lora", "trl-vllm-lora"] * 2
    runs = [
        _run("tandem-lora", "tandem", "lora", [30.0, 16.0, 16.0], 2000.0),  # generate 8 s
        _run("tandem-vllm-lora", "tandem", "lora", [90.0, 10.0, 10.0], 5000.0),  # 5 s
        _run("trl-lora", "trl", "lora", [40.0, 30.0, 30.0], 4000.0),
        _run("trl-vllm-lora", "trl", "lora", [60.0, 20.0, 20.0], 6000.0),
    ]
    summary = bench_speed.summarize(runs, None, [], ns)
    vllm = next(e for e in summary["speed"] if e.get("tandem_name") == "tandem-vllm-lora")
    assert vllm["trl_name"] == "trl-vllm-lora"  # the faster TRL configuration
    assert vllm["ratio"]["step_s"] == pytest.approx(0.5)
    engines = summary["engines"][0]
    assert engines["vllm_vs_hf_generate"] == pytest.approx(5 / 8)
    assert engines["vllm_vs_hf_memory"] == pytest.approx(2.5)
    met = {t["name"]: (t["value"], t["met"]) for t in summary["targets"]}
    assert met["tandem-vllm-lora / trl-vllm-lora step time (lora)"] == (pytest.approx(0.5), False)
    assert met["vLLM / HF engine generation time (lora)"] == (pytest.approx(0.625), True)
    assert met["tandem/TRL step time (lora)"] == (pytest.approx(16 / 30), False)


def test_prompt_lengths_count_token_ids_of_the_templated_prompt():
    from tandemrl.models.tiny import build_tiny_tokenizer
    from tandemrl.tasks import get_task

    content = get_task("arith2").train_examples()[0].messages[0]["content"]
    # byte-level: <|im_start|> "user\n" content <|im_end|> "\n" <|im_start|> "assistant\n"
    expected = 3 + len(f"user\n{content}\nassistant\n".encode())
    assert bench_speed.prompt_lengths(build_tiny_tokenizer(), "arith2", prompts=1) == [expected]


def test_parse_args_rejects_unknown_values():
    with pytest.raises(SystemExit):
        bench_speed.parse_args(["--configs", "lora,qlora"])


def test_result_shape_summary_and_markdown(tmp_path):
    ns = bench_speed.parse_args(["--repeats", "1"])
    runs = [
        _run("tandem-lora", "tandem", "lora", [30.0, 10.0, 12.0], 3000.0),
        _run("trl-lora", "trl", "lora", [40.0, 30.0, 30.0], 4000.0),
        _run("tandem-full", "tandem", "full", [30.0, 14.0, 14.0], 3500.0),
        _run("trl-full", "trl", "full", [40.0, 28.0, 28.0], 4500.0),
        _run("grpo-kl", "tandem", "lora", [30.0, 12.0, 12.0], 3000.0),
        _run("policy_split", "tandem", "lora", [30.0, 16.5, 16.5], 3300.0),
        _run("dupo-simultaneous", "tandem", "lora", [30.0, 14.0, 14.0], 3150.0),
    ]
    facts = {
        "body_params": 1e8,
        "head_params": 2e7,
        "lora_params": 1e6,
        "prompt_tokens_mean": 50.0,
    }
    peaks = [{"n": 2048, "repeats": 10, "best_gflops": 100.0, "median_gflops": 90.0}]
    summary = bench_speed.summarize(runs, facts, peaks, ns)
    result = {
        "benchmark": "speed",
        "command": "tandem bench speed --repeats 1",
        "date": "2026-01-01T00:00:00+00:00",
        "machine": {"nproc": 2, "cpu": "test", "mem_gb": 1.0, "platform": "x"},
        "versions": {
            "python": "3",
            "torch": "t",
            "transformers": "tr",
            "trl": "l",
            "peft": "p",
            "git_commit": "abc",
        },
        "settings": vars(ns),
        "runs": runs,
        "summary": summary,
    }
    report.check_result(json.loads(json.dumps(result)))  # JSON-serialisable and complete
    speed = {e["config"]: e for e in summary["speed"]}
    assert speed["lora"]["ratio"]["step_s"] == pytest.approx(11 / 30)
    assert speed["full"]["ratio"]["step_s"] == pytest.approx(0.5)
    cost = {e["run"]: e for e in summary["methods_cost"]}
    assert cost["policy_split"]["baseline"] == "tandem-lora"
    assert cost["policy_split"]["time_ratio"] == pytest.approx(1.5)
    assert cost["dupo-simultaneous"]["memory_ratio"] == pytest.approx(1.05)
    met = {t["name"]: t["met"] for t in summary["targets"]}
    assert met == {
        "tandem/TRL step time (lora)": True,
        "tandem/TRL step time (full)": True,
        "dupo-simultaneous / grpo-kl peak memory": True,
        "policy_split / tandem-lora step time": True,
    }
    flops = {f["run"]: f for f in summary["flops"]}
    # TRL full: a prompt per sample: 6 * (1e8 * (32 * 50 + 64) + 2e7 * 64) = 1.00608e12 FLOPs
    assert flops["trl-full"]["update_gflop"] == pytest.approx(1006.08)
    # tandemrl full: a prompt per group: 6 * (1e8 * (8 * 50 + 64) + 2e7 * 64) = 2.8608e11 in 7 s
    assert flops["tandem-full"]["update_gflop"] == pytest.approx(286.08)
    assert flops["tandem-full"]["achieved_gflops"] == pytest.approx(286.08 / 7)
    assert flops["tandem-full"]["fraction_of_peak"] == pytest.approx(286.08 / 7 / 100)
    # generation: 2 * 4.768e10 = 95.36 GFLOP in 7 s
    assert flops["tandem-full"]["generate_gflops"] == pytest.approx(95.36 / 7)
    assert set(flops) == {"tandem-lora", "trl-lora", "tandem-full", "trl-full"}
    # A result written before prompts were shared has no such setting: a prompt per sample.
    old = bench_speed.summarize(
        runs, facts, peaks, argparse.Namespace(**{**vars(ns), "tandem_prompt_once": False})
    )
    old_flops = {f["run"]: f for f in old["flops"]}
    assert old_flops["tandem-full"]["update_gflop"] == pytest.approx(1006.08)
    md = bench_speed.to_markdown(result)
    assert "flock /tmp/tandem-heavy.lock tandem bench speed --repeats 1" in md
    assert "| lora | **tandem / TRL** | **0.37x** |" in md
    with pytest.raises(ValueError, match="missing"):
        report.check_result({k: v for k, v in result.items() if k != "runs"})


def test_trl_reward_adapter_passes_each_examples_columns():
    examples = [
        Example("a", [{"role": "user", "content": "1+1"}], {"answer": "2"}),
        Example("b", [{"role": "user", "content": "2+2"}], {"answer": "4"}),
    ]

    def correct(prompts, completions, answer, **_):
        return [float(c == a) for c, a in zip(completions, answer, strict=True)]

    fn = _task_reward(RewardSpec("correct", correct), examples)
    assert fn.__name__ == "correct"
    assert fn(prompts=[[], []], completions=["4", "4"], row=[1, 0], trainer_state=None) == [
        1.0,
        0.0,
    ]


def test_bench_cli_errors(monkeypatch, capsys):
    assert run_bench([]) == 2
    assert main(["bench", "nope"]) == 2
    assert "unknown benchmark 'nope'" in capsys.readouterr().err
    monkeypatch.setattr("tandemrl.bench.trl_grpo.trl_available", lambda: False)
    assert main(["bench", "speed", "--what", "speed"]) == 2
    assert "trl" in capsys.readouterr().err.lower()


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="needs trl (bench extra)")
def test_speed_bench_end_to_end_on_tiny(tmp_path):
    code = main(
        ["bench", "speed", "--model", "tiny", "--steps", "2", "--repeats", "1"]
        + ["--configs", "full", "--methods", "policy_split", "--out", str(tmp_path)]
        + ["--name", "t"]
    )
    assert code == 0
    result = json.loads((tmp_path / "t.json").read_text())
    report.check_result(result)
    assert [r["name"] for r in result["runs"]] == [
        "tandem-full",
        "trl-full",
        "grpo",
        "policy_split",
    ]
    assert (tmp_path / "t.md").read_text().startswith("# Speed benchmark")


def _compute_run(name: str, rss: float, steps: list[float]) -> dict:
    per_step = [
        {
            "step": i + 1,
            "step_s": s,
            "generate_s": s / 2,
            "logprob_s": 0.0,
            "update_s": s / 2,
            "peak_rss_mb": rss,
        }  # fmt: skip
        for i, s in enumerate(steps)
    ]
    return {"name": name, "per_step": per_step, "peak_rss_mb": rss, "command": f"tandem {name}"}


def test_bench_compute_pools_steps_after_warmup_and_divides_by_the_baseline():
    from tandemrl.bench import compute

    runs = [
        _compute_run("1-process", 3000.0, [99.0, 10.0, 12.0]),  # step 1 is warm-up: dropped
        _compute_run("fsdp2-2-ranks", 1800.0, [50.0, 30.0, 30.0]),
        _compute_run("1-process", 2900.0, [80.0, 14.0, 16.0]),
    ]
    summary = compute.summarize(runs)
    base, sharded = summary["fsdp2"]["1-process"], summary["fsdp2"]["fsdp2-2-ranks"]
    assert base["step_s"] == 13.0 and base["steps_pooled"] == 4  # median of 10, 12, 14, 16
    assert base["peak_rss_mb"] == 3000.0  # the largest run's
    assert sharded["rss_ratio"] == pytest.approx(0.6)
    assert sharded["step_ratio"] == pytest.approx(30.0 / 13.0)
    assert "precision" not in summary
    result = {"date": "d", "command": "c", "machine": {"cpu": "x", "nproc": 2, "mem_gb": 1},
              "versions": {}, "settings": {"model": "m", "task": "t", "prompts": 8, "group": 4,
                                           "steps": 3, "repeats": 2},
              "runs": runs, "summary": summary}  # fmt: skip
    table = compute.to_markdown(result)
    assert "| fsdp2 | fsdp2-2-ranks | 30.00 |" in table and "| 0.60 |" in table
