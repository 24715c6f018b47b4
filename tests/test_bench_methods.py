"""`tandem bench methods`: the statistics by hand, and one tiny end-to-end run."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tandemrl.bench import method_stats as ms
from tandemrl.bench import methods as bm
from tandemrl.loop.config import load_config


def test_mean_ci_matches_the_t_interval_by_hand():
    # mean 2, s = sqrt(((1-2)^2 + 0 + (3-2)^2) / 2) = 1, half = t_.975,2 * 1 / sqrt(3)
    out = ms.mean_ci([1.0, 2.0, 3.0])
    assert out["n"] == 3 and out["mean"] == pytest.approx(2.0)
    assert out["std"] == pytest.approx(1.0)
    assert out["ci95"] == pytest.approx(4.302653 / math.sqrt(3))
    # two values: df = 1, t = 12.706205; NaN is dropped
    two = ms.mean_ci([0.25, 0.75, math.nan])
    assert two["n"] == 2 and two["ci95"] == pytest.approx(
        12.706205 * math.sqrt(0.125) / math.sqrt(2)
    )
    assert math.isnan(ms.mean_ci([0.5])["ci95"]) and ms.mean_ci([])["n"] == 0


def test_steps_to_target_uses_the_trailing_mean():
    rewards = [0.0, 1.0, 0.0, 1.0, 1.0]
    # trailing 2-step means: 0, .5, .5, .5, 1
    assert ms.steps_to_target(rewards, 0.5, window=2) == 2
    assert ms.steps_to_target(rewards, 0.9, window=2) == 5
    assert ms.steps_to_target(rewards, 1.1, window=2) is None
    # window 1 is the raw reward
    assert ms.steps_to_target(rewards, 1.0, window=1) == 2


def test_run_record_reads_the_served_policy_and_the_eval_points():
    records = [
        {"exploit/reward/mean": 0.2, "explore/reward/mean": 0.9, "exploit/reward/std": 0.1,
         "exploit/entropy/mean": 1.0},
        {"exploit/reward/mean": 0.6, "explore/reward/mean": 0.9, "exploit/reward/std": 0.3,
         "exploit/entropy/mean": 0.5},
    ]  # fmt: skip
    summary = {
        "eval/step_1": {"accuracy": 0.3},
        "eval/after": {"accuracy": 0.5, "pass@4": 0.75, "sampled_accuracy": 0.4, "n": 8},
        "median_step_s": 2.0,
    }
    rec = ms.run_record("dupo", 1, records, summary, target=0.4, window=2)
    assert rec["reward_curve"] == [0.2, 0.6]  # exploit/, not explore/
    assert rec["steps_to_target"] == 2  # (0.2 + 0.6) / 2 = 0.4
    assert rec["reward_std_mean"] == pytest.approx(0.2)
    assert rec["entropy_mean"] == pytest.approx(0.75)
    assert rec["heldout_curve"] == [[1, 0.3], [2, 0.5]]
    assert rec["heldout"] == {"accuracy": 0.5, "pass@4": 0.75, "sampled_accuracy": 0.4}
    assert rec["heldout_before"] == {}


def test_mechanism_metrics_average_over_the_steps_that_logged_them():
    records = [{"dipo/explore_groups": 2, "dipo/exploit_groups": 0, "reward/mean": 0.1},
               {"dipo/explore_groups": 0, "dipo/exploit_groups": 1, "dual/filtered_frac": 0.5},
               {"dipo/explore_groups": 1, "dipo/invalid_reason": "empty queue"}]  # fmt: skip
    means = ms.mechanism_means(records)
    assert means == {"dipo/explore_groups": 1.0, "dipo/exploit_groups": 0.5,
                     "dual/filtered_frac": 0.5}  # fmt: skip
    runs = [{"method": "dipo", "seed": s, "mechanism": {"dipo/explore_groups": v}, "heldout": {},
             "reward_curve": [0.1], "reward_std_mean": 0.1, "entropy_mean": 1.0,
             "steps_to_target": None, "median_step_s": 1.0} for s, v in enumerate([1.0, 3.0])]  # fmt: skip
    summary = ms.aggregate(runs)
    assert summary["dipo"]["mechanism"]["dipo/explore_groups"]["mean"] == pytest.approx(2.0)
    # two seeds: t_.975,1 * sqrt(2) / sqrt(2) = 12.706
    assert "| dipo | dipo/explore_groups | 2.000 ± 12.706 |" in ms.mechanism_table(summary)


def _run(method, seed, acc, rewards):
    return {"method": method, "seed": seed, "reward_curve": rewards, "heldout": {"accuracy": acc},
            "reward_std_mean": 0.1, "entropy_mean": 1.0, "median_step_s": 3.0,
            "steps_to_target": ms.steps_to_target(rewards, 0.5, 1)}  # fmt: skip


def test_aggregate_and_table_say_when_a_method_is_within_noise():
    runs = [_run("grpo", s, a, [0.0, 0.6]) for s, a in enumerate([0.40, 0.42, 0.44])]
    runs += [_run("new", s, a, [0.0, 0.0]) for s, a in enumerate([0.30, 0.50, 0.70])]
    runs += [_run("bad", s, a, [0.0, 0.0]) for s, a in enumerate([0.10, 0.11, 0.12])]
    summary = ms.aggregate(runs)
    assert summary["grpo"]["heldout"]["accuracy"]["mean"] == pytest.approx(0.42)
    assert summary["grpo"]["steps_to_target"]["reached"] == 3
    assert summary["new"]["steps_to_target"]["reached"] == 0
    table = ms.markdown_table(summary, baseline="grpo")
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert "baseline" in rows["grpo"]
    assert "+0.080 (within noise)" in rows["new"]  # wide interval: 0.5 - 0.42, not a win
    assert "-0.310 (intervals apart)" in rows["bad"]
    assert "2.0 ± 0.0 (3/3 seeds)" in rows["grpo"]


def test_table_uses_the_paired_interval_where_there_is_one():
    # unpaired, the intervals overlap widely; paired by seed, "new" is lower on every seed
    runs = [_run("grpo", s, a, [0.0, 0.6]) for s, a in enumerate([0.40, 0.50, 0.60])]
    runs += [_run("new", s, a, [0.0, 0.6]) for s, a in enumerate([0.37, 0.48, 0.58])]
    runs += [_run("once", 0, 0.9, [0.0, 0.6])]  # one paired seed: no interval
    summary = ms.aggregate(runs)
    unpaired = ms.markdown_table(summary, baseline="grpo")
    assert "-0.023 (within noise)" in unpaired
    table = ms.markdown_table(summary, "grpo", ms.paired_comparisons(runs, "grpo"))
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    # differences -0.03, -0.02, -0.02: sd 0.00577, half-width 4.302653 * 0.00577 / sqrt(3)
    assert "-0.023 [-0.038, -0.009] paired, interval excludes 0" in rows["new"]
    assert "+0.400 (no interval)" in rows["once"] and "baseline" in rows["grpo"]


def test_paired_comparisons_by_hand():
    def run(method, seed, acc, before=None):
        return {"method": method, "seed": seed, "heldout": {"accuracy": acc},
                "heldout_before": {"accuracy": before} if before is not None else {}}  # fmt: skip

    runs = [run("grpo", s, a, 0.30) for s, a in enumerate([0.40, 0.38, 0.42])]
    runs += [run("new", s, a) for s, a in enumerate([0.42, 0.42, 0.42])]  # +0.02, +0.04, 0
    runs += [run("late", 7, 0.5)]  # no GRPO run on seed 7: nothing to pair with
    paired = ms.paired_comparisons(runs, "grpo")
    assert set(paired) == {"untrained", "new"}
    grpo = paired["untrained"]["accuracy"]  # 0.10, 0.08, 0.12 over the untrained 0.30
    assert grpo["mean"] == pytest.approx(0.10) and grpo["sd"] == pytest.approx(0.02)
    assert grpo["half_width"] == pytest.approx(4.302653 * 0.02 / 3**0.5, abs=1e-6)
    assert grpo["excludes_zero"]  # [0.0503, 0.1497]
    new = paired["new"]["accuracy"]
    assert new["mean"] == pytest.approx(0.02) and new["sd"] == pytest.approx(0.02)
    assert new["seeds"] == [0, 1, 2] and not new["excludes_zero"]
    table = ms.paired_table(paired, "grpo")
    assert "| grpo - untrained | accuracy | 3 | +0.100 | [+0.050, +0.150] |" in table
    assert "| new - grpo | accuracy | 3 | +0.020 | [-0.030, +0.070] |" in table


def test_differences_figure_has_one_row_per_comparison_with_an_interval(tmp_path):
    from tandemrl.bench import plots

    def run(method, seed, acc, before=None):
        return {"method": method, "seed": seed, "heldout": {"accuracy": acc},
                "heldout_before": {"accuracy": before} if before is not None else {}}  # fmt: skip

    runs = [run("grpo", s, a, 0.30) for s, a in enumerate([0.40, 0.38, 0.42])]
    runs += [run("new", s, a) for s, a in enumerate([0.42, 0.42, 0.42])]
    runs += [run("one", 0, 0.5)]  # one paired seed: a difference without an interval
    paired = ms.paired_comparisons(runs, "grpo")
    rows = plots.difference_rows(paired, "grpo", "accuracy")
    assert [label for label, _ in rows] == ["grpo - untrained", "new - grpo"]
    assert rows[1][1]["low"] == pytest.approx(0.02 - 4.302653 * 0.02 / 3**0.5, abs=1e-6)
    assert plots.difference_rows(paired, "grpo", "pass@4") == []
    assert plots.plot_differences(paired, "grpo", tmp_path) == ["differences.png"]
    assert (tmp_path / "differences.png").read_bytes()[:4] == b"\x89PNG"
    assert plots.plot_differences(paired, "grpo", tmp_path, metric="pass@4", name="x.png") == []
    assert not (tmp_path / "x.png").exists()


def test_reward_volatility_by_hand():
    # successive differences 1, -1, 1: v^2 = 3 / (2 * 3)
    assert ms.reward_volatility([0.0, 1.0, 0.0, 1.0]) == pytest.approx(0.5**0.5)
    assert ms.reward_volatility([0.2, 0.2, 0.2]) == 0.0
    assert ms.reward_volatility([0.0, 0.1, 0.2, 0.3]) == pytest.approx(0.1 / 2**0.5)  # slope only
    assert ms.reward_volatility([math.nan, 0.5, 0.5, 0.5]) == 0.0  # the NaN pair is left out
    assert math.isnan(ms.reward_volatility([0.5, 0.7]))


def test_paired_training_gives_the_relative_change_in_reward_spread():
    def run(method, seed, spread, curve):
        return {"method": method, "seed": seed, "reward_std_mean": spread, "reward_curve": curve,
                "reward_volatility": ms.reward_volatility(curve)}  # fmt: skip

    runs = [run("grpo", 0, 0.40, [0.0, 0.2]), run("grpo", 1, 0.20, [0.0, 0.4])]
    runs += [run("dupo", 0, 0.30, [0.0, 0.2]), run("dupo", 1, 0.10, [0.2, 0.4])]
    paired = ms.paired_training(runs, "grpo")
    spread = paired["dupo"]["reward_std_mean"]
    assert spread["mean"] == pytest.approx(-0.10) and spread["sd"] == pytest.approx(0.0)
    assert spread["relative"] == pytest.approx(-0.10 / 0.30)  # the baseline's mean is 0.30
    final = paired["dupo"]["final_reward"]  # means of the curves: 0.1 vs 0.1, 0.3 vs 0.2
    assert final["mean"] == pytest.approx(0.05) and final["n"] == 2
    assert paired["dupo"]["reward_volatility"]["n"] == 0  # one difference per curve: NaN
    assert "grpo" not in paired


def test_post_evaluations_pair_with_the_baselines_reference_evaluation():
    def run(method, seed, evals):
        return {"method": method, "seed": seed, "post_eval": evals}

    runs = [
        run("grpo", s, {"pass16": {"pass@16": p, "accuracy": 0.4}}) for s, p in [(0, 0.6), (1, 0.7)]
    ]
    runs.append(run("dupo", 0, {"pass16": {"pass@16": 0.6}, "pass16-explore": {"pass@16": 0.8}}))
    runs.append(run("dupo", 1, {"pass16": {"pass@16": 0.8}, "pass16-explore": {"pass@16": 0.8}}))
    runs.append(run("ps", 5, {"pass16": {"pass@16": 0.9}}))  # seed 5: no GRPO run to pair with
    paired = ms.paired_post_evals(runs, "grpo", "pass16")
    assert set(paired) == {"dupo:pass16", "dupo:pass16-explore"}
    assert set(paired["dupo:pass16"]) == {"pass@16"}  # metrics both report
    assert paired["dupo:pass16"]["pass@16"]["mean"] == pytest.approx(0.05)
    explore = paired["dupo:pass16-explore"]["pass@16"]  # +0.2, +0.1
    assert explore["mean"] == pytest.approx(0.15) and explore["sd"] == pytest.approx(0.1 / 2**0.5)


def test_the_powered_suite_keeps_its_runs_in_the_repository_unless_quick():
    ns = bm.parse_args(["--suite", "powered"])
    assert ns.runs_dir == Path("benchmarks/results/methods-powered/runs")
    assert ns.seed_list == [0, 1, 2, 3, 4]
    assert bm.parse_args(["--suite", "powered", "--quick"]).runs_dir.parts[0] == "runs"
    cmd = bm.train_command(ns, "dupo", 3, Path("configs/dupo_arith2.yaml"))
    assert "task_options.eval_size=256" in cmd and "dupo.lr_exploit=2.0e-4" in cmd
    assert cmd.index("seed=3") < cmd.index("optim.lr=2.0e-4")  # the suite's keys apply to all


def test_one_methods_runs_can_live_in_another_folder(tmp_path):
    committed = bm.REPO / "benchmarks/results/methods-fc-powered/runs"
    ns = bm.parse_args(["--suite", "fc-powered", "--methods", "sum,gd2po", "--runs-dir",
                        str(tmp_path), "--method-runs-dir", f"gd2po={committed}"])  # fmt: skip
    config = bm.config_path(bm.SUITES["fc-powered"]["methods"]["gd2po"])
    assert bm.run_dir_of(ns, "gd2po", 3) == committed / "gd2po" / "seed3"
    assert bm.run_dir_of(ns, "sum", 3) == tmp_path / "sum" / "seed3"
    assert f"output_dir={committed / 'gd2po' / 'seed3'}" in bm.train_command(ns, "gd2po", 3, config)
    # the committed GD2PO run finished with this command: reused, not trained again
    assert not bm.has_work(ns, "gd2po", 3, config)
    assert bm.finished_run(ns, "gd2po", 3, config)["seed"] == 3
    config = bm.config_path(bm.SUITES["fc-powered"]["methods"]["sum"])
    assert bm.has_work(ns, "sum", 3, config) and bm.finished_run(ns, "sum", 3, config) is None
    for bad in ["gd2po", "grpo=somewhere", "gd2po="]:
        with pytest.raises(SystemExit):
            bm.parse_args(["--suite", "fc-powered", "--method-runs-dir", bad])


def test_unknown_method_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        bm.parse_args(["--suite", "fc", "--methods", "sum,grpo"])
    assert "not in suite 'fc'" in capsys.readouterr().err


def test_quick_run_writes_results_and_reuses_finished_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # configs resolve from the repository
    writes = []
    real_write = bm.write_results
    monkeypatch.setattr(bm, "write_results", lambda *a: writes.append(a) or real_write(*a))
    args = ["--quick", "--methods", "grpo,dpo", "--seeds", "0", "--runs-dir", "r",
            "--out", "out", "steps=2", "eval.every=0"]  # fmt: skip
    assert bm.main(args) == 0
    result = json.loads((tmp_path / "out/results.json").read_text())
    assert set(result["summary"]) == {"grpo", "dpo"} and not result["failed"]
    assert result["unfinished"] == []
    grpo = next(r for r in result["runs"] if r["method"] == "grpo")
    assert grpo["steps"] == 2 and len(grpo["reward_curve"]) == 2
    dpo = next(r for r in result["runs"] if r["method"] == "dpo")
    assert dpo["heldout_curve"][0][0] == 0  # the baseline's before point, shared
    assert result["paired"]["dpo"]["accuracy"]["n"] == 1  # one seed: a difference, no interval
    assert set(result["paired"]) == {"untrained", "dpo"}
    for name in ("results.md", "reward.png", "heldout.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert grpo["trained_on"]["machine"]["nproc"] >= 1  # bench_machine.json of the run
    stamp = json.loads((tmp_path / "r/grpo/seed0/bench_command.json").read_text())
    assert stamp[:4] == ["-m", "tandemrl.cli", "train", "configs/grpo_arith2.yaml"]  # any clone
    # after the first run, a partial result said what was still to run
    assert writes[0][-1] == [("dpo", 0)] and len(writes) == 2
    # a second call finds both runs finished and does not train again
    ns, config = bm.parse_args(args), Path("configs/grpo_arith2.yaml")
    assert not bm.has_work(ns, "grpo", 0, config) and bm.has_work(ns, "grpo", 5, config)
    calls = []
    monkeypatch.setattr(bm, "launch", lambda *a: calls.append(a))
    assert bm.main(args) == 0 and calls == []
    # a changed command line retrains (here: the stubbed process fails, and it says so)
    monkeypatch.setattr(bm, "launch", lambda *a: 3)
    # --report-only trains nothing: the finished runs are reported, a new seed is still to go
    seeds = args.index("--seeds") + 1
    assert bm.main([*args[:seeds], "0,5", *args[seeds + 1 :], "--report-only"]) == 0
    reported = json.loads((tmp_path / "out/results.json").read_text())
    assert len(reported["runs"]) == 2 and reported["unfinished"] == ["grpo/seed5", "dpo/seed5"]
    assert bm.main([*args[:-1], "eval.every=1"]) == 1
    failed = json.loads((tmp_path / "out/results.json").read_text())["failed"]
    assert set(failed) == {"grpo/seed0", "dpo/seed0"} and "exit 3" in failed["grpo/seed0"]


def test_post_evaluations_run_on_the_last_checkpoint_and_say_when_it_is_gone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--suite", "powered", "--quick", "--methods", "grpo,dupo", "--seeds", "0",
            "--runs-dir", "r", "--out", "out", "steps=1"]  # fmt: skip
    assert bm.main(args) == 0
    result = json.loads((tmp_path / "out/results.json").read_text())
    dupo = next(r for r in result["runs"] if r["method"] == "dupo")
    assert set(dupo["post_eval"]) == {"pass16", "pass16-explore"}
    assert 0.0 <= dupo["post_eval"]["pass16-explore"]["pass@16"] <= 1.0
    stored = json.loads((tmp_path / "r/dupo/seed0/post_eval-pass16-explore.json").read_text())
    assert "policy=explore" in stored["command"] and stored["result"]["policy"] == "explore"
    assert stored["result"]["n"] == 4  # --quick evaluates 4 problems
    assert set(result["paired_post_eval"]) == {"dupo:pass16", "dupo:pass16-explore"}
    assert "dupo - grpo" in (tmp_path / "out/results.md").read_text()  # training table
    assert result["paired_modes"]["dupo:pass16-explore - dupo:pass16"]["pass@16"]["n"] == 1
    # evaluations are reused; with the checkpoints gone a missing one is pending, and
    # --retrain-for-post-evals trains the run again (the stubbed launch fails: it says so)
    for path in (tmp_path / "r").glob("*/seed0/post_eval-pass16.json"):
        path.unlink()
    for ckpt in (tmp_path / "r").glob("*/seed0/checkpoints"):
        shutil.rmtree(ckpt)
    monkeypatch.setattr(bm, "launch", lambda *a: 3)
    assert bm.main(args) == 0
    result = json.loads((tmp_path / "out/results.json").read_text())
    assert "is gone" in result["pending"]["dupo/seed0:pass16"]
    assert set(next(r for r in result["runs"] if r["method"] == "dupo")["post_eval"]) == {
        "pass16-explore"
    }
    assert bm.main([*args, "--retrain-for-post-evals"]) == 1  # both retrains failed
    failed = json.loads((tmp_path / "out/results.json").read_text())["failed"]
    assert "exit 3" in failed["dupo/seed0"]


def test_a_methods_two_policies_pair_within_the_same_run():
    def run(method, seed, evals):
        return {"method": method, "seed": seed, "post_eval": evals}

    def ev(normal, high):
        return {"pass16": {"pass@16": normal, "accuracy": 0.4},
                "pass16-high_entropy": {"pass@16": high}}  # fmt: skip

    runs = [run("ps", 0, ev(0.60, 0.70)), run("ps", 1, ev(0.70, 0.70)), run("ps", 2, ev(0.5, 0.8))]
    runs.append(run("ps", 3, {"pass16": {"pass@16": 0.9}}))  # one mode only: not paired
    runs.append(run("grpo", 0, {"pass16": {"pass@16": 0.1}}))  # no contrast for GRPO
    modes = ms.paired_modes(runs, {"ps": ("pass16-high_entropy", "pass16")})
    assert set(modes) == {"ps:pass16-high_entropy - ps:pass16"}
    d = modes["ps:pass16-high_entropy - ps:pass16"]
    assert set(d) == {"pass@16"}  # metrics both report
    # differences +0.1, 0.0, +0.3: mean 0.4/3, sd sqrt(((0.1-m)^2 + m^2 + (0.3-m)^2) / 2)
    m = 0.4 / 3
    sd = (((0.1 - m) ** 2 + m**2 + (0.3 - m) ** 2) / 2) ** 0.5
    assert d["pass@16"]["n"] == 3 and d["pass@16"]["mean"] == pytest.approx(m)
    assert d["pass@16"]["sd"] == pytest.approx(sd)
    table = ms.paired_table(modes, "")
    assert "| ps:pass16-high_entropy - ps:pass16 | pass@16 | 3 | +0.133 |" in table


def test_two_methods_pair_over_the_seeds_both_ran():
    def run(method, seed, exact, args=None):
        heldout = {"exact_call": exact} if args is None else {"exact_call": exact, "args": args}
        return {"method": method, "seed": seed, "heldout": heldout}

    runs = [run("gdpo", 0, 0.20, 0.3), run("gdpo", 1, 0.25, 0.3), run("gdpo", 2, 0.10, 0.3)]
    runs += [run("gd2po", 0, 0.30), run("gd2po", 1, 0.25), run("gd2po", 2, 0.30)]
    runs.append(run("gd2po", 3, 0.90))  # no GDPO run on seed 3: left out of the pairing
    runs.append(run("sum", 0, 0.0))
    paired = ms.paired_methods(runs, [("gd2po", "gdpo"), ("gd2po", "absent")])
    assert set(paired) == {"gd2po - gdpo"}
    d = paired["gd2po - gdpo"]
    assert set(d) == {"exact_call"}  # args: GDPO's runs only
    # differences +0.10, 0.00, +0.20: mean 0.1, sd 0.1; t(0.975, 2) = 4.3027
    assert d["exact_call"]["n"] == 3 and d["exact_call"]["mean"] == pytest.approx(0.1)
    assert d["exact_call"]["sd"] == pytest.approx(0.1)
    half = 4.302653 * 0.1 / 3**0.5
    assert d["exact_call"]["low"] == pytest.approx(0.1 - half, abs=1e-5)
    assert d["exact_call"]["high"] == pytest.approx(0.1 + half, abs=1e-5)
    assert "| gd2po - gdpo | exact_call | 3 | +0.100 |" in ms.paired_table(paired, "")


def test_results_warn_when_step_times_come_from_several_hosts():
    def run(platform):
        return {"trained_on": {"machine": {"platform": platform}}}

    assert bm._hosts_note([run("vm-a"), run("vm-a"), {"trained_on": None}]) == ""
    assert "2 hosts" in bm._hosts_note([run("vm-a"), run("vm-b")])


def test_time_left_counts_only_runs_that_trained():
    assert bm.time_left(0.0, 0, 7) == ""  # nothing trained yet: no estimate
    assert bm.time_left(1800.0, 2, 3) == ", 3 to train, about 45 min left"  # 15 min a run
    assert bm.time_left(1800.0, 2, 0) == ""


def test_a_seed_independent_untrained_score_is_evaluated_once_and_shared():
    # fc-powered: only the baseline's seeds 0 and 1 evaluate the untrained model.
    assert [bm.evaluates_untrained("fc-powered", "sum", s) for s in range(5)] == [
        True, True, False, False, False,
    ]  # fmt: skip
    assert not bm.evaluates_untrained("fc-powered", "gdpo", 0)
    assert bm.evaluates_untrained("powered", "grpo", 4)  # no untrained_seeds: every seed

    def run(method, seed, acc, before=None):
        curve = [[0, before], [10, acc]] if before is not None else [[10, acc]]
        return {"method": method, "seed": seed, "heldout": {"accuracy": acc},
                "heldout_curve": curve,
                "heldout_before": {"accuracy": before} if before is not None else {}}  # fmt: skip

    runs = [run("sum", 0, 0.30, 0.20), run("sum", 1, 0.26), run("gdpo", 1, 0.28)]
    per_seed = [dict(r, heldout_curve=list(r["heldout_curve"])) for r in runs]
    bm.share_before(per_seed, "sum")  # seed 1 has no point of its own: nothing shared
    assert per_seed[1]["heldout_curve"] == [[10, 0.26]]
    assert "untrained" not in ms.paired_comparisons(per_seed, "sum")

    bm.share_before(runs, "sum", any_seed=True)
    assert runs[1]["heldout_curve"][0] == [0, 0.20] and runs[2]["heldout_curve"][0] == [0, 0.20]
    assert runs[1]["heldout_before"] == {"accuracy": 0.20}
    untrained = ms.paired_comparisons(runs, "sum")["untrained"]["accuracy"]
    assert untrained["seeds"] == [0, 1] and untrained["mean"] == pytest.approx(0.08)


def test_the_demo_suite_adds_samples_to_the_greedy_only_demo():
    demo = Path("configs/demo.yaml")
    cmd = bm.train_command(bm.parse_args(["--suite", "demo"]), "grpo", 1, demo)
    overrides = [a for a in cmd[cmd.index(str(demo)) + 1 :] if "=" in a]
    assert load_config(bm.REPO / demo).eval.pass_k == 0  # `make demo` stays short
    suite_run = load_config(bm.REPO / demo, overrides)
    assert (suite_run.eval.pass_k, suite_run.eval.batch_size) == (4, 32)
    assert suite_run.eval.pass_temperature == 0.7 and suite_run.seed == 1
