"""`tandem bench speed`: tandemrl's GRPO against TRL's GRPOTrainer on the same configuration,
the cost of DuPO and Policy Split relative to GRPO, and the update's FLOP/s against this
machine's matmul peak. Writes `benchmarks/results/speed-<date>.json` and `.md`.

    flock /tmp/tandem-heavy.lock tandem bench speed [--what speed,methods-cost]
        [--configs lora,full] [--steps 4] [--repeats 2] [--methods policy_split,...]

`--what speed`: for each configuration (`lora`: LoRA r16 on all linear layers; `full`: full
fine-tune) and each repeat, one tandemrl run (`tandem train`) then one TRL run
(`python -m tandemrl.bench.trl_grpo`), alternating, each in its own process so that peak RSS
is per run. Both: the same model (smollm2-135m via tandemrl's loader), the same arith2
training prompts and chat template, 8 prompts x 4 samples, 32 new tokens, temperature 1.0,
lr 1e-4, microbatches of 8, one optimizer step per batch, no KL (beta=0), fp32. The prompt
order differs (each framework shuffles with its own sampler). See `trl_grpo` for how TRL is
configured and timed.

`--what methods-cost`: tandemrl runs of the methods in `--methods` on the LoRA settings,
each against its GRPO baseline: Policy Split against plain GRPO (the `lora` tandemrl runs of
`--what speed` when both run, else one GRPO run), DuPO against GRPO with the same KL
coefficient as DuPO's default (0.1; both then pay for the reference forward). Both generate
the same number of samples per step (DuPO: half from each policy; Policy Split: half per mode).

Statistics (`tandemrl.bench.report`): step 1 of each run is warm-up and dropped; the other
steps of all repeats are pooled and their median taken, per phase too. tokens/s = completion
tokens per step / step time. FLOP/s of the update = `report.update_flops` (2-4-6 rule, useful
tokens only; see its docstring) / median update time, against the best time of a 2048 x 2048
fp32 `torch.matmul` measured in the same command (before and after the runs).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tandemrl.bench import report
from tandemrl.runtime.records import read_metrics

ROWS_DEFAULTS = {"prompts": 8, "group": 4, "tokens": 32, "temperature": 1.0, "lr": 1e-4}
# Method-cost runs: extra `tandem train` arguments and the baseline each is compared with.
METHOD_RUNS: dict[str, tuple[list[str], str | None]] = {
    "grpo": (["method=grpo"], None),
    "grpo-kl": (["method=grpo", "grpo.kl_coef=0.1"], None),
    "policy_split": (["method=policy_split"], "grpo"),
    "dupo-simultaneous": (
        ["method=dupo", "dupo.schedule=simultaneous", "dupo.plot=false"],
        "grpo-kl",
    ),
    "dupo-alternating": (
        ["method=dupo", "dupo.schedule=alternating", "dupo.alternating_interval=2"]
        + ["dupo.plot=false"],
        "grpo-kl",
    ),
}
DEFAULT_METHODS = "policy_split,dupo-simultaneous"
TARGETS = {"tandem_vs_trl_step": 0.5, "dupo_memory": 1.1, "policy_split_time": 1.5}
# The vLLM engine (docs/vllm.md): its GRPO step at most 0.4x TRL's best configuration, and
# its generation at least 1.5x faster than the HF engine's in the same command.
VLLM_TARGETS = {"vllm_vs_trl_best_step": 0.4, "vllm_vs_hf_generate": 1 / 1.5}


# -- machine facts --------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor()
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "nproc": nproc,
        "cpu": cpu,
        "cpu_units": cpu_units(),
        "mem_gb": mem_gb,
        "platform": platform.platform(),
    }


def cpu_units() -> list[str]:
    """The vector units that decide CPU matmul speed here (bf16 autocast is fast only with
    avx512_bf16 or amx_bf16), from /proc/cpuinfo's flags."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("tandemrl", "torch", "transformers", "trl", "peft", "accelerate"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    try:
        out["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "tandemrl"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if dirty:  # other work in the tree: the runs used these uncommitted changes too
            out["git_commit"] += "+uncommitted"
    except (OSError, subprocess.CalledProcessError):
        out["git_commit"] = None
    return out


def new_result(benchmark: str, argv: list[str], settings: dict[str, Any]) -> dict[str, Any]:
    """The record every benchmark writes: what ran (command, settings), when, where (machine,
    versions, commit), and, filled as it goes, its runs and summary."""
    return {
        "benchmark": benchmark,
        "command": shlex.join(["tandem", "bench", benchmark, *argv]),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "versions": versions(),
        "settings": settings,
        "complete": False,
        "runs": [],
        "summary": {},
    }


def record_run(result: dict[str, Any], make_run: Callable[[], dict[str, Any]], rep: int) -> None:
    """Run one benchmark run into `result["runs"]`, or its error into `result["failed"]`:
    one failed run must not lose the others."""
    try:
        run = make_run()
    except RuntimeError as err:
        print(f"[bench] {err}", file=sys.stderr, flush=True)
        result.setdefault("failed", []).append(str(err))
        return
    result["runs"].append(run)
    steps = ", ".join(f"{s['step_s']:.1f}" for s in run["per_step"])
    rss = f", peak RSS {run['peak_rss_mb']:.0f} MB" if run.get("peak_rss_mb") else ""
    print(f"[bench] {run['name']} #{rep}: steps {steps} s{rss}", file=sys.stderr, flush=True)


def matmul_peak(n: int = 2048, repeats: int = 10) -> dict[str, float]:
    """Best and median GFLOP/s of an n x n fp32 `torch.matmul` (2·n³ FLOPs) on this machine."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t)
    flops = 2.0 * n**3
    return {
        "n": n,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "best_gflops": flops / min(times) / 1e9,
        "median_gflops": flops / statistics.median(times) / 1e9,
    }


def prompt_lengths(tokenizer: Any, task: str, prompts: int = 256) -> list[int]:
    """Token counts of the first `prompts` training prompts, chat template applied (the
    template is rendered to text, then tokenized: the count is the ids', not a dict's keys)."""
    from tandemrl.tasks import get_task

    examples = list(get_task(task).train_examples())[:prompts]
    texts = [
        tokenizer.apply_chat_template(ex.messages, tokenize=False, add_generation_prompt=True)
        for ex in examples
    ]
    return [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def resummarize(path: str | Path) -> dict[str, Any]:
    """Recompute the prompt length and the summary of a written result (no model runs; the
    tokenizer only), e.g. after a fix of the statistics; rewrites its .json and .md."""
    from transformers import AutoTokenizer

    path = Path(path)
    result = json.loads(path.read_text())
    st = result["settings"]
    if st["model"] == "smollm2-135m":
        from tandemrl.models.packaged import cache_root

        tok = AutoTokenizer.from_pretrained(cache_root() / "models" / "smollm2-135m")
    elif st["model"] == "tiny":
        from tandemrl.models.tiny import build_tiny_tokenizer

        tok = build_tiny_tokenizer()
    else:
        tok = AutoTokenizer.from_pretrained(st["model"])
    lengths = prompt_lengths(tok, st["task"])
    result["model_facts"]["prompt_tokens_mean"] = sum(lengths) / len(lengths)
    ns = argparse.Namespace(**st)
    peaks = result["summary"]["matmul_peak"]["measurements"]
    result["summary"] = summarize(result["runs"], result["model_facts"], peaks, ns)
    result["resummarized"] = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": f"tandem bench speed --resummarize {path}",
        "git_commit": versions()["git_commit"],
    }
    path.write_text(json.dumps(result, indent=2))
    path.with_suffix(".md").write_text(to_markdown(result))
    return result


def model_facts(model: str, task: str, lora_r: int, prompts: int = 256) -> dict[str, float]:
    """Parameter counts for the FLOP estimate and the mean chat-templated prompt length."""
    import torch

    from tandemrl.models import load_model
    from tandemrl.models.adapters import LoraConfig, apply_lora

    loaded = load_model(model, "float32")
    m = loaded.model
    head = m.get_output_embeddings().weight.numel()
    body = sum(
        mod.weight.numel()
        for mod in m.modules()
        if isinstance(mod, torch.nn.Linear) and mod is not m.get_output_embeddings()
    )
    total = sum(p.numel() for p in m.parameters())
    lora = apply_lora(m, LoraConfig(r=lora_r, alpha=2 * lora_r))
    adapter = sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)
    lengths = prompt_lengths(loaded.tokenizer, task, prompts)
    return {
        "total_params": total,
        "body_params": body,
        "head_params": head,
        "lora_params": adapter,
        "prompt_tokens_mean": sum(lengths) / len(lengths),
    }


# -- runs -----------------------------------------------------------------------------------
def tandem_args(ns: argparse.Namespace, config: str) -> list[str]:
    return [
        f"model={ns.model}",
        f"task={ns.task}",
        f"rollout.prompts_per_step={ns.prompts}",
        f"rollout.group_size={ns.group}",
        f"rollout.max_new_tokens={ns.tokens}",
        f"rollout.temperature={ns.temperature}",
        f"optim.lr={ns.lr}",
        f"optim.micro_batch_size={ns.micro_batch}",
        f"lora.enabled={'true' if config == 'lora' else 'false'}",
        f"lora.r={ns.lora_r}",
        f"lora.alpha={2 * ns.lora_r}",
        f"seed={ns.seed}",
        "eval.before=false",
        "eval.after=false",
        "log.progress=false",
        "log.tensorboard=false",
    ]


def _run(cmd: list[str], log: Path) -> float:
    print(f"[bench] {shlex.join(cmd[1:])}", file=sys.stderr, flush=True)
    t = time.perf_counter()
    with log.open("w") as err:
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=err)
    if proc.returncode:
        tail = "\n".join(log.read_text().splitlines()[-15:])
        raise RuntimeError(f"{shlex.join(cmd[1:])} failed ({proc.returncode}):\n{tail}")
    return time.perf_counter() - t


def run_tandem(
    ns: argparse.Namespace, name: str, config: str, extra: list[str], repeat: int, tmp: Path
) -> dict[str, Any]:
    run_dir = tmp / f"{name}-{repeat}"
    cmd = [sys.executable, "-m", "tandemrl.cli", "train", *tandem_args(ns, config), *extra]
    cmd += [f"steps={ns.steps}", f"output_dir={run_dir}"]
    wall = _run(cmd, tmp / f"{name}-{repeat}.log")
    rows = ns.prompts * ns.group
    records = read_metrics(run_dir / "metrics.jsonl")
    per_step = []
    for r in records:
        length = r.get("response/length_mean")
        per_step.append(
            {
                "step": r["step"],
                "step_s": r["time/step_s"],
                **{p: r.get(f"time/{p}") for p in report.PHASES},
                "completion_tokens": None if length is None else length * rows,
                "peak_rss_mb": r["memory/peak_rss_mb"],
                "reward_mean": r.get("reward/mean"),
            }
        )
    return {
        "name": name,
        "framework": "tandem",
        "config": config,
        "repeat": repeat,
        "command": shlex.join(["tandem", *cmd[3:-1]]),
        "per_step": per_step,
        "peak_rss_mb": max(s["peak_rss_mb"] for s in per_step),
        "wall_s": wall,
        "timing_source": "tandemrl metrics.jsonl: time/step_s and time/{generate,reward,"
        "logprob,update}_s",
    }


def run_trl(
    ns: argparse.Namespace, config: str, repeat: int, tmp: Path, vllm: bool = False
) -> dict[str, Any]:
    name = f"trl-vllm-{config}" if vllm else f"trl-{config}"
    out = tmp / f"{name}-{repeat}.json"
    cmd = [sys.executable, "-m", "tandemrl.bench.trl_grpo", "--json", str(out)]
    cmd += ["--model", ns.model, "--task", ns.task, "--config", config, "--steps", str(ns.steps)]
    cmd += ["--prompts", str(ns.prompts), "--group", str(ns.group), "--tokens", str(ns.tokens)]
    cmd += ["--temperature", str(ns.temperature), "--lr", str(ns.lr)]
    cmd += ["--lora-r", str(ns.lora_r), "--micro-batch", str(ns.micro_batch)]
    cmd += ["--seed", str(ns.seed), *(["--vllm"] if vllm else [])]
    wall = _run(cmd, tmp / f"{name}-{repeat}.log")
    result = json.loads(out.read_text())
    result.update(
        {
            "name": name,
            "repeat": repeat,
            "wall_s": wall,
            "command": shlex.join(["python", *cmd[1:4], "OUT.json", *cmd[5:]]),
        }
    )
    return result


# -- summary --------------------------------------------------------------------------------
def summarize(
    runs: list[dict[str, Any]],
    facts: dict[str, float] | None,
    peaks: list[dict[str, float]],
    ns: argparse.Namespace,
) -> dict[str, Any]:
    by_name: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        by_name.setdefault(run["name"], []).append(run)
    pooled = {name: report.pool(group) for name, group in by_name.items()}
    summary: dict[str, Any] = {"pooled": pooled, "speed": [], "methods_cost": [], "flops": []}
    summary["engines"] = []
    for config in ns.configs:
        t, r = pooled.get(f"tandem-{config}"), pooled.get(f"trl-{config}")
        if t and r:
            summary["speed"].append(report.compare_frameworks(t, r, config))
        trls = [n for n in (f"trl-{config}", f"trl-vllm-{config}") if n in pooled]
        v = pooled.get(f"tandem-vllm-{config}")
        if v and trls:
            best = min(trls, key=lambda n: pooled[n]["step_s"])
            names = (f"tandem-vllm-{config}", best)
            summary["speed"].append(report.compare_frameworks(v, pooled[best], config, names))
        if v and t:
            summary["engines"].append(
                {
                    "config": config,
                    "vllm_vs_hf_generate": report.ratio(v["generate_s"], t["generate_s"]),
                    "vllm_vs_hf_step": report.ratio(v["step_s"], t["step_s"]),
                    "vllm_vs_hf_memory": report.ratio(v["peak_rss_mb"], t["peak_rss_mb"]),
                }
            )
    for name, (_, base) in METHOD_RUNS.items():
        if base is None or name not in pooled:
            continue
        base_pooled = pooled.get(base) or (pooled.get("tandem-lora") if base == "grpo" else None)
        if base_pooled:
            base_name = base if base in pooled else "tandem-lora"
            summary["methods_cost"].append(
                {
                    "run": name,
                    "baseline": base_name,
                    **report.compare_methods(pooled[name], base_pooled),
                }
            )
    peak = max((p["best_gflops"] for p in peaks), default=float("nan"))
    summary["matmul_peak"] = {"best_gflops": peak, "measurements": peaks}
    rows = ns.prompts * ns.group
    # tandemrl runs each group's prompt once, in sampling and in the update (since c006cbc;
    # `rollout.generate.prefill_once`, `rollout.logprobs`); TRL once per sample. Results
    # written before then lack the setting and counted a prompt per sample for both.
    tandem_prompt_rows = ns.prompts if getattr(ns, "tandem_prompt_once", False) else rows
    for name, p in pooled.items():
        # Other methods score more rows than GRPO: the estimate below is GRPO's update.
        if facts is None or not name.startswith(("tandem-", "trl-")):
            continue
        config = by_name[name][0]["config"]
        completion = p["completion_tokens"]
        if completion != completion:  # NaN: not logged
            continue
        sizes = {
            "body_params": facts["body_params"],
            "head_params": facts["head_params"],
            "adapter_params": facts["lora_params"] if config == "lora" else 0.0,
            "tokens": (tandem_prompt_rows if name.startswith("tandem-") else rows)
            * facts["prompt_tokens_mean"]
            + completion,
            "head_tokens": completion,
        }
        flops = report.update_flops(**sizes, base_trained=config == "full")
        gen_flops = report.generate_flops(**sizes)
        achieved = report.ratio(flops, p["update_s"])
        summary["flops"].append(
            {
                "run": name,
                "update_gflop": flops / 1e9,
                "update_s": p["update_s"],
                "achieved_gflops": achieved / 1e9,
                "fraction_of_peak": report.ratio(achieved / 1e9, peak),
                "generate_gflop": gen_flops / 1e9,
                "generate_s": p["generate_s"],
                "generate_gflops": report.ratio(gen_flops, p["generate_s"]) / 1e9,
            }
        )
    targets = []
    for entry in summary["speed"]:
        vllm = entry.get("tandem_name", "").startswith("tandem-vllm")
        name = f"{entry['tandem_name']} / {entry['trl_name']}" if vllm else "tandem/TRL"
        limit = VLLM_TARGETS["vllm_vs_trl_best_step"] if vllm else TARGETS["tandem_vs_trl_step"]
        targets.append(
            report.target(f"{name} step time ({entry['config']})", entry["ratio"]["step_s"], limit)
        )
    for entry in summary["engines"]:
        targets.append(
            report.target(
                f"vLLM / HF engine generation time ({entry['config']})",
                entry["vllm_vs_hf_generate"],
                VLLM_TARGETS["vllm_vs_hf_generate"],
            )
        )
    for entry in summary["methods_cost"]:
        if entry["run"].startswith("dupo"):
            targets.append(
                report.target(
                    f"{entry['run']} / {entry['baseline']} peak memory",
                    entry["memory_ratio"],
                    TARGETS["dupo_memory"],
                )
            )
        if entry["run"] == "policy_split":
            targets.append(
                report.target(
                    f"policy_split / {entry['baseline']} step time",
                    entry["time_ratio"],
                    TARGETS["policy_split_time"],
                )
            )
    summary["targets"] = targets
    return summary


def to_markdown(result: dict[str, Any]) -> str:
    s, m, v = result["summary"], result["machine"], result["versions"]
    st = result["settings"]
    lines = [
        f"# Speed benchmark, {result['date'][:10]}",
        "",
        "Command (run alone on the machine, behind the shared lock):",
        "",
        "```bash",
        f"flock /tmp/tandem-heavy.lock {result['command']}",
        "```",
        "",
        f"Date {result['date']}; machine: {m['nproc']} cores ({m['cpu']}), {m['mem_gb']} GB; "
        f"python {v['python']}, torch {v['torch']}, transformers {v['transformers']}, "
        f"trl {v['trl']}, peft {v['peft']}; tandemrl commit {v['git_commit']}.",
        "",
        f"Settings: model {st['model']}, task {st['task']}, {st['prompts']} prompts x "
        f"{st['group']} samples per step, {st['tokens']} new tokens, temperature "
        f"{st['temperature']}, lr {st['lr']}, microbatches of {st['micro_batch']}, LoRA r"
        f"{st['lora_r']} all-linear (`lora`) or full fine-tune (`full`), no KL, fp32; "
        f"{st['steps']} steps per run, step 1 dropped as warm-up, {st['repeats']} runs per "
        "framework and config, alternating; medians over the pooled measured steps; peak RSS "
        "is the largest of the runs (each its own process).",
        "",
    ]
    if s["speed"]:
        lines += [
            "## tandemrl GRPO vs TRL GRPOTrainer",
            "",
            report.markdown_table(report.SPEED_HEADER, report.speed_rows(s["speed"])),
            "",
            "tandemrl phases from its `metrics.jsonl`; TRL's step from its step callbacks and "
            "its phases from its own profiling timers (`transformers.generate`, "
            "`_calculate_rewards`, `_prepare_inputs`); TRL's logprob/prep = `_prepare_inputs` "
            "minus generation and rewards (decoding, advantages), its update = step minus "
            "`_prepare_inputs`. tokens/s = completion tokens per step / step time.",
            "",
        ]
    if s.get("engines"):
        rows = [
            [
                e["config"],
                f"{report.fmt(e['vllm_vs_hf_generate'], 2)}x",
                f"{report.fmt(e['vllm_vs_hf_step'], 2)}x",
                f"{report.fmt(e['vllm_vs_hf_memory'], 2)}x",
            ]
            for e in s["engines"]
        ]
        header = ("config", "generate time", "step time", "peak RSS")
        lines += [
            "## tandemrl's rollout engines: vLLM / HF",
            "",
            report.markdown_table(header, rows),
            "",
            "`tandem-vllm-*` runs sample with `rollout.engine=vllm` (docs/vllm.md), in the same "
            "alternating command as the HF engine's `tandem-*` runs. Step 1, dropped as warm-up, "
            "includes the engine's start.",
            "",
        ]
    if s["methods_cost"]:
        pooled = s["pooled"]
        rows = []
        for e in s["methods_cost"]:
            for name in (e["baseline"], e["run"]):
                p = pooled[name]
                is_run = name == e["run"]
                rows.append(
                    [
                        name,
                        p["step_s"],
                        p["generate_s"],
                        p["logprob_s"],
                        p["update_s"],
                        p["peak_rss_mb"],
                        f"{report.fmt(e['time_ratio'], 2)}x" if is_run else "1",
                        f"{report.fmt(e['memory_ratio'], 2)}x" if is_run else "1",
                    ]
                )
        header = ("run", "step s", "generate s", "logprob s", "update s", "peak RSS MB")
        lines += [
            "## Method cost relative to GRPO (tandemrl, LoRA settings)",
            "",
            report.markdown_table((*header, "time x", "memory x"), rows),
            "",
            "`grpo-kl` is GRPO with `grpo.kl_coef=0.1`, DuPO's default KL coefficient; "
            "`tandem-lora` is the GRPO run of the comparison above.",
            "",
        ]
    peak = s["matmul_peak"]
    if s["flops"]:
        rows = [
            [
                f["run"],
                f["update_gflop"],
                f["update_s"],
                f["achieved_gflops"],
                f"{100 * f['fraction_of_peak']:.0f} %",
                f["generate_gflop"],
                f["generate_s"],
                f["generate_gflops"],
                f"{100 * report.ratio(f['generate_gflops'], peak['best_gflops']):.0f} %",
            ]
            for f in s["flops"]
        ]
        lines += [
            "## Update FLOP/s",
            "",
            f"Matmul peak: {report.fmt(peak['best_gflops'])} GFLOP/s (best of "
            f"{peak['measurements'][0]['repeats']} fp32 "
            f"{peak['measurements'][0]['n']}x{peak['measurements'][0]['n']} `torch.matmul`, "
            "measured before and after the runs: "
            + ", ".join(f"{report.fmt(p['best_gflops'])}" for p in peak["measurements"])
            + " GFLOP/s). Update FLOPs: forward 2·N·T, backward 2·N·T for activation gradients "
            "plus 2·N·T for trained weights (6·N·T full fine-tune, 4·N·T + 6·N_lora·T LoRA), "
            "useful tokens only, attention scores left out (`tandemrl.bench.report."
            "update_flops`)."
            + (
                " tandemrl computes each group's prompt once (prefill and update) and is "
                "counted so; TRL once per sample."
                if st.get("tandem_prompt_once")
                else ""
            ),
            "",
            report.markdown_table(
                ("run", "update GFLOP", "update s", "update GFLOP/s", "of peak")
                + ("generate GFLOP", "generate s", "generate GFLOP/s", "of peak"),
                rows,
            ),
            "",
            "Generation FLOPs: 2·(N + N_lora)·T over prompt and sampled tokens (KV cache) "
            "plus the LM head on sampled tokens (`report.generate_flops`).",
            "",
        ]
    if s["targets"]:
        rows = [
            [t["name"], f"{report.fmt(t['value'], 2)}", f"<= {report.fmt(t['limit'], 2)}", t["met"]]
            for t in s["targets"]
        ]
        lines += ["## Targets", "", report.markdown_table(("target", "measured", "limit", "met"), rows), ""]  # fmt: skip
    again = result.get("resummarized")
    if again:
        lines += [
            f"Summary recomputed from the runs' records on {again['date']} with "
            f"`{again['command']}` (commit {again['git_commit']}); the runs are unchanged.",
            "",
        ]
    lines += ["## Runs (step times, s; step 1 is warm-up)", ""]
    for run in result["runs"]:
        steps = ", ".join(report.fmt(x["step_s"]) for x in run["per_step"])
        lines.append(
            f"- {run['name']} #{run.get('repeat', 0)}: {steps}; peak RSS "
            f"{report.fmt(run['peak_rss_mb'], 0)} MB"
        )
    for err in result.get("failed", []):
        said = [line for line in err.splitlines() if line.strip()]
        lines.append(f"- FAILED: {said[0]} ... {said[-1].strip()}")
    return "\n".join(lines) + "\n"


# -- the command ----------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="tandem bench speed", description=__doc__.split("\n\n")[0].replace("`", "")
    )
    p.add_argument("--what", default="speed,methods-cost", help="speed, methods-cost or both")
    p.add_argument("--configs", default="lora,full", help="lora, full or both (speed)")
    p.add_argument("--methods", default=DEFAULT_METHODS, help=f"of {', '.join(METHOD_RUNS)}")
    p.add_argument("--engines", default="hf", help="tandemrl's rollout engines: hf, vllm or both")
    p.add_argument(
        "--trl-vllm", action="store_true", help="also TRL with its colocated vLLM (use_vllm)"
    )
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2, help="runs per framework and config")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="arith2")
    p.add_argument("--prompts", type=int, default=ROWS_DEFAULTS["prompts"])
    p.add_argument("--group", type=int, default=ROWS_DEFAULTS["group"])
    p.add_argument("--tokens", type=int, default=ROWS_DEFAULTS["tokens"])
    p.add_argument("--temperature", type=float, default=ROWS_DEFAULTS["temperature"])
    p.add_argument("--lr", type=float, default=ROWS_DEFAULTS["lr"])
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results", help="directory of the results")
    p.add_argument("--name", default=None, help="file stem (default speed-<date>)")
    p.add_argument(
        "--resummarize", metavar="JSON", help="recompute the summary of a written result only"
    )
    ns = p.parse_args(argv)
    ns.what = [w for w in ns.what.split(",") if w]
    ns.configs = [c for c in ns.configs.split(",") if c]
    ns.methods = [m for m in ns.methods.split(",") if m]
    ns.engines = [e for e in ns.engines.split(",") if e]
    ns.tandem_prompt_once = True  # how this version computes prompts; see `summarize`
    bad = (
        [w for w in ns.what if w not in ("speed", "methods-cost")]
        + [c for c in ns.configs if c not in ("lora", "full")]
        + [m for m in ns.methods if m not in METHOD_RUNS]
        + [e for e in ns.engines if e not in ("hf", "vllm")]
    )
    if bad:
        p.error(f"unknown value(s) {bad}")
    return ns


def plan(ns: argparse.Namespace) -> list[tuple[str, str, str, int]]:
    """The runs in order: (kind, name, config, repeat); speed alternates tandem and TRL."""
    runs: list[tuple[str, str, str, int]] = []
    if "speed" in ns.what:
        for config in ns.configs:
            for rep in range(ns.repeats):
                for engine in ns.engines:
                    name = f"tandem-{config}" if engine == "hf" else f"tandem-vllm-{config}"
                    runs.append(("tandem", name, config, rep))
                runs.append(("trl", f"trl-{config}", config, rep))
                if ns.trl_vllm:
                    runs.append(("trl", f"trl-vllm-{config}", config, rep))
    if "methods-cost" in ns.what:
        names = list(ns.methods)
        have_grpo = "speed" in ns.what and "lora" in ns.configs
        for name in ns.methods:
            base = METHOD_RUNS[name][1]
            if base and base not in names and not (base == "grpo" and have_grpo):
                names.insert(0, base)
        order = [n for n in METHOD_RUNS if n in names]  # baselines first
        runs += [("method", name, "lora", 0) for name in order]
    return runs


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = parse_args(argv)
    if ns.resummarize:
        print(to_markdown(resummarize(ns.resummarize)))
        return 0
    from tandemrl.bench.trl_grpo import INSTALL_HINT, trl_available

    if "speed" in ns.what and not trl_available():
        print(f"tandem bench speed: {INSTALL_HINT}; or --what methods-cost", file=sys.stderr)
        return 2
    now = _dt.datetime.now(_dt.UTC)
    out_dir = Path(ns.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = ns.name or f"speed-{now:%Y-%m-%d}"
    keys = ("model", "task", "prompts", "group", "tokens", "temperature", "lr", "micro_batch")
    keys += ("lora_r", "seed", "steps", "repeats", "what", "configs", "methods", "engines")
    keys += ("trl_vllm",)
    result = new_result("speed", argv, {k: getattr(ns, k) for k in (*keys, "tandem_prompt_once")})
    print("[bench] matmul peak ...", file=sys.stderr, flush=True)
    peaks = [matmul_peak()]
    facts = model_facts(ns.model, ns.task, ns.lora_r)
    result["model_facts"] = facts

    def write() -> None:
        result["summary"] = summarize(result["runs"], facts, peaks, ns)
        (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2))
        (out_dir / f"{stem}.md").write_text(to_markdown(result))

    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmp_name:
        tmp = Path(tmp_name)
        for kind, name, config, rep in plan(ns):

            def make_run(kind=kind, name=name, config=config, rep=rep) -> dict[str, Any]:
                if kind == "trl":
                    return run_trl(ns, config, rep, tmp, vllm=name.startswith("trl-vllm"))
                extra = [] if kind == "tandem" else METHOD_RUNS[name][0]
                if name.startswith("tandem-vllm"):
                    extra = ["rollout.engine=vllm"]
                return run_tandem(ns, name, config, extra, rep, tmp)

            record_run(result, make_run, rep)
            write()  # partial results survive a crash or a stop
    peaks.append(matmul_peak())
    result["complete"] = True
    write()
    report.check_result(result)
    print(to_markdown(result))
    if result.get("failed"):
        print(f"[bench] {len(result['failed'])} run(s) failed: see 'failed'", file=sys.stderr)
        return 1
    print(f"[bench] wrote {out_dir / stem}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
