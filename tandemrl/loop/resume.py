"""What a checkpoint needs beyond the weights, and putting a run back where it was.

A checkpoint's `trainer_state.pt` holds the method's `state_dict()` (optimizer, scheduler and
whatever the method adds), the data position (`PromptSampler.position`), every RNG of every
rank, the step and the method name. `restore` loads it into a freshly built method so that
the next step is the step the interrupted run would have taken.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from tandemrl.errors import ConfigError
from tandemrl.loop.checkpoint import (
    CONFIG_FILE,
    CheckpointError,
    find_resume_checkpoint,
    load_trainer_state,
    restore_policy_weights,
    rng_state,
    set_rng_state,
    verify_checkpoint,
)
from tandemrl.loop.sharded_checkpoint import is_sharded_checkpoint, load_sharded
from tandemrl.runtime import distributed as dist


def _log(message: str) -> None:
    print(f"[tandemrl] {message}", file=sys.stderr, flush=True)


def resolve_resume(resume: str, run_dir: Path) -> Path | None:
    """The checkpoint `resume` asks for: None (fresh), the newest valid one (`auto`), or the
    given path (verified; a ConfigError says what is wrong with it)."""
    value = str(resume or "").strip()
    if not value:
        return None
    if value == "auto":
        found = find_resume_checkpoint(run_dir)
        if found is None:
            _log(f"resume=auto: no valid checkpoint in {run_dir}/checkpoints; starting fresh")
        return found
    path = Path(value)
    try:
        verify_checkpoint(path)
    except CheckpointError as err:
        hint = (
            " (resume=auto picks the newest valid one)" if path.parent.name == "checkpoints" else ""
        )
        raise ConfigError(f"resume={value}: {err}{hint}") from None
    return path


# Settings a resumed run cannot change: the weights, the data or the method's state depend on
# them. Everything else the command line changes applies, and is reported; so do a task's
# reward functions and weights (the objective, not the data: fixing a reward is a resume).
FIXED_ON_RESUME = ("method", "model", "task", "task_options", "lora", "reward", "dtype")
CHANGEABLE = ("task_options.rewards", "task_options.weights")
NOT_COMPARED = ("resume", "overwrite", "output_dir")


def saved_config(checkpoint: Path) -> dict[str, Any] | None:
    """The resolved config of the run that wrote `checkpoint` (its `config.json`; for older
    checkpoints the run directory's `config.yaml`), None if neither exists."""
    inside = Path(checkpoint) / CONFIG_FILE
    if inside.is_file():
        return json.loads(inside.read_text())
    beside = Path(checkpoint).parent.parent / "config.yaml"
    return yaml.safe_load(beside.read_text()) if beside.is_file() else None


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict) or not tree:
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def changes_on_resume(checkpoint: Path, config: dict[str, Any]) -> list[str]:
    """`key: old -> new` for each setting the command line changed since `checkpoint`'s run;
    a one-line ConfigError for one that cannot change (`FIXED_ON_RESUME`)."""
    saved = saved_config(checkpoint)
    if saved is None:
        return []
    old, new = _flat(saved), _flat(config)
    changed = []
    for key in sorted(set(old) | set(new)):
        if key.split(".")[0] in NOT_COMPARED or key not in old or old.get(key) == new.get(key):
            continue
        if key.split(".")[0] in FIXED_ON_RESUME and not key.startswith(CHANGEABLE):
            raise ConfigError(
                f"resume: {key} was {old[key]!r} in the run that wrote {checkpoint} and is "
                f"{new.get(key)!r} now; it cannot change when resuming (the weights and the "
                f"optimizer state depend on it): set {key}={old[key]} or start a new run"
            )
        changed.append(f"{key} {old[key]!r} -> {new.get(key)!r}")
    return changed


def trainer_state(method: Any, position: int, rngs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "method_name": method.name,
        "method": method.state_dict(),
        "sampler_position": position,
        "rng": rngs,
        "world_size": len(rngs),
    }


def gathered_rng_states() -> list[dict[str, Any]]:
    """Every rank's RNG states, in rank order (a collective: call on all ranks)."""
    return dist.all_gather_object(rng_state())


def restore(checkpoint: Path, method: Any, sampler: Any) -> int:
    """Load `checkpoint` into `method` and `sampler` and set the RNGs; returns its step."""
    state = load_trainer_state(checkpoint)
    saved = state.get("method_name", method.name)
    if saved != method.name:
        raise ConfigError(
            f"resume: checkpoint {checkpoint} was written by method {saved!r}, not "
            f"{method.name!r}; set method={saved} or resume from another run"
        )
    if is_sharded_checkpoint(checkpoint):
        # Weights and optimizer moments, resharded to this run's world size.
        load_sharded(method.policy, checkpoint, method.update_engine.optimizers)
    elif method.update_engine.sharded:
        raise ConfigError(
            f"resume: {checkpoint} was written without sharding; resume it with "
            "distributed.strategy=replicate (a sharded run resumes sharded checkpoints)"
        )
    else:
        restore_policy_weights(method.policy, checkpoint)
    method.load_state_dict(state["method"])
    sampler.position = int(state["sampler_position"])
    rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
    if len(rngs) != dist.world_size():
        _log(
            f"warning: {checkpoint} was written by {len(rngs)} process(es), this run has "
            f"{dist.world_size()}: rank RNG streams restart from rank 0's"
        )
    r = dist.rank()
    set_rng_state(rngs[r] if r < len(rngs) and len(rngs) == dist.world_size() else rngs[0])
    return int(state["step"])
