"""`tandem bench methods`: methods x seeds on one task, same model and budget; held-out
accuracy with a 95% interval over seeds, steps to a target reward, reward spread, entropy and
held-out diversity; JSON, a Markdown table and PNG plots.

    tandem bench methods --suite maths --seeds 0,1,2          # hours on 2 CPU cores
    tandem bench methods --suite maths --quick                # tiny model, a few minutes
    tandem bench methods --suite fc --methods sum,gdpo --seeds 0,1,2
    tandem bench methods --suite engines --seeds 0,1,2        # the defaults, HF vs vLLM rollouts
    tandem bench methods --suite demo --seeds 0,1,2           # `make demo` over seeds
    tandem bench methods --suite powered                      # 8 methods x 5 seeds, 256 held-out

Each (method, seed) is one `tandem train` process on the suite's config for that method, with
`seed=S` and the same overrides for all. Runs live in `--runs-dir/<method>/seed<S>`; a run
whose `summary.json` exists from the same command line is reused, so an interrupted benchmark
picks up where it stopped. A suite's `post_evals` evaluate a run's last checkpoint again
(`tandem eval`, e.g. pass@16 of DuPO's explorer) into `post_eval-<name>.json`; checkpoints
are not committed, so `--retrain-for-post-evals` trains a finished run again when one is
missing. Only the baseline's runs evaluate the untrained model (`before`):
every method starts from the same weights, so that point is shared by all curves. A suite
whose untrained score does not depend on the seed (greedy evaluation, held-out split fixed by
the task's own seed) names the seeds that measure it in `untrained_seeds`; the others reuse it.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tandemrl.bench.method_stats import (
    aggregate,
    heldout_metrics,
    markdown_table,
    mechanism_table,
    paired_comparisons,
    paired_methods,
    paired_modes,
    paired_post_evals,
    paired_table,
    paired_training,
    run_record,
    training_table,
)
from tandemrl.bench.plots import plot_curves, plot_differences
from tandemrl.bench.speed import machine_info, versions
from tandemrl.runtime.records import read_metrics

REPO = Path(__file__).resolve().parents[2]
PASS16 = ["eval.size=64", "eval.pass_k=16"]
SUITES: dict[str, dict[str, Any]] = {
    "maths": {
        "baseline": "grpo",
        "target": 0.25,  # trailing 5-step mean training reward (GRPO on arith2 hovers 0.15-0.3)
        "methods": {
            "grpo": "configs/grpo_arith2.yaml",
            "dupo": "configs/dupo_arith2.yaml",
            "policy_split": "configs/policy_split_arith2.yaml",
            "dipo": "configs/dipo_arith2.yaml",
            "duality": "configs/duality_arith2.yaml",
            "ppo": "configs/ppo_arith2.yaml",
            "dpo": "configs/dpo_online_arith2.yaml",
            "ipo": "configs/ipo_online_arith2.yaml",
        },
    },
    # The README's main job (`make demo`, configs/demo.yaml) over seeds: GRPO against the
    # untrained model, paired by seed. The demo evaluates greedily to stay short; here 4
    # samples per problem at the training temperature add sampled accuracy and pass@2/4.
    "demo": {
        "baseline": "grpo",
        "target": 0.4,
        "overrides": ["eval.pass_k=4", "eval.batch_size=32"],
        "methods": {"grpo": "configs/demo.yaml"},
    },
    # The powered comparison (docs/benchmarks.md): the demo's settings (configs/demo.yaml) for
    # every method, 256 held-out problems, seeds 0-4 paired; each method's difference from GRPO
    # with its interval and detectable effect. Checkpoints every 5 steps: a run stopped midway
    # resumes instead of starting over.
    "powered": {
        "baseline": "grpo",
        "target": 0.4,
        "seeds": "0,1,2,3,4",
        # Committed (checkpoints left out, .gitignore there): a later session or another clone
        # reuses every finished run and continues with the rest.
        "runs_dir": "benchmarks/results/methods-powered/runs",
        "overrides": [
            "steps=20",
            "rollout.temperature=0.7",
            "eval.pass_temperature=0.7",
            "optim.lr=2.0e-4",
            "task_options.eval_size=256",
            "eval.size=256",
            "eval.pass_k=4",
            "checkpoint.every=5",
        ],
        # DuPO sets its two policies' lrs itself: the exploiter gets the suite's, the
        # explorer twice that, as in configs/dupo_arith2.yaml. The duality reward asks its
        # dual questions solved for x, a form SmolLM2-135M can answer (docs/duality.md:
        # backward accuracy 0.31 on right answers against 0.065 as equations).
        "method_overrides": {
            "dupo": ["dupo.lr_exploit=2.0e-4", "dupo.lr_explore=4.0e-4"],
            "duality": ["duality.dual_form=solved"],
        },
        # Diversity where it is claimed (Policy Split's high-entropy mode, DuPO's explorer):
        # each last checkpoint evaluated again with 16 samples on the first 64 held-out
        # problems (pass@2..16, distinct answers), paired with GRPO's same evaluation.
        "reference_eval": "pass16",
        "post_evals": {
            "grpo": {"pass16": PASS16},
            "policy_split": {
                "pass16": PASS16,
                "pass16-high_entropy": [*PASS16, "mode=high_entropy"],
            },
            "dupo": {"pass16": PASS16, "pass16-explore": [*PASS16, "policy=explore"]},
        },
        # The diversity each second policy adds, within the run (free of seed variance).
        "mode_contrasts": {
            "policy_split": ("pass16-high_entropy", "pass16"),
            "dupo": ("pass16-explore", "pass16"),
        },
        "methods": {
            "grpo": "configs/grpo_arith2.yaml",
            "dipo": "configs/dipo_arith2.yaml",
            "policy_split": "configs/policy_split_arith2.yaml",
            "dupo": "configs/dupo_arith2.yaml",
            "ppo": "configs/ppo_arith2.yaml",
            "dpo": "configs/dpo_online_arith2.yaml",
            "ipo": "configs/ipo_online_arith2.yaml",
            "duality": "configs/duality_arith2.yaml",
        },
    },
    # The demo with each rollout engine (docs/vllm.md): same accuracy band expected.
    "engines": {
        "baseline": "hf",
        "target": 0.25,
        "methods": {"hf": "configs/demo_hf.yaml", "vllm": "configs/demo_vllm.yaml"},
    },
    # GD²PO against GDPO and the plain sum, powered: 256 held-out BFCL questions (of 400:
    # 144 train, 10 steps x 8 prompts use 80), seeds 0-4 paired; results.md's mechanisms
    # table has the conflict rate and the share kept (`multi_reward/`, `gd2po/`).
    "fc-powered": {
        "baseline": "sum",
        "target": 0.3,
        "seeds": "0,1,2,3,4",
        "runs_dir": "benchmarks/results/methods-fc-powered/runs",
        # The held-out split depends on task_options.seed, not the run's seed, and the
        # evaluation is greedy: the untrained score is the same for every seed (seeds 0 and 1
        # both measured 0.133 exact call, every metric equal), so seeds 2-4 reuse it instead
        # of spending 12-16 min each on it again (`share_before`).
        "untrained_seeds": "0,1",
        # GD²PO's claim is over GDPO (conflict filtering and query reweighting on top of
        # per-reward normalisation), so it is paired with GDPO too, not only with the sum.
        "method_contrasts": [("gd2po", "gdpo")],
        "overrides": [
            "steps=10",
            "task_options.eval_size=256",
            "eval.size=256",
            "checkpoint.every=5",
        ],  # fmt: skip
        "methods": {
            "sum": "configs/fc_sum.yaml",
            "gdpo": "configs/fc_gdpo.yaml",
            "gd2po": "configs/fc_gd2po.yaml",
        },
    },
    "fc": {
        "baseline": "sum",
        "target": 0.3,
        "methods": {
            "sum": "configs/fc_sum.yaml",
            "gdpo": "configs/fc_gdpo.yaml",
            "gd2po": "configs/fc_gd2po.yaml",
        },
    },
}
# --quick: the random tiny model, a few short steps: checks the whole pipeline, not the methods.
QUICK = ["model=tiny", "lora.enabled=true", "steps=4", "rollout.prompts_per_step=4",
         "rollout.max_new_tokens=8", "eval.size=8", "eval.pass_k=2", "eval.every=2",
         "optim.micro_batch_size=16"]  # fmt: skip
COMMON = ["log.progress=false", "log.tensorboard=false", "eval.show_examples=0"]
QUICK_EVAL = ["eval.size=4"]  # --quick post-evaluations: the tiny model, a few problems


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tandem bench methods", description=__doc__.split("\n")[0])
    p.add_argument("--suite", choices=sorted(SUITES), default="maths")
    p.add_argument("--methods", help="comma-separated subset of the suite's methods")
    p.add_argument("--seeds", help="comma-separated seeds (default: the suite's, else 0,1,2)")
    p.add_argument("--quick", action="store_true", help="tiny model, 4 steps: minutes")
    p.add_argument("--eval-every", type=int, default=0, help="held-out eval every N steps")
    p.add_argument("--target", type=float, help="training reward for 'steps to target'")
    p.add_argument("--runs-dir", help="where the runs go (default runs/bench_methods/...)")
    p.add_argument("--method-runs-dir", action="append", default=[], metavar="METHOD=DIR",
                   help="one method's runs in another folder than --runs-dir (repeatable): a "
                        "run is reused only when it finished there with this command")  # fmt: skip
    p.add_argument(
        "--report-only",
        action="store_true",
        help="write results from the runs already finished; train nothing",
    )
    p.add_argument("--retrain-for-post-evals", action="store_true",
                   help="train a finished run again when its checkpoint is gone and one of the "
                        "suite's post-training evaluations is missing")  # fmt: skip
    p.add_argument("--out", help="results folder (default benchmarks/results/methods-...)")
    p.add_argument("overrides", nargs="*", help="key=value applied to every run")
    ns = p.parse_args(argv)
    suite = SUITES[ns.suite]
    ns.method_names = ns.methods.split(",") if ns.methods else list(suite["methods"])
    unknown = [m for m in ns.method_names if m not in suite["methods"]]
    if unknown:
        p.error(f"--methods: {unknown} not in suite {ns.suite!r} ({', '.join(suite['methods'])})")
    ns.seeds = ns.seeds or suite.get("seeds", "0,1,2")
    ns.seed_list = [int(s) for s in ns.seeds.split(",") if s.strip()]
    tag = f"methods-{ns.suite}{'-quick' if ns.quick else ''}"
    committed = None if ns.quick else suite.get("runs_dir")
    ns.runs_dir = Path(ns.runs_dir or committed or f"runs/bench_methods/{tag}")
    ns.method_runs_dirs = {}
    for item in ns.method_runs_dir:
        method, sep, folder = item.partition("=")
        if not sep or not folder or method not in suite["methods"]:
            p.error(f"--method-runs-dir {item!r}: expected METHOD=DIR with METHOD one of "
                    f"{', '.join(suite['methods'])}")  # fmt: skip
        ns.method_runs_dirs[method] = Path(folder)
    ns.out = Path(ns.out or f"benchmarks/results/{tag}")
    ns.target = suite["target"] if ns.target is None else ns.target
    return ns


def run_dir_of(ns: argparse.Namespace, method: str, seed: int) -> Path:
    """Where (method, seed) trains: `--method-runs-dir` for that method, else `--runs-dir`."""
    return ns.method_runs_dirs.get(method, ns.runs_dir) / method / f"seed{seed}"


def config_path(relative: str) -> Path | None:
    """The suite's config, relative to the working directory or else to the repository."""
    for base in (Path.cwd(), REPO):
        if (base / relative).is_file():
            return base / relative
    return None


