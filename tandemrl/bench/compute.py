"""`tandem bench compute`: what the compute settings cost and save, each variant against its
baseline in the same command. Writes `benchmarks/results/compute-<date>.json` and `.md`.

    flock /tmp/tandem-heavy.lock tandem bench compute [--what precision,checkpointing,fsdp2]
        [--steps 4] [--repeats 2] [--model smollm2-135m]

- `precision`: GRPO with LoRA (the CPU default path) at `precision=fp32` against `bf16-mixed`:
  median step time per phase, peak RSS, on this machine's CPU (recorded: bf16 autocast is
  fast only where the CPU has bf16 units, AMX or AVX512-BF16).
- `checkpointing`: full fine-tuning with `gradient_checkpointing=false` against `true`:
  peak RSS and step time, at `--ckpt-micro-batch` rows per microbatch (activations grow
  with it; the weights, gradients and AdamW state do not).
- `fsdp2`: full fine-tuning in one process against `torchrun --nproc_per_node 2` with
  `distributed.strategy=fsdp2`, on the same global batch: peak RSS per rank (the largest
  rank's) against the single process's.

Every run is its own `tandem train` process (peak RSS is per run; ranks report theirs and
the run logs the largest). Step 1 of each run is warm-up and dropped; the other steps of
all repeats are pooled and their median taken. Runs alternate baseline and variant.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from tandemrl.bench import report
from tandemrl.bench.speed import _run, new_result, record_run
from tandemrl.runtime.records import read_metrics

# (what, variant name, extra keys, processes); the first variant of each `what` is its baseline
VARIANTS: list[tuple[str, str, list[str], int]] = [
    ("precision", "fp32", ["lora.enabled=true", "precision=fp32"], 1),
    ("precision", "bf16-mixed", ["lora.enabled=true", "precision=bf16-mixed"], 1),
    (
        "checkpointing",
        "no-checkpointing",
        ["lora.enabled=false", "gradient_checkpointing=false"],
        1,
    ),
    ("checkpointing", "checkpointing", ["lora.enabled=false", "gradient_checkpointing=true"], 1),
    ("fsdp2", "1-process", ["lora.enabled=false"], 1),
    ("fsdp2", "fsdp2-2-ranks", ["lora.enabled=false", "distributed.strategy=fsdp2"], 2),
]
WHATS = ("precision", "checkpointing", "fsdp2")
PHASES = ("step_s", "generate_s", "logprob_s", "update_s")


def common_args(ns: argparse.Namespace, what: str) -> list[str]:
    micro = ns.ckpt_micro_batch if what == "checkpointing" else ns.micro_batch
    tokens = ns.ckpt_tokens if what == "checkpointing" else ns.tokens
    return [
        f"model={ns.model}",
        f"task={ns.task}",
        f"rollout.prompts_per_step={ns.prompts}",
        f"rollout.group_size={ns.group}",
        f"rollout.max_new_tokens={tokens}",
        f"optim.micro_batch_size={micro}",
        f"optim.lr={ns.lr}",
        f"seed={ns.seed}",
        f"steps={ns.steps}",
        "device=cpu",
        "eval.before=false",
        "eval.after=false",
        "log.progress=false",
        "log.trackers=[]",
        "checkpoint.keep=1",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_variant(
    ns: argparse.Namespace, what: str, name: str, extra: list[str], procs: int, rep: int, tmp: Path
) -> dict[str, Any]:
    run_dir = tmp / f"{name}-{rep}"
    launcher = [sys.executable, "-m", "tandemrl.cli"]
    if procs > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                    str(procs), "--master_port", str(_free_port()), "-m", "tandemrl.cli"]  # fmt: skip
    cmd = [*launcher, "train", *common_args(ns, what), *extra, f"output_dir={run_dir}"]
    wall = _run(cmd, tmp / f"{name}-{rep}.log")
    records = read_metrics(run_dir / "metrics.jsonl")
    per_step = [
        {
            "step": r["step"],
            **{p: r.get(f"time/{p}") for p in PHASES},
            "peak_rss_mb": r["memory/peak_rss_mb"],
        }
        for r in records
    ]
    shown = ["tandem", *cmd[cmd.index("train") :]]
    if procs > 1:
        shown = ["torchrun", "--nproc_per_node", str(procs), "-m", "tandemrl.cli", *shown[1:]]
    return {
        "what": what,
        "name": name,
        "repeat": rep,
        "processes": procs,
        "command": shlex.join(str(c) for c in shown),
        "per_step": per_step,
        "peak_rss_mb": max(s["peak_rss_mb"] for s in per_step),
        "wall_s": wall,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per variant: median of each phase over steps 2.. of every repeat, the largest peak RSS;
    per `what`: each variant's ratio to the baseline (the first variant)."""
    out: dict[str, Any] = {}
    for what in WHATS:
        names = [n for w, n, _, _ in VARIANTS if w == what]
        rows: dict[str, Any] = {}
        for name in names:
            mine = [r for r in runs if r["name"] == name]
            if not mine:
                continue
            steps = [s for r in mine for s in report.measured_steps(r["per_step"])]
            rows[name] = {
                **{p: report.median(s[p] for s in steps) for p in PHASES},
                "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
                "runs": len(mine),
                "steps_pooled": len(steps),
            }
        if names and names[0] in rows:
            base = rows[names[0]]
            for name in names[1:]:
                if name in rows:
                    rows[name]["step_ratio"] = rows[name]["step_s"] / base["step_s"]
                    rows[name]["update_ratio"] = rows[name]["update_s"] / base["update_s"]
                    rows[name]["rss_ratio"] = rows[name]["peak_rss_mb"] / base["peak_rss_mb"]
        if rows:
            out[what] = rows
    return out


