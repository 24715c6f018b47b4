"""Sharded checkpoints of FSDP2 runs (`distributed.strategy=fsdp2`), through
`torch.distributed.checkpoint` (DCP).

Each rank writes its own shards of the trainable weights and of every optimizer's state into
`sharded/`; no rank ever holds the whole model. DCP records the global shape of every tensor,
so a checkpoint loads at any world size: 2 ranks can write it and 1 process, 4 ranks or an
unsharded model read it (`load_sharded`). The rest of the checkpoint is the usual one (written
by rank 0 through `save_checkpoint`: `trainer_state.pt` without the optimizer moments, which
are in `sharded/`, the manifest, `COMPLETE`), so verification, pruning and `resume=auto` work
unchanged. `policy/` holds only what rebuilds the model's structure (the LoRA adapter's
config); `tandem eval` and `tandem export` read the weights from `sharded/`.

All ranks must see one file system (on several machines: a shared `output_dir`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from torch import nn

from tandemrl.loop.checkpoint import save_checkpoint
from tandemrl.runtime import distributed as dist

SHARDED_DIR = "sharded"


def _options(strict: bool = True) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Frozen weights (a LoRA run's base) are the base model's: not saved, not loaded (so
    # loading must not ask for them).
    return StateDictOptions(ignore_frozen_params=True, strict=strict)


def _state(policy: nn.Module, optimizers: dict[str, Any]) -> dict[str, Any]:
    """The DCP state of `policy` and `optimizers`, keyed by parameter names (portable across
    world sizes; an optimizer without state yet gets zero-filled state to load into)."""
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    state = {"model": get_model_state_dict(policy, options=_options())}
    for name, optimizer in optimizers.items():
        state[f"optim.{name}"] = get_optimizer_state_dict(policy, optimizer, options=_options())
    return state


def save_sharded(
    run_dir: Path,
    step: int,
    policy: nn.Module,
    optimizers: dict[str, Any],
    trainer_state: dict[str, Any],
    keep: int,
    config: dict[str, Any],
) -> Path:
    """Write step `step`'s checkpoint from every rank (a collective); returns its path."""
    import torch.distributed.checkpoint as dcp

    root = Path(run_dir) / "checkpoints"
    staging = root / f".sharded-{step:06d}"  # one name on every rank
    if dist.is_main():
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    dist.barrier()
    dcp.save(_state(policy, optimizers), checkpoint_id=str(staging))
    dist.barrier()
    target = root / f"step-{step:06d}"
    if dist.is_main():

        def write_policy(folder: Path) -> None:
            staging.rename(folder / SHARDED_DIR)
            (folder / "policy").mkdir()
            for name, peft_config in getattr(policy, "peft_config", {}).items():
                where = folder / "policy" if name == "default" else folder / "policy" / name
                peft_config.save_pretrained(str(where))

        target = save_checkpoint(
            run_dir, step, None, trainer_state, keep, config, write_policy=write_policy
        )
    dist.barrier()
    return target


def is_sharded_checkpoint(checkpoint: Path) -> bool:
    return (Path(checkpoint) / SHARDED_DIR).is_dir()


def load_sharded(
    policy: nn.Module, checkpoint: Path, optimizers: dict[str, Any] | None = None
) -> None:
    """Load a sharded checkpoint's weights (and optimizer states) into `policy` in place,
    whatever the world size or sharding now (an unsharded model in one process included)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    optimizers = optimizers or {}
    state = _state(policy, optimizers)
    dcp.load(state, checkpoint_id=str(Path(checkpoint) / SHARDED_DIR))
    result = set_model_state_dict(policy, state["model"], options=_options(strict=False))
    if result.unexpected_keys:
        raise ValueError(
            f"checkpoint {checkpoint} does not match the model: {result.unexpected_keys[:3]}"
        )
    for name, optimizer in optimizers.items():
        set_optimizer_state_dict(policy, optimizer, state[f"optim.{name}"], options=_options())


def load_sharded_policy(model: nn.Module, checkpoint: Path) -> nn.Module:
    """A freshly loaded base `model` with a sharded checkpoint's policy applied, in one
    process: the LoRA adapter rebuilt from `policy/adapter_config.json` (or the full weights)
    and the weights read from `sharded/` (for `tandem eval` and `tandem export`)."""
    policy_dir = Path(checkpoint) / "policy"
    if (policy_dir / "adapter_config.json").is_file():
        from peft import PeftConfig, get_peft_model

        model = get_peft_model(model, PeftConfig.from_pretrained(str(policy_dir)))
    else:
        model.requires_grad_(True)  # every weight was trained, so every weight was saved
    load_sharded(model, checkpoint)
    return model.requires_grad_(False)
