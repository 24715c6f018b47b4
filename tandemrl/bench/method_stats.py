"""Pure pieces of `tandem bench methods`: per-run numbers from a run directory's records, and
their mean and confidence interval over seeds. No torch, no subprocesses.

A *run record* is what `run_record` extracts from one training run (one method, one seed):

    {"method", "seed", "steps", "reward_curve": [per step], "heldout_curve": [[step, acc], ...],
     "heldout": {"accuracy", "pass@k", "sampled_accuracy", "diversity/..."},
     "heldout_before": the same before training (baseline runs only, `{}` otherwise),
     "reward_std_mean", "reward_volatility", "entropy_mean", "steps_to_target",
     "median_step_s", "peak_rss_mb",
     "post_eval": {name: held-out metrics of an evaluation run after training (e.g. pass@16)}}
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


def reward_volatility(rewards: Sequence[float]) -> float:
    """Step-to-step noise of a training reward curve r_1..r_T, little moved by a slow trend:

        v = sqrt( sum_t (r_{t+1} - r_t)^2 / (2 m) )

    over the m finite successive differences (von Neumann's successive-difference estimate of
    the std; for i.i.d. noise of std s, E[v^2] = s^2; a linear trend of slope b adds b^2 / 2
    to v^2, against its whole variance over T steps to the plain std). One reading of DuPO's "training
    stability" claim (seed 000); `reward_std_mean` is the other. NaN with under 2 differences."""
    diffs = [b - a for a, b in zip(rewards, rewards[1:], strict=False)]
    diffs = [d for d in diffs if math.isfinite(d)]
    if len(diffs) < 2:
        return math.nan
    return math.sqrt(sum(d * d for d in diffs) / (2 * len(diffs)))


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
        "reward_volatility": reward_volatility(rewards),
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
            "reward_volatility": mean_ci(r.get("reward_volatility", math.nan) for r in group),
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


def markdown_table(
    summary: dict[str, dict[str, Any]],
    baseline: str | None = None,
    paired: dict[str, dict[str, dict[str, Any]]] | None = None,
) -> str:
    """One row per method: held-out metrics and training statistics as mean ± 95% CI.

    With `baseline` (e.g. "grpo"), a last column compares the method's held-out accuracy with
    the baseline's: from `paired` (`paired_comparisons`) where the method has a paired
    difference over at least 2 seeds (its 95% interval, and whether that excludes 0), else by
    whether the two unpaired intervals overlap. Pairing removes the seed-to-seed variance both
    share, so the two verdicts can differ; the paired one is the test."""
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
            d = (paired or {}).get(method, {}).get("accuracy")
            row.append(_versus(s["heldout"].get("accuracy", {}), base, method == baseline, d))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def has_interval(d: dict[str, Any] | None) -> bool:
    """Whether a paired difference (`paired_comparisons`) has a 95% interval: >= 2 seeds."""
    return bool(d) and d["n"] >= 2 and math.isfinite(d["half_width"])


def comparison_label(method: str, baseline: str) -> str:
    """The row label of a key of `paired_comparisons` (or an already full `paired_modes` one)."""
    if " - " in method:
        return method
    return f"{baseline} - untrained" if method == "untrained" else f"{method} - {baseline}"


def _versus(
    stat: dict[str, float],
    base: dict[str, float] | None,
    is_base: bool,
    paired: dict[str, Any] | None = None,
) -> str:
    if is_base:
        return "baseline"
    if has_interval(paired):
        verdict = "interval excludes 0" if paired["excludes_zero"] else "within noise"
        return (
            f"{paired['mean']:+.3f} [{paired['low']:+.3f}, {paired['high']:+.3f}] paired, {verdict}"
        )
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
    by_method = _by_method(runs)
    base = by_method.get(baseline, {})
    keys = list(keys or sorted({k for r in base.values() for k in r["heldout"]}))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    before = {s: r.get("heldout_before") or {} for s, r in base.items()}
    if base and all(before.values()):
        after = {s: r["heldout"] for s, r in base.items()}
        out["untrained"] = _paired_by_seed(after, before, keys)
    for method, seeds in by_method.items():
        if method == baseline:
            continue
        treated = {s: r["heldout"] for s, r in seeds.items() if s in base}
        if treated:
            out[method] = _paired_by_seed(treated, {s: base[s]["heldout"] for s in base}, keys)
    return out


TRAINING_KEYS = ("reward_std_mean", "reward_volatility", "final_reward")


