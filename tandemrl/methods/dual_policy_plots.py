"""Plots of per-policy metrics over steps (the dual-policy method's
`explore/...` vs `exploit/...`).

    python -m tandemrl.methods.dual_policy_plots runs/a            # writes runs/a/policies.png

reads `metrics.jsonl` and draws, for each policy prefix, task reward and diversity per step.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

from tandemrl.runtime.records import read_metrics

PANELS = (
    ("reward/mean", "task reward (mean)"),
    ("diversity/distinct_answers", "distinct answers per prompt"),
    ("diversity/distinct_2", "distinct-2 within a prompt"),
    ("novelty/mean", "novelty vs exploiter (n-gram)"),
)


def plot_policies(
    records: Sequence[dict], path: str | Path, policies: Sequence[str] = ("explore", "exploit")
) -> Path:
    """One panel per metric in `PANELS`, one line per policy; x = the record's `step`."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    for ax, (key, title) in zip(axes.flat, PANELS, strict=True):
        for policy in policies:
            xs, ys = [], []
            for i, rec in enumerate(records):
                value = rec.get(f"{policy}/{key}")
                if isinstance(value, (int, float)) and math.isfinite(value):
                    xs.append(rec.get("step", i + 1))
                    ys.append(value)
            if xs:
                ax.plot(xs, ys, marker=".", label=policy)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.flat[0].legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m tandemrl.methods.dual_policy_plots RUN_DIR", file=sys.stderr)
        return 2
    run = Path(args[0])
    records = read_metrics(run / "metrics.jsonl")
    print(plot_policies(records, run / "policies.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
