"""Pure pieces of `tandem bench methods`: per-run numbers from a run directory's records, and
their mean and confidence interval over seeds. No torch, no subprocesses.

A *run record* is what `run_record` extracts from one training run (one method, one seed):

    {"method", "seed", "steps", "reward_curve": [per step], "heldout_curve": [[step, acc], ...],
     "heldout": {"accuracy", "pass@k", "sampled_accuracy", "diversity/..."},
     "heldout_before": the same before training (baseline runs only, `{}` otherwise),
     "reward_std_mean", "entropy_mean", "steps_to_target", "median_step_s", "peak_rss_mb"}
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from tandemrl.bench.power import paired_difference, student_t_quantile
from tandemrl.bench.report import finite_values

# Methods that log their served policy or mode under a prefix (DuPO: the exploiter; Policy
# Split: the normal mode logs unprefixed too). The first key present wins.
SERVED_PREFIXES = ("", "exploit/", "normal/")
# Per-step metrics that show a method's mechanism at work (DiPO's reallocation directions, the
# duality filter, GD²PO's conflicts, DuPO's sharing, Policy Split's modes); each run reports
# their mean over the steps that logged them.
MECHANISM_PREFIXES = ("dipo/", "dual/", "multi_reward/", "gd2po/", "dupo/", "policy_split/",
                      "explore/shared_count", "explore/eligible_count", "exploit/eligible_count",
                      "advantage/kept_frac")  # fmt: skip
HELDOUT_KEYS = (
    "accuracy",
    "sampled_accuracy",
    "diversity/distinct_answers",
    "diversity/distinct_2",
)


def mean_ci(values: Iterable[float]) -> dict[str, float]:
    """Mean, sample std and the 95% t interval half-width over seeds:

        half = t_{0.975, n-1} * s / sqrt(n),  s = sqrt(sum (x - mean)^2 / (n - 1))

    NaN values are dropped; with one value the half-width is NaN (no spread to estimate)."""
    xs = finite_values(values)
    n = len(xs)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci95": math.nan}
    mean = statistics.fmean(xs)
    if n == 1:
        return {"n": 1, "mean": mean, "std": math.nan, "ci95": math.nan}
    std = statistics.stdev(xs)
    t = student_t_quantile(0.975, n - 1)
    return {"n": n, "mean": mean, "std": std, "ci95": t * std / math.sqrt(n)}


def served_key(record: dict[str, Any], key: str) -> str | None:
    """`key` as the served policy logs it in `record` (see SERVED_PREFIXES), or None."""
    for prefix in SERVED_PREFIXES:
        if f"{prefix}{key}" in record:
            return f"{prefix}{key}"
    return None


def series(records: Sequence[dict[str, Any]], key: str) -> list[float]:
    """The served policy's `key` at every step (NaN where absent or non-numeric)."""
    out = []
    for rec in records:
        name = served_key(rec, key)
        value = rec.get(name) if name else None
        out.append(float(value) if isinstance(value, (int, float)) else math.nan)
    return out


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last `window` finite values (fewer at the start)."""
    out = []
    for i in range(len(values)):
        part = finite_values(values[max(0, i - window + 1) : i + 1])
        out.append(sum(part) / len(part) if part else math.nan)
    return out


def steps_to_target(rewards: Sequence[float], target: float, window: int = 5) -> int | None:
    """First step (1-based) whose trailing `window`-step mean reward reaches `target`;
    None if it never does. The mean damps the noise of small per-step batches."""
    for i, value in enumerate(moving_average(rewards, window)):
        if math.isfinite(value) and value >= target:
            return i + 1
    return None


def finite_mean(values: Iterable[float]) -> float:
    xs = finite_values(values)
    return sum(xs) / len(xs) if xs else math.nan


def heldout_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The compared held-out numbers of one evaluation (`loop.evaluate`'s result)."""
    out = {k: float(result[k]) for k in HELDOUT_KEYS if k in result}
    out.update({k: float(v) for k, v in result.items() if k.startswith("pass@")})
    return out