def train_command(ns: argparse.Namespace, method: str, seed: int, config: Path) -> list[str]:
    args = [sys.executable, "-m", "tandemrl.cli", "train", str(config), f"seed={seed}"]
    args += [f"output_dir={run_dir_of(ns, method, seed)}", *COMMON]
    args += SUITES[ns.suite].get("overrides", [])
    args += SUITES[ns.suite].get("method_overrides", {}).get(method, [])
    args += QUICK if ns.quick else []
    args += [f"eval.before={'true' if evaluates_untrained(ns.suite, method, seed) else 'false'}"]
    if ns.eval_every:
        args.append(f"eval.every={ns.eval_every}")
    return args + list(ns.overrides)


def launch(cmd: list[str], log: Path) -> int:
    """Run one training process, its output to `log`; its exit code."""
    with log.open("w") as out:
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT).returncode


def portable_command(cmd: list[str]) -> list[str]:
    """`cmd` without the interpreter and with paths inside the repository made relative to
    it: what a run's stamp records, so that committed runs are reused from any clone."""
    root = f"{REPO}{os.sep}"

    def relative(arg: str) -> str:
        key, sep, value = arg.partition("=")  # `output_dir=<path>` as much as a bare path
        if sep and value.startswith(root):
            return f"{key}={value[len(root) :]}"
        return arg[len(root) :] if arg.startswith(root) else arg

    return [relative(a) for a in cmd[1:]]


