"""The one entry point for generation: a rollout engine turns a `SampleRequest` into a
`RolloutBatch`, whatever does the decoding.

Every method samples through `Method.sample` -> `engine.generate(model, request)`; the
policy-sampling rewards through `PolicySampler` over the same engine. A second engine (vLLM)
subclasses `RolloutEngine` and implements the same call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from tandemrl.rollout.batch import RolloutBatch
from tandemrl.rollout.generate import SamplingConfig, generate

Messages = list[dict[str, str]]


@dataclass
class SampleRequest:
    """`num_samples` responses to each chat prompt: row i*num_samples+j of the batch is
    sample j of prompt i. `seed` fixes the draw; `adapter_names` (one per row) samples each
    row from its own adapter of the model ("__base__": none)."""

    prompts: list[Messages]
    num_samples: int
    sampling: SamplingConfig
    seed: int | None = None
    adapter_names: list[str] | None = None


class RolloutEngine(ABC):
    name: ClassVar[str]

    @abstractmethod
    def generate(self, model: nn.Module, request: SampleRequest) -> RolloutBatch:
        """Sample `request` from `model`'s current weights."""

    def describe(self) -> str:
        """One line for the run's log."""
        return self.name


class HFEngine(RolloutEngine):
    """Hugging Face `generate` on the training process's own module (`rollout.engine=hf`):
    it always samples from the live weights, so there is nothing to push after an update."""

    name = "hf"

    def __init__(self, tokenizer: Any, batch_size: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def generate(self, model: nn.Module, request: SampleRequest) -> RolloutBatch:
        return generate(
            model,
            self.tokenizer,
            request.prompts,
            request.num_samples,
            request.sampling,
            seed=request.seed,
            batch_size=self.batch_size,
            adapter_names=request.adapter_names,
        )


class PolicySampler:
    """Completions as text from the current policy: the ``generate`` that rewards which sample
    from the policy receive (``tasks.reward_sources.Generate``).

    ``model()`` returns the module to sample from now (a method's ``eval_policy``, so updates
    and adapter switches are seen)."""

    def __init__(self, model: Callable[[], nn.Module], engine: RolloutEngine) -> None:
        self.model = model
        self.engine = engine

    def __call__(
        self,
        prompts: list[Messages],
        n: int,
        *,
        temperature: float,
        max_new_tokens: int,
        seed: int,
    ) -> list[str]:
        if not prompts:
            return []
        sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature)
        request = SampleRequest(prompts, n, sampling, seed=seed)
        return self.engine.generate(self.model(), request).completions
