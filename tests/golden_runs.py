"""Seeded 3-step tiny runs of every registered method, and their recorded `metrics.jsonl`.

    python -m tests.golden_runs            # rewrite tests/golden/*.jsonl from this commit

The files under tests/golden/ were written by the commit named in tests/golden/README.md;
tests/test_golden_metrics.py reruns each config and compares every metric but time and
memory, so a refactor that changes what a method computes fails there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import tests.toy_task  # noqa: F401  (registers toy_letters and toy_case_rewards)
from tandemrl.cli import main
from tests.threads import one_torch_thread

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"

COMMON = ["model=tiny", "task=toy_letters", "steps=3", "seed=0", "eval.before=false",
          "eval.after=false", "log.progress=false", "log.tensorboard=false",
          "rollout.prompts_per_step=4", "rollout.group_size=4", "rollout.max_new_tokens=8",
          "optim.lr=3e-3", "optim.micro_batch_size=3"]  # fmt: skip
PREFS = str(ROOT / "examples" / "prefs_arith2.jsonl")

RUNS: dict[str, list[str]] = {
    "grpo": ["method=grpo", "grpo.kl_coef=0.05", "grpo.clip_high=0.28"],
    "grpo_lora_kl_reward": [
        "method=grpo",
        "lora.enabled=true",
        "grpo.kl_coef=0.05",
        "grpo.kl_in=reward",
        "grpo.entropy_coef=0.01",
        "grpo.advantage=rloo",
        "grpo.advantage_options={}",
        "grpo.aggregation=seq-mean-token-mean",
    ],  # fmt: skip
    "grpo_dr_dynamic": [
        "method=grpo",
        "grpo.advantage_options.std_mode=none",
        "grpo.aggregation=seq-mean-token-sum-norm",
        "grpo.dynamic_sampling=true",
    ],  # fmt: skip
    "dipo": ["method=dipo", "lora.enabled=true", "dipo.alpha=0.5", "dipo.success=0.3"],
    "gdpo": ["method=gdpo", "task=toy_case_rewards"],
    "gdpo_sum": ["method=gdpo", "task=toy_case_rewards", "gdpo.multi_reward=sum"],
    "gd2po": ["method=gd2po", "task=toy_case_rewards"],
    "gd2po_snr": [
        "method=gd2po",
        "task=toy_case_rewards",
        "gd2po.filter=snr",
        "gd2po.query_reweight=false",
    ],  # fmt: skip
    "ppo": ["method=ppo"],
    "ppo_lora_epochs": [
        "method=ppo",
        "lora.enabled=true",
        "ppo.ppo_epochs=2",
        "ppo.minibatches=2",
    ],  # fmt: skip
    "policy_split": [
        "method=policy_split",
        "policy_split.kl_coef=0.05",
        "policy_split.normal_eta=0.01",
        "policy_split.eta=0.1",
    ],  # fmt: skip
    "dupo_simultaneous": [
        "method=dupo",
        "dupo.schedule=simultaneous",
        "dupo.lr_explore=3e-3",
        "dupo.lr_exploit=3e-3",
        "dupo.success_reward=0.0",
        "dupo.adaptive_window=1",
        "dupo.plot=false",
    ],  # fmt: skip
    "dupo_alternating": [
        "method=dupo",
        "dupo.alternating_interval=1",
        "dupo.lr_explore=3e-3",
        "dupo.lr_exploit=3e-3",
        "dupo.success_reward=0.2",
        "dupo.plot=false",
    ],  # fmt: skip
    "dpo_online": ["method=dpo", "lora.enabled=true"],
    "ipo_online": ["method=ipo", "ipo.rpo_alpha=0.1"],
    "dpo_offline": [
        "method=dpo",
        "dpo.source=offline",
        f"dpo.data={PREFS}",
        "dpo.label_smoothing=0.1",
        "dpo.rpo_alpha=0.1",
    ],  # fmt: skip
}

VOLATILE = ("time/", "memory/")


def stable_records(metrics_file: Path) -> list[dict]:
    """The records of a `metrics.jsonl` without the keys that differ between identical runs."""
    records = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(VOLATILE)} for r in records]


def run(name: str, out_dir: Path) -> list[dict]:
    """Train golden config `name` into `out_dir` (one thread: float results depend on it)."""
    with one_torch_thread():
        code = main(["train", *COMMON, *RUNS[name], f"output_dir={out_dir}"])
    if code != 0:
        raise RuntimeError(f"golden run {name} exited {code}")
    return stable_records(out_dir / "metrics.jsonl")


def write_all(tmp: Path, names: list[str] | None = None) -> None:
    """Write the golden files of `names` (all runs when None or empty)."""
    GOLDEN.mkdir(exist_ok=True)
    for name in names or RUNS:
        records = run(name, tmp / name)
        (GOLDEN / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        print(f"wrote {GOLDEN / name}.jsonl ({len(records)} steps)", file=sys.stderr)


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_all(Path(tmp), sys.argv[1:])  # e.g. `python -m tests.golden_runs ppo`