def same_command(cmd: list[str], run_dir: Path) -> bool:
    """Whether `run_dir` was started by this exact command."""
    stamp = run_dir / "bench_command.json"
    # older stamps hold the absolute config path: still the same command on this machine
    return stamp.is_file() and json.loads(stamp.read_text()) in (portable_command(cmd), cmd[1:])


def run_one(cmd: list[str], run_dir: Path, again: bool = False) -> tuple[list[dict], dict]:
    """Train (unless this exact command already finished there, or `again`); return records,
    summary."""
    stamp = run_dir / "bench_command.json"
    summary_path = run_dir / "summary.json"
    portable = portable_command(cmd)
    same = same_command(cmd, run_dir) and not again
    if not (same and summary_path.is_file()):
        run_dir.mkdir(parents=True, exist_ok=True)
        summary_path.unlink(missing_ok=True)
        stamp.write_text(json.dumps(portable))
        # which machine and code trained it: a committed run may be reused elsewhere
        (run_dir / "bench_machine.json").write_text(
            json.dumps({"machine": machine_info(), "versions": versions()}, indent=2)
        )
        # the same command interrupted: continue it; another command's files: replace them
        code = launch([*cmd, "resume=auto" if same else "overwrite=true"], run_dir / "bench.log")
        if code:
            tail = "\n".join((run_dir / "bench.log").read_text().splitlines()[-12:])
            raise RuntimeError(f"exit {code}; last lines of {run_dir}/bench.log:\n{tail}")
    return read_metrics(run_dir / "metrics.jsonl"), json.loads(summary_path.read_text())


