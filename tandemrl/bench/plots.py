"""The PNG figures of `tandem bench methods`: training and held-out curves per method, and the
paired differences from the baseline with their intervals (the figure the README shows)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tandemrl.bench.method_stats import comparison_label, has_interval


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def plot_curves(runs: list[dict[str, Any]], out: Path) -> list[str]:
    """reward.png (per method: mean training reward over seeds, min-max band) and
    heldout.png (per method: mean held-out accuracy over seeds at each evaluated step)."""
    plt = _pyplot()
    methods = list(dict.fromkeys(r["method"] for r in runs))
    written = []
    for name, key in (("reward.png", "reward_curve"), ("heldout.png", "heldout_curve")):
        fig, ax = plt.subplots(figsize=(7, 4))
        for method in methods:
            group = [r for r in runs if r["method"] == method]
            if key == "reward_curve":
                steps = range(1, max(len(r[key]) for r in group) + 1)
                cols = [[r[key][i] for r in group if i < len(r[key])] for i in range(len(steps))]
            else:
                points = sorted({s for r in group for s, _ in r[key]})
                steps = points
                cols = [[a for r in group for s, a in r[key] if s == p] for p in points]
            cols = [[v for v in c if math.isfinite(v)] for c in cols]
            mean = [sum(c) / len(c) if c else math.nan for c in cols]
            line = ax.plot(list(steps), mean, marker="o" if key != "reward_curve" else None,
                           label=f"{method} ({len(group)} seeds)")  # fmt: skip
            lo = [min(c) if c else math.nan for c in cols]
            hi = [max(c) if c else math.nan for c in cols]
            ax.fill_between(list(steps), lo, hi, alpha=0.15, color=line[0].get_color())
        ax.set_xlabel("step")
        ax.set_ylabel("training reward" if key == "reward_curve" else "held-out greedy accuracy")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def difference_rows(
    paired: dict[str, dict[str, dict[str, Any]]], baseline: str, metric: str
) -> list[tuple[str, dict[str, Any]]]:
    """(label, paired difference) for each comparison of `metric` with a finite interval, in
    the order of `paired`: "<baseline> - untrained" first when present, then "<method> -
    <baseline>". A comparison over fewer than 2 seeds has no interval and is left out."""
    return [
        (comparison_label(method, baseline), metrics[metric])
        for method, metrics in paired.items()
        if has_interval(metrics.get(metric))
    ]


def plot_differences(
    paired: dict[str, dict[str, dict[str, Any]]],
    baseline: str,
    out: Path,
    metric: str = "accuracy",
    name: str = "differences.png",
) -> list[str]:
    """`name`: one row per comparison, the mean paired difference in held-out `metric` with
    its 95 % interval, and in grey ± the detectable effect (`bench.power.paired_difference`):
    an interval inside the grey bar is a difference the design could not have found."""
    rows = difference_rows(paired, baseline, metric)
    if not rows:
        return []
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    for y, (_, d) in enumerate(reversed(rows)):
        mde = d["detectable"]
        if math.isfinite(mde):
            ax.plot([-mde, mde], [y, y], color="0.85", linewidth=9, solid_capstyle="butt")
        color = "tab:blue" if d["excludes_zero"] else "0.3"
        ax.errorbar(d["mean"], y, xerr=[[d["mean"] - d["low"]], [d["high"] - d["mean"]]],
                    fmt="o", color=color, capsize=4)  # fmt: skip
    ax.axvline(0.0, color="black", linewidth=0.8)
    labels = [f"{label} ({d['n']} seeds)" for label, d in reversed(rows)]
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_xlabel(f"held-out {metric}: paired difference, 95 % interval (grey: ± detectable)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return [name]