def mechanism_means(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Mean over steps of every numeric metric under `MECHANISM_PREFIXES`."""
    keys = sorted(
        {
            k
            for r in records
            for k, v in r.items()
            if k.startswith(MECHANISM_PREFIXES) and isinstance(v, (int, float))
        }
    )
    means = {k: finite_mean(r.get(k, math.nan) for r in records) for k in keys}
    return {k: v for k, v in means.items() if math.isfinite(v)}


def run_record(
    method: str,
    seed: int,
    records: Sequence[dict[str, Any]],
    summary: dict[str, Any],
    target: float,
    window: int = 5,
) -> dict[str, Any]:
    """One run's numbers from its `metrics.jsonl` records and `summary.json`."""
    rewards = series(records, "reward/mean")
    steps = len(records)
    curve = []
    for tag, result in summary.items():
        if not tag.startswith("eval/") or not isinstance(result, dict):
            continue
        name = tag[len("eval/") :]
        at = {"before": 0, "after": steps}.get(name)
        if at is None and name.startswith("step_"):
            at = int(name[len("step_") :])
        if at is not None and "accuracy" in result:
            curve.append([at, float(result["accuracy"])])
    heldout = heldout_metrics(summary.get("eval/after") or {})
    return {
        "method": method,
        "seed": seed,
        "steps": steps,
        "reward_curve": rewards,
        "heldout_curve": sorted(curve),
        "heldout": heldout,
        "heldout_before": heldout_metrics(summary.get("eval/before") or {}),
        "reward_std_mean": finite_mean(series(records, "reward/std")),
        "mechanism": mechanism_means(records),
        "entropy_mean": finite_mean(series(records, "entropy/mean")),
        "steps_to_target": steps_to_target(rewards, target, window),
        "median_step_s": summary.get("median_step_s"),
        "peak_rss_mb": summary.get("peak_rss_mb"),
    }


def aggregate(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method: mean/CI over seeds of every held-out metric and training statistic.

    `steps_to_target` also reports how many seeds reached the target (`reached`); its mean
    is over those seeds only."""
    methods: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        methods.setdefault(run["method"], []).append(run)
    out = {}
    for method, group in methods.items():
        keys = sorted({k for run in group for k in run["heldout"]})
        reached = [r["steps_to_target"] for r in group if r["steps_to_target"] is not None]
        out[method] = {
            "seeds": sorted(r["seed"] for r in group),
            "heldout": {k: mean_ci(r["heldout"].get(k, math.nan) for r in group) for k in keys},
            "reward_std_mean": mean_ci(r["reward_std_mean"] for r in group),
            "entropy_mean": mean_ci(r["entropy_mean"] for r in group),
            "final_reward": mean_ci(finite_mean(r["reward_curve"][-5:]) for r in group),
            "steps_to_target": {**mean_ci(reached), "reached": len(reached), "of": len(group)},
            "median_step_s": mean_ci(r["median_step_s"] or math.nan for r in group),
            "mechanism": {
                k: mean_ci(r.get("mechanism", {}).get(k, math.nan) for r in group)
                for k in sorted({k for r in group for k in r.get("mechanism", {})})
            },
        }
    return out


def _cell(stat: dict[str, float], digits: int = 3) -> str:
    if not stat or stat.get("n", 0) == 0 or not math.isfinite(stat["mean"]):
        return "n/a"
    if not math.isfinite(stat.get("ci95", math.nan)):
        return f"{stat['mean']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {stat['ci95']:.{digits}f}"


def markdown_table(summary: dict[str, dict[str, Any]], baseline: str | None = None) -> str:
    """One row per method: held-out metrics and training statistics as mean ± 95% CI.

    With `baseline` (e.g. "grpo"), a last column says whether the method's mean held-out
    accuracy is above the baseline's and whether the two intervals overlap."""
    pass_keys = sorted({k for s in summary.values() for k in s["heldout"] if k.startswith("pass@")})
    cols = ["accuracy", *pass_keys, "sampled_accuracy", "diversity/distinct_answers"]
    head = ["method", "seeds", *[f"held-out {c}" for c in cols], "final train reward",
            "reward std", "entropy", "steps to target", "step s"]  # fmt: skip
    if baseline in summary:
        head.append(f"vs {baseline}")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    base = summary.get(baseline, {}).get("heldout", {}).get("accuracy") if baseline else None
    for method, s in summary.items():
        stt = s["steps_to_target"]
        row = [method, str(len(s["seeds"]))]
        row += [_cell(s["heldout"].get(c, {})) for c in cols]
        row += [_cell(s["final_reward"]), _cell(s["reward_std_mean"]), _cell(s["entropy_mean"])]
        row += [
            f"{_cell(stt, 1)} ({stt['reached']}/{stt['of']} seeds)",
            _cell(s["median_step_s"], 1),
        ]
        if baseline in summary:
            row.append(_versus(s["heldout"].get("accuracy", {}), base, method == baseline))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _versus(stat: dict[str, float], base: dict[str, float] | None, is_base: bool) -> str:
    if is_base:
        return "baseline"
    if not stat or not base or not math.isfinite(stat.get("mean", math.nan)):
        return "n/a"
    diff = stat["mean"] - base["mean"]
    half = stat.get("ci95", math.nan), base.get("ci95", math.nan)
    if not all(math.isfinite(h) for h in half):
        return f"{diff:+.3f} (no interval)"
    separated = abs(diff) > half[0] + half[1]
    return f"{diff:+.3f} ({'intervals apart' if separated else 'within noise'})"


def paired_comparisons(
    runs: Sequence[dict[str, Any]], baseline: str, keys: Sequence[str] | None = None
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per method and held-out metric, the paired difference from `baseline` over the seeds
    both ran (`bench.power.paired_difference`: mean, 95% interval, detectable effect); and,
    under "untrained", the baseline's difference from its own evaluation before training.
    `keys` defaults to every held-out metric the baseline reports."""
    by_method: dict[str, dict[int, dict[str, Any]]] = {}
    for run in runs:
        by_method.setdefault(run["method"], {})[run["seed"]] = run
    base = by_method.get(baseline, {})
    keys = list(keys or sorted({k for r in base.values() for k in r["heldout"]}))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    before = {s: r.get("heldout_before") or {} for s, r in base.items()}
    if base and all(before.values()):
        out["untrained"] = {
            k: paired_difference(
                {s: r["heldout"].get(k, math.nan) for s, r in base.items()},
                {s: before[s].get(k, math.nan) for s in base},
            ).to_dict()
            for k in keys
        }
    for method, seeds in by_method.items():
        if method == baseline:
            continue
        shared = sorted(set(seeds) & set(base))
        if not shared:
            continue
        out[method] = {
            k: paired_difference(
                {s: seeds[s]["heldout"].get(k, math.nan) for s in shared},
                {s: base[s]["heldout"].get(k, math.nan) for s in shared},
            ).to_dict()
            for k in keys
        }
    return out


def paired_table(paired: dict[str, dict[str, dict[str, Any]]], baseline: str) -> str:
    """One row per comparison and metric: mean difference, 95% interval, detectable effect
    (power 0.8) and whether the interval excludes zero."""
    head = ["comparison", "held-out metric", "seeds", "mean difference", "95% interval",
            "detectable effect", "interval excludes 0"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for method, metrics in paired.items():
        label = f"{baseline} - untrained" if method == "untrained" else f"{method} - {baseline}"
        for key, d in metrics.items():
            if d["n"] == 0:
                continue
            interval = (
                f"[{d['low']:+.3f}, {d['high']:+.3f}]" if math.isfinite(d["half_width"]) else "n/a"
            )
            mde = f"{d['detectable']:.3f}" if math.isfinite(d["detectable"]) else "n/a"
            row = [label, key, str(d["n"]), f"{d['mean']:+.3f}", interval, mde,
                   "yes" if d["excludes_zero"] else "no"]  # fmt: skip
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def mechanism_table(summary: dict[str, dict[str, Any]]) -> str:
    """One row per method and mechanism metric: mean over steps, then mean ± 95% CI over
    seeds; empty when no method logged one."""
    rows = [
        f"| {method} | {key} | {_cell(stat)} |"
        for method, s in summary.items()
        for key, stat in s.get("mechanism", {}).items()
    ]
    if not rows:
        return ""
    return "\n".join(["| method | metric (mean over steps) | over seeds |", "| --- | --- | --- |",
                      *rows])  # fmt: skip
