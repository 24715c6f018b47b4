"""What a checkpoint needs beyond the weights, and putting a run back where it was.

A checkpoint's `trainer_state.pt` holds the method's `state_dict()` (optimizer, scheduler and
whatever the method adds), the data position (`PromptSampler.position`), every RNG of every
rank, the step and the method name. `restore` loads it into a freshly built method so that
the next step is the step the interrupted run would have taken.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from tandemrl.errors import ConfigError
from tandemrl.loop.checkpoint import (
    CheckpointError,
    find_resume_checkpoint,
    latest_checkpoint,
    load_trainer_state,
    restore_policy_weights,
    rng_state,
    set_rng_state,
    verify_checkpoint,
)
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


def set_aside_old_checkpoints(run_dir: Path) -> None:
    """A fresh run in a directory that holds an earlier run's checkpoints moves them to
    `checkpoints.prev-<time>` (never deletes them), so keep-K pruning cannot eat them."""
    old = latest_checkpoint(run_dir)
    root = run_dir / "checkpoints"
    if old is None and not any(root.glob("step-*")):
        return
    target = run_dir / f"checkpoints.prev-{time.strftime('%Y%m%d-%H%M%S')}"
    root.rename(target)
    _log(
        f"warning: {run_dir} already held checkpoints (latest {old.name if old else 'partial'}); "
        f"moved them to {target}. To continue that run instead, pass resume=auto"
    )


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