def post_evaluate(
    ns: argparse.Namespace,
    method: str,
    run_dir: Path,
    summary: dict[str, Any],
    evaluate: bool = True,
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """The suite's evaluations after training for `method` (`post_evals`: name -> extra
    `tandem eval` arguments, e.g. pass@16 of DuPO's explorer) on the run's last checkpoint;
    each result is kept as `post_eval-<name>.json` with its command and reused when the
    command is the same (`evaluate` False: only those). Returns the held-out metrics per
    name, and why any is missing."""
    done: dict[str, dict[str, float]] = {}
    missing: dict[str, str] = {}
    checkpoint = summary.get("checkpoint")
    for name, extra in SUITES[ns.suite].get("post_evals", {}).get(method, {}).items():
        path = run_dir / f"post_eval-{name}.json"
        cmd = [sys.executable, "-m", "tandemrl.cli", "eval", f"checkpoint={checkpoint}", *extra]
        cmd += [*COMMON, *(QUICK_EVAL if ns.quick else [])]
        stored = json.loads(path.read_text()) if path.is_file() else {}
        if stored.get("command") != portable_command(cmd):
            if not evaluate:
                missing[name] = "not evaluated yet"
                continue
            ckpt = Path(checkpoint) if checkpoint else None
            if ckpt is None or not ckpt.is_dir():
                missing[name] = (
                    f"checkpoint {checkpoint} is gone (not committed): "
                    "--retrain-for-post-evals trains the run again to evaluate it"
                )
                continue
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path.cwd())
            if proc.returncode:
                tail = "\n".join(proc.stderr.splitlines()[-8:])
                missing[name] = f"tandem eval exit {proc.returncode}: {tail}"
                continue
            result = json.loads(proc.stdout[proc.stdout.index("{") :])
            stored = {"command": portable_command(cmd), "result": result}
            path.write_text(json.dumps(stored, indent=2))
        done[name] = heldout_metrics(stored["result"])
    return done, missing


def evaluates_untrained(suite: str, method: str, seed: int) -> bool:
    """Whether the run of (method, seed) evaluates the untrained model: the baseline's runs
    do, all of them unless the suite names `untrained_seeds` (its untrained score does not
    depend on the seed; `share_before` gives it to the other seeds)."""
    spec = SUITES[suite]
    if method != spec["baseline"]:
        return False
    seeds = spec.get("untrained_seeds")
    return seeds is None or seed in {int(s) for s in seeds.split(",")}


