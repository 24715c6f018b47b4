"""Compare training runs: each named reward's curve, chosen metrics, and held-out results.

    python scripts/compare_runs.py sum=runs/fc_sum gdpo=runs/fc_gdpo gd2po=runs/fc_gd2po \
        --out runs/fc_compare.png [--metric multi_reward/conflict_rate ...]

For each run (label=run_dir) it reads `metrics.jsonl` and, when present, `summary.json`, and
prints one table: every `reward/<name>/mean` and each `--metric` averaged over the first and
the last `--window` steps, then the held-out `accuracy` (before -> after) and any other
`greedy/<metric>` after training. With `--out` it draws one panel per reward/metric, one line
per run (matplotlib, file only).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def read_run(run_dir: Path) -> tuple[list[dict], dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return records, summary


def series(records: list[dict], key: str) -> list[float]:
    out = []
    for rec in records:
        value = rec.get(key)
        out.append(float(value) if isinstance(value, (int, float)) else math.nan)
    return out


def window_mean(values: list[float], window: int, last: bool) -> float:
    part = values[-window:] if last else values[:window]
    finite = [v for v in part if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="label=run_dir")
    parser.add_argument("--metric", action="append", default=[], help="extra metric to show")
    parser.add_argument("--window", type=int, default=3, help="steps averaged at each end")
    parser.add_argument("--out", help="write a PNG with one panel per curve")
    args = parser.parse_args(argv)
    runs = {}
    for item in args.runs:
        label, _, path = item.partition("=")
        runs[label] = read_run(Path(path or label))
    seen = {k for records, _ in runs.values() for rec in records for k in rec}
    named = sorted(k for k in seen if k.startswith("reward/") and k.endswith("/mean"))
    keys = [k for k in named if k != "reward/mean"]
    keys = ["reward/mean", *keys, *args.metric]
    w = args.window
    print(f"| metric (first {w} -> last {w} steps) | " + " | ".join(runs) + " |")
    print("| --- |" + " --- |" * len(runs))
    for key in keys:
        cells = []
        for records, _ in runs.values():
            values = series(records, key)
            first, last = window_mean(values, w, False), window_mean(values, w, True)
            cells.append(f"{first:.3f} -> {last:.3f}")
        print(f"| {key} | " + " | ".join(cells) + " |")
    for name in ("accuracy",):
        cells = []
        for _, summary in runs.values():
            before = summary.get("eval/before", {}).get(name)
            after = summary.get("eval/after", {}).get(name)
            fmt = [f"{v:.3f}" if isinstance(v, (int, float)) else "-" for v in (before, after)]
            cells.append(" -> ".join(fmt))
        print(f"| held-out {name} (before -> after) | " + " | ".join(cells) + " |")
    extra = sorted(
        {
            k
            for _, s in runs.values()
            for k in s.get("eval/after", {})
            if k.startswith("greedy/") and k != "greedy/correct"
        }
    )
    for key in extra:
        cells = []
        for _, summary in runs.values():
            value = summary.get("eval/after", {}).get(key)
            cells.append(f"{value:.3f}" if isinstance(value, (int, float)) else "-")
        print(f"| held-out {key} (after) | " + " | ".join(cells) + " |")
    if args.out:
        plot(runs, keys, args.out)
        print(f"wrote {args.out}")


def plot(runs: dict, keys: list[str], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(10, 3 * rows), squeeze=False, sharex=True)
    for ax, key in zip(axes.flat, keys, strict=False):
        for label, (records, _) in runs.items():
            ax.plot([r["step"] for r in records], series(records, key), marker=".", label=label)
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