def paired_training(
    runs: Sequence[dict[str, Any]], baseline: str, keys: Sequence[str] = TRAINING_KEYS
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per method, the paired difference from `baseline` of training statistics (the served
    policy's within-batch reward std, the reward curve's volatility, the mean reward of the
    last 5 steps), with `relative` = mean difference / the baseline's mean over the same
    seeds: the form of DuPO's "-34 % reward std" claim."""

    def stats(run: dict[str, Any]) -> dict[str, float]:
        row = {k: run.get(k, math.nan) for k in keys}
        if "final_reward" in keys:
            row["final_reward"] = finite_mean(run["reward_curve"][-5:])
        return {k: math.nan if v is None else float(v) for k, v in row.items()}

    by_method = _by_method(runs)
    base = {s: stats(r) for s, r in by_method.get(baseline, {}).items()}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method, seeds in by_method.items():
        treated = {s: stats(r) for s, r in seeds.items() if s in base}
        if method == baseline or not treated:
            continue
        diffs = _paired_by_seed(treated, {s: base[s] for s in treated}, keys)
        for key, d in diffs.items():
            level = finite_mean(base[s][key] for s in treated)
            d["relative"] = d["mean"] / level if level else math.nan
        out[method] = diffs
    return out


def paired_post_evals(
    runs: Sequence[dict[str, Any]], baseline: str, reference: str
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every method's post-training evaluations (`run["post_eval"][name]`, e.g. DuPO's
    explorer at pass@16) against the baseline's `reference` evaluation, paired by seed;
    keyed "method:name". Metrics: those both report."""
    by_method = _by_method(runs)
    base = {
        s: r["post_eval"][reference]
        for s, r in by_method.get(baseline, {}).items()
        if reference in r.get("post_eval", {})
    }
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method, seeds in by_method.items():
        names = sorted({n for r in seeds.values() for n in r.get("post_eval", {})})
        for name in names:
            if method == baseline and name == reference:
                continue
            treated = {
                s: r["post_eval"][name]
                for s, r in seeds.items()
                if s in base and name in r.get("post_eval", {})
            }
            if not treated:
                continue
            keys = sorted(set.intersection(*(set(m) for m in (*treated.values(), *base.values()))))
            out[f"{method}:{name}"] = _paired_by_seed(treated, {s: base[s] for s in treated}, keys)
    return out


def paired_modes(
    runs: Sequence[dict[str, Any]], contrasts: dict[str, tuple[str, str]]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Within one method, one post-evaluation minus another of the same run, paired by seed
    (`contrasts`: method -> (treated, control), e.g. Policy Split's high-entropy mode minus
    its normal mode, or DuPO's explorer minus its exploiter): what the method's second
    policy adds, with the same checkpoint, seed and problems on both sides. Keyed
    "method:treated - method:control"; metrics: those both report."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method, seeds in _by_method(runs).items():
        if method not in contrasts:
            continue
        treated_name, control_name = contrasts[method]
        both = {s: r["post_eval"] for s, r in seeds.items()
                if {treated_name, control_name} <= set(r.get("post_eval", {}))}  # fmt: skip
        if not both:
            continue
        treated = {s: e[treated_name] for s, e in both.items()}
        control = {s: e[control_name] for s, e in both.items()}
        label = f"{method}:{treated_name} - {method}:{control_name}"
        out[label] = _paired_on_shared_metrics(treated, control)
    return out


def paired_methods(
    runs: Sequence[dict[str, Any]], contrasts: Sequence[tuple[str, str]]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Two methods other than the baseline against each other, paired by seed
    (`contrasts`: (treated, control) pairs, e.g. GD²PO minus GDPO, whose claim is over GDPO
    rather than over the suite's baseline). Keyed "treated - control"; held-out metrics both
    report, over the seeds both ran."""
    by_method = _by_method(runs)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for treated_name, control_name in contrasts:
        treated_runs, control_runs = (
            by_method.get(treated_name, {}),
            by_method.get(control_name, {}),
        )
        seeds = sorted(set(treated_runs) & set(control_runs))
        if not seeds:
            continue
        treated = {s: treated_runs[s]["heldout"] for s in seeds}
        control = {s: control_runs[s]["heldout"] for s in seeds}
        out[f"{treated_name} - {control_name}"] = _paired_on_shared_metrics(treated, control)
    return out


def _by_method(runs: Sequence[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    by_method: dict[str, dict[int, dict[str, Any]]] = {}
    for run in runs:
        by_method.setdefault(run["method"], {})[run["seed"]] = run
    return by_method


def _paired_by_seed(
    treated: dict[int, dict[str, float]], control: dict[int, dict[str, float]], keys
) -> dict[str, dict[str, Any]]:
    """`paired_difference` per key over the seeds of `treated` (all present in `control`)."""
    return {
        k: paired_difference(
            {s: treated[s].get(k, math.nan) for s in treated},
            {s: control[s].get(k, math.nan) for s in treated},
        ).to_dict()
        for k in keys
    }


def _paired_on_shared_metrics(
    treated: dict[int, dict[str, float]], control: dict[int, dict[str, float]]
) -> dict[str, dict[str, Any]]:
    """`_paired_by_seed` over the metrics every run on both sides reports."""
    keys = sorted(set.intersection(*(set(m) for m in (*treated.values(), *control.values()))))
    return _paired_by_seed(treated, control, keys)


def paired_table(paired: dict[str, dict[str, dict[str, Any]]], baseline: str) -> str:
    """One row per comparison and metric: mean difference, 95% interval, detectable effect
    (power 0.8) and whether the interval excludes zero."""
    head = ["comparison", "held-out metric", "seeds", "mean difference", "95% interval",
            "detectable effect", "interval excludes 0"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for method, metrics in paired.items():
        label = comparison_label(method, baseline)
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


def training_table(paired: dict[str, dict[str, dict[str, Any]]], baseline: str) -> str:
    """`paired_training` as rows: method, statistic, seeds, difference, interval, relative."""
    head = ["comparison", "training statistic", "seeds", "mean difference", "95% interval",
            "relative to baseline", "interval excludes 0"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for method, stats in paired.items():
        for key, d in stats.items():
            if d["n"] == 0:
                continue
            finite = math.isfinite(d["half_width"])
            interval = f"[{d['low']:+.3f}, {d['high']:+.3f}]" if finite else "n/a"
            rel = f"{d['relative']:+.0%}" if math.isfinite(d["relative"]) else "n/a"
            row = [f"{method} - {baseline}", key, str(d["n"]), f"{d['mean']:+.3f}", interval,
                   rel, "yes" if d["excludes_zero"] else "no"]  # fmt: skip
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