def share_before(runs: list[dict[str, Any]], baseline: str, any_seed: bool = False) -> None:
    """Give every method's curve the baseline's step-0 point of the same seed. `any_seed`
    (a suite whose untrained score does not depend on the seed): a seed without one takes
    the first seed's point, and the baseline's run its untrained metrics, for the paired
    "untrained" comparison."""

    def has_start(r: dict[str, Any]) -> bool:
        return bool(r["heldout_curve"]) and r["heldout_curve"][0][0] == 0

    base = sorted((r for r in runs if r["method"] == baseline), key=lambda r: r["seed"])
    before = {r["seed"]: (r["heldout_curve"][0], r["heldout_before"]) for r in base if has_start(r)}
    shared = next(iter(before.values()), None) if any_seed else None
    for r in runs:
        point = before.get(r["seed"], shared)
        if point is None:
            continue
        if not has_start(r):
            r["heldout_curve"].insert(0, list(point[0]))
        if r["method"] == baseline and not r.get("heldout_before"):
            r["heldout_before"] = dict(point[1])


def write_results(
    ns: argparse.Namespace,
    argv: list[str] | None,
    runs: list[dict[str, Any]],
    failed: dict[str, str],
    pending: dict[str, str],
    unfinished: list[tuple[str, int]],
) -> str:
    """results.json, results.md and the plots of the runs so far (`unfinished`: the plan's
    runs still to go, listed so that a partial result says it is one); the summary table."""
    suite = SUITES[ns.suite]
    runs = copy.deepcopy(runs)
    share_before(runs, suite["baseline"], any_seed="untrained_seeds" in suite)
    summary = aggregate(runs)
    paired = paired_comparisons(runs, suite["baseline"])
    training = paired_training(runs, suite["baseline"])
    reference = suite.get("reference_eval")
    post = paired_post_evals(runs, suite["baseline"], reference) if reference else {}
    modes = paired_modes(runs, suite.get("mode_contrasts", {}))
    head_to_head = paired_methods(runs, suite.get("method_contrasts", ()))
    ns.out.mkdir(parents=True, exist_ok=True)
    command = "tandem bench methods " + shlex.join(sys.argv[3:] if argv is None else argv)
    result = {
        "benchmark": "methods",
        "command": command.strip(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions(),
        "settings": {
            "suite": ns.suite,
            "quick": ns.quick,
            "seeds": ns.seed_list,
            "target_reward": ns.target,
            "overrides": ns.overrides,
        },  # fmt: skip
        "runs": runs,
        "summary": summary,
        "paired": paired,
        "paired_training": training,
        "paired_post_eval": post,
        "paired_modes": modes,
        "paired_methods": head_to_head,
        "failed": failed,
        "pending": pending,
        "unfinished": [f"{m}/seed{s}" for m, s in unfinished],
    }
    (ns.out / "results.json").write_text(json.dumps(result, indent=2))
    figures = plot_curves(runs, ns.out) if runs else []
    figures = plot_differences(paired, suite["baseline"], ns.out) + figures
    table = markdown_table(summary, suite["baseline"], paired)
    lines = [f"# Methods on `{ns.suite}`{' (quick: tiny random model)' if ns.quick else ''}", "",
             f"`{result['command']}` ({result['date']}, {result['machine']['nproc']} cores, "
             f"{result['machine']['cpu']}, commit {result['versions'].get('git_commit')})", "",
             "Held-out metrics after training: mean ± 95% t-interval over seeds. Steps to target:"
             f" first step whose trailing 5-step mean training reward reaches {ns.target}."
             f"{_hosts_note(runs)}", "",
             table, ""]  # fmt: skip
    if paired:
        lines += ["## Paired differences", "",
                  "Per seed, a method's held-out metric minus the baseline's on the same seed "
                  "(same prompt order and held-out problems); mean, 95% t-interval over seeds "
                  "and the smallest true difference detected with probability 0.8 at level 0.05 "
                  "(`tandemrl.bench.power`).", "", paired_table(paired, suite["baseline"]),
                  ""]  # fmt: skip
    if training:
        lines += ["## Training statistics, paired", "",
                  "The served policy's within-batch reward std (mean over steps), the reward "
                  "curve's step-to-step volatility (`method_stats.reward_volatility`) and the "
                  "mean reward of the last 5 steps: difference from the baseline on the same "
                  "seed, and relative to the baseline's mean.", "",
                  training_table(training, suite["baseline"]), ""]  # fmt: skip
    if post:
        lines += [f"## Evaluations after training, paired with {suite['baseline']}:{reference}",
                  "", "Each run's last checkpoint evaluated again (`post_evals` of the suite: "
                  "more samples per problem, other policies or modes); a method's evaluation "
                  "minus the baseline's on the same seed.", "",
                  paired_table(post, f"{suite['baseline']}:{reference}"), ""]  # fmt: skip
    if head_to_head:
        lines += ["## Methods against each other, paired", "",
                  "Two methods other than the baseline, the first minus the second on the same "
                  "seed (same prompt order and held-out problems).", "",
                  paired_table(head_to_head, ""), ""]  # fmt: skip
    if modes:
        lines += ["## A method's two policies, paired", "",
                  "The same run's last checkpoint evaluated with each of its policies or modes "
                  "(same seed and problems): the second minus the first.", "",
                  paired_table(modes, ""), ""]  # fmt: skip
    if mechanisms := mechanism_table(summary):
        lines += ["## Mechanisms", "", "What each method's own machinery did (its per-step "
                  "metrics, averaged over steps, then over seeds).", "", mechanisms, ""]  # fmt: skip
    lines += [f"![{f}]({f})" for f in figures]
    for name, why in {**pending, **failed}.items():
        lines.append(f"- not measured: {name}: {why.splitlines()[0]}")
    if unfinished:
        lines.append(f"- still to run: {', '.join(result['unfinished'])}")
    (ns.out / "results.md").write_text("\n".join(lines) + "\n")
    return table


def finished_run(
    ns: argparse.Namespace, method: str, seed: int, config: Path
) -> dict[str, Any] | None:
    """The record of (method, seed) when its run has finished with this command, with the
    post-evaluations already stored; None otherwise. Trains and evaluates nothing."""
    run_dir, summary = _finished_summary(ns, method, seed, config)
    if summary is None:
        return None
    evals = post_evaluate(ns, method, run_dir, summary, evaluate=False)[0]
    return _record(
        ns, method, seed, run_dir, read_metrics(run_dir / "metrics.jsonl"), summary, evals
    )


def bench_one(
    ns: argparse.Namespace, method: str, seed: int, config: Path
) -> tuple[dict[str, Any], dict[str, str]]:
    """One (method, seed): trained (or reused), post-evaluated; its run record and the
    post-evaluations it lacks. RuntimeError when training fails."""
    cmd = train_command(ns, method, seed, config)
    run_dir = run_dir_of(ns, method, seed)
    records, summary = run_one(cmd, run_dir)
    evals, missing = post_evaluate(ns, method, run_dir, summary)
    checkpoint = summary.get("checkpoint")
    if missing and ns.retrain_for_post_evals and not (checkpoint and Path(checkpoint).is_dir()):
        print(f"[bench methods] {method} seed {seed}: training again for its post-evaluations",
              file=sys.stderr, flush=True)  # fmt: skip
        records, summary = run_one(cmd, run_dir, again=True)
        evals, missing = post_evaluate(ns, method, run_dir, summary)
    return _record(ns, method, seed, run_dir, records, summary, evals), missing


def _record(ns, method, seed, run_dir, records, summary, evals) -> dict[str, Any]:
    """`run_record` with the run's post-evaluations and the machine that trained it."""
    run = run_record(method, seed, records, summary, ns.target)
    run["post_eval"] = evals
    trained_on = run_dir / "bench_machine.json"
    run["trained_on"] = json.loads(trained_on.read_text()) if trained_on.is_file() else None
    return run


def _finished_summary(
    ns: argparse.Namespace, method: str, seed: int, config: Path
) -> tuple[Path, dict[str, Any] | None]:
    """The run directory of (method, seed) and its summary when the run finished with this
    command (None otherwise)."""
    run_dir = run_dir_of(ns, method, seed)
    cmd = train_command(ns, method, seed, config)
    if not (same_command(cmd, run_dir) and (run_dir / "summary.json").is_file()):
        return run_dir, None
    return run_dir, json.loads((run_dir / "summary.json").read_text())


def has_work(ns: argparse.Namespace, method: str, seed: int, config: Path) -> bool:
    """Whether `bench_one` would train or evaluate (method, seed), rather than reuse it."""
    run_dir, summary = _finished_summary(ns, method, seed, config)
    if summary is None:
        return True
    if not post_evaluate(ns, method, run_dir, summary, evaluate=False)[1]:
        return False
    checkpoint = summary.get("checkpoint")
    return bool(ns.retrain_for_post_evals or (checkpoint and Path(checkpoint).is_dir()))


def time_left(worked_s: float, runs_worked: int, runs_to_work: int) -> str:
    """The progress line's estimate: the mean time of the runs trained so far in this call
    (reused runs take seconds and would make it absurdly short) times the runs still to
    train; empty before the first trained run."""
    if runs_worked == 0 or runs_to_work == 0:
        return ""
    minutes = worked_s / runs_worked * runs_to_work / 60
    return f", {runs_to_work} to train, about {minutes:.0f} min left"


def _hosts_note(runs: list[dict[str, Any]]) -> str:
    """A warning when the runs were trained on more than one host: step times then compare
    machines as much as methods (results do not depend on the host's speed)."""
    hosts = {(r.get("trained_on") or {}).get("machine", {}).get("platform") for r in runs}
    hosts.discard(None)
    if len(hosts) < 2:
        return ""
    return (
        f" Step times: the runs were trained on {len(hosts)} hosts (`trained_on` in"
        " results.json), whose speeds differ; compare step times only within one host."
    )


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(sys.argv[1:] if argv is None else argv)
    suite = SUITES[ns.suite]
    plan, pending = [], {}
    for method in ns.method_names:
        config = config_path(suite["methods"][method])
        if config is None:
            pending[method] = f"config {suite['methods'][method]} not found"
            continue
        plan += [(method, seed, config) for seed in ns.seed_list]
    runs, failed = [], {}
    if ns.report_only:
        return report_only(ns, argv, plan, pending)
    worked_s, runs_worked = 0.0, 0
    needs_work = [has_work(ns, *item) for item in plan]  # runs do not change each other's
    for i, (method, seed, config) in enumerate(plan, 1):
        eta = time_left(worked_s, runs_worked, sum(needs_work[i - 1 :]))
        print(
            f"[bench methods] {i}/{len(plan)} {method} seed {seed}{eta}",
            file=sys.stderr,
            flush=True,
        )
        started = time.perf_counter()
        try:
            run, missing = bench_one(ns, method, seed, config)
        except RuntimeError as err:  # one broken method must not cost the others' results
            failed[f"{method}/seed{seed}"] = str(err)
            print(f"[bench methods] {method} seed {seed} failed: {err}", file=sys.stderr)
            continue
        finally:
            if needs_work[i - 1]:
                worked_s += time.perf_counter() - started
                runs_worked += 1
        runs.append(run)
        pending.update({f"{method}/seed{seed}:{name}": why for name, why in missing.items()})
        if i < len(plan):  # a partial result to read while the rest runs
            # later runs that finished before (a committed earlier session) count already
            ahead = [(m, s, finished_run(ns, m, s, c)) for m, s, c in plan[i:]]
            done = [r for _, _, r in ahead if r is not None]
            to_go = [(m, s) for m, s, r in ahead if r is None]
            write_results(ns, argv, runs + done, failed, pending, to_go)
    table = write_results(ns, argv, runs, failed, pending, [])
    print(table)
    print(f"[bench methods] wrote {ns.out}/results.json, results.md and plots")
    return 1 if failed and not runs else 0


def report_only(
    ns: argparse.Namespace, argv: list[str] | None, plan: list, pending: dict[str, str]
) -> int:
    """`--report-only`: results from the runs that have finished; nothing trained."""
    found = [(m, s, finished_run(ns, m, s, c)) for m, s, c in plan]
    runs = [r for _, _, r in found if r is not None]
    table = write_results(ns, argv, runs, {}, pending, [(m, s) for m, s, r in found if r is None])
    print(table)
    print(f"[bench methods] {len(runs)} of {len(plan)} runs finished; wrote {ns.out}")
    return 0
