"""The one entry point for generation: a rollout engine turns chat prompts into a
`RolloutBatch`, whatever does the decoding.

Every method samples through `Method.sample` -> `engine.generate(...)`, evaluation and the
policy-sampling rewards through `PolicySampler` over the same engine; a second engine (vLLM)
implements the same two calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from torch import nn

from tandemrl.rollout.batch import RolloutBatch
from tandemrl.rollout.generate import SamplingConfig, generate

Messages = list[dict[str, str]]


class RolloutEngine(Protocol):
    name: str

    def generate(
        self,
        model: nn.Module,
        prompts: list[Messages],
        num_samples: int,
        sampling: SamplingConfig,
        *,
        seed: int | None = None,
        adapter_names: list[str] | None = None,
    ) -> RolloutBatch:
        """`num_samples` responses per prompt; row i*num_samples+j is sample j of prompt i.
        `adapter_names` (one per row) samples each row from its own adapter of `model`."""
        ...


class HFEngine:
    """Hugging Face `generate` on the training process's own module (`rollout.engine=hf`):
    it always samples from the live weights, so there is nothing to push after an update."""

    name = "hf"

    def __init__(self, tokenizer: Any, batch_size: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def generate(
        self,
        model: nn.Module,
        prompts: list[Messages],
        num_samples: int,
        sampling: SamplingConfig,
        *,
        seed: int | None = None,
        adapter_names: list[str] | None = None,
    ) -> RolloutBatch:
        return generate(
            model,
            self.tokenizer,
            prompts,
            num_samples,
            sampling,
            seed=seed,
            batch_size=self.batch_size,
            adapter_names=adapter_names,
        )


class PolicySampler:
    """Completions as text from the current policy: the ``generate`` that rewards which sample
    from the policy receive (``tasks.reward_sources.Generate``), and what evaluation uses.

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
        return self.engine.generate(self.model(), prompts, n, sampling, seed=seed).completions