def to_markdown(result: dict[str, Any]) -> str:
    m, s = result["machine"], result["settings"]
    units = ", ".join(m.get("cpu_units", [])) or "units not recorded"
    header = ["what", "variant", "step s", "generate s", "logprob s", "update s", "peak RSS MB",
              "step x", "update x", "RSS x"]  # fmt: skip
    rows = [
        [what, name, *(r[p] for p in PHASES), f"{r['peak_rss_mb']:.0f}"]
        + [r.get(k) for k in ("step_ratio", "update_ratio", "rss_ratio")]
        for what, variants in result["summary"].items()
        for name, r in variants.items()
    ]
    commands = {run["name"]: run["command"] for run in reversed(result["runs"])}
    lines = [
        f"# tandem bench compute, {result['date']}",
        "",
        f"`{result['command']}`",
        "",
        f"Machine: {m['cpu']} ({units}), {m['nproc']} cores, {m['mem_gb']} GB; torch "
        f"{result['versions'].get('torch')}, commit {result['versions'].get('git_commit')}.",
        f"Model {s['model']}, task {s['task']}, {s['prompts']} prompts x {s['group']} samples, "
        f"{s['steps']} steps per run (step 1 dropped), {s['repeats']} repeat(s).",
        "",
        report.markdown_table(header, rows, digits=2),
        "",
        "Commands (one per variant):",
        "",
        *(f"- {name}: `{command}`" for name, command in reversed(commands.items())),
        *(f"- FAILED: {err.splitlines()[0]}" for err in result.get("failed", [])),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="tandem bench compute", description=__doc__.split("\n\n")[0].replace("`", "")
    )
    p.add_argument("--what", default=",".join(WHATS), help=", ".join(WHATS))
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="arith2")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=4)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--ckpt-micro-batch", type=int, default=32, help="checkpointing runs")
    p.add_argument("--ckpt-tokens", type=int, default=64, help="checkpointing runs")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--name", default=None, help="file stem (default compute-<date>)")
    ns = p.parse_args(argv)
    ns.what = [w for w in ns.what.split(",") if w]
    bad = [w for w in ns.what if w not in WHATS]
    if bad:
        p.error(f"unknown --what {bad}; use {', '.join(WHATS)}")
    return ns


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = parse_args(argv)
    now = _dt.datetime.now(_dt.UTC)
    out_dir = Path(ns.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = ns.name or f"compute-{now:%Y-%m-%d}"
    keys = ("model", "task", "prompts", "group", "tokens", "micro_batch", "ckpt_micro_batch")
    keys += ("ckpt_tokens", "lr", "seed", "steps", "repeats", "what")
    result = new_result("compute", argv, {k: getattr(ns, k) for k in keys})

    def write() -> None:
        result["summary"] = summarize(result["runs"])
        (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2))
        (out_dir / f"{stem}.md").write_text(to_markdown(result))

    with tempfile.TemporaryDirectory(prefix="bench-compute-") as tmp_name:
        for what in ns.what:
            variants = [v for v in VARIANTS if v[0] == what]
            for rep in range(ns.repeats):
                for _, name, extra, procs in variants:  # baseline, then variant, alternating
                    args = (ns, what, name, extra, procs, rep, Path(tmp_name))
                    record_run(result, lambda args=args: run_variant(*args), rep)
                    write()  # partial results survive a crash or a stop
    result["complete"] = True
    write()
    print(to_markdown(result))
    print(f"[bench] wrote {out_dir / stem}.json and .md", file=sys.stderr)
    return 1 if result.get("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
