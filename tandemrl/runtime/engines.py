"""The rollout engine a run's config asks for (`rollout.engine`)."""

from __future__ import annotations

from typing import Any

from tandemrl.errors import ConfigError
from tandemrl.rollout import HFEngine, RolloutEngine
from tandemrl.runtime import distributed as dist
from tandemrl.runtime.config import TrainConfig


def build_rollout_engine(cfg: TrainConfig, tokenizer: Any) -> RolloutEngine:
    """`HFEngine` or a colocated `VllmEngine` on the run's device, in its weight dtype
    (bf16 under bf16-mixed: the engine only decodes)."""
    r = cfg.rollout
    if r.engine == "hf":
        return HFEngine(tokenizer, r.generation_batch_size)
    from tandemrl.rollout.vllm_engine import VllmEngine, VllmSettings

    if dist.is_distributed():
        raise ConfigError(
            "rollout.engine=vllm runs in single-process runs for now (one engine per "
            "process is not built); use rollout.engine=hf under torchrun"
        )
    compute = cfg.compute()
    v = cfg.vllm
    settings = VllmSettings(
        device=str(compute.device),
        dtype="bfloat16" if compute.precision != "fp32" else "float32",
        gpu_memory_share=v.gpu_memory_share,
        cpu_kv_cache_gb=v.cpu_kv_cache_gb,
        lora=v.lora,
        max_lora_rank=cfg.lora.r,
        max_model_len=v.max_model_len,
        enforce_eager=compute.device.type == "cpu" if v.enforce_eager is None else v.enforce_eager,
    )
    return VllmEngine(tokenizer, settings)
