"""The one data type a training step passes along."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class RolloutBatch:
    """B sampled responses and everything computed about them.

    Layout: prompts are left-padded and responses right-padded, so `cat(prompt_ids,
    response_ids)` is a valid causal-LM input and the response occupies the last T columns.
    Methods attach what they compute (rewards, advantages, old log-probs...) as fields; what
    a method needs per row beyond them goes in `per_row`, a dataclass of its own whose [B, ...]
    tensors `select` slices along with the rest (e.g. the dual-policy method's sharing flags).
    """

    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P] 1 = real prompt token
    response_ids: torch.Tensor  # [B, T] right-padded
    response_mask: torch.Tensor  # [B, T] 1 = generated token up to and including EOS
    group_ids: torch.Tensor  # [B] responses to the same prompt share an id
    example_index: list[int]  # [B] position of the source example in the step's prompt list
    completions: list[str]  # [B] decoded response text (without special tokens)
    truncated: torch.Tensor  # [B] bool: hit max_new_tokens before EOS
    rewards: torch.Tensor | None = None  # [B] combined scalar reward (NaN = abstain)
    reward_matrix: torch.Tensor | None = None  # [B, K] per named reward (NaN = abstain)
    reward_names: list[str] = field(default_factory=list)
    advantages: torch.Tensor | None = None  # [B] or [B, T]
    old_logp: torch.Tensor | None = None  # [B, T] behaviour-policy log-probs
    # [B, T] log-probs the rollout engine sampled with (vLLM; None for the HF engine, which
    # samples from the training module itself), compared with old_logp by the trainer.
    sampling_logp: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None  # [B, T] reference-policy log-probs
    # [B, T] tokens that enter the loss; None = response_mask. Filters (abstained rewards,
    # conflict filters, token selection) narrow it without touching the response itself.
    loss_mask: torch.Tensor | None = None
    reward_errors: dict[str, int] = field(default_factory=dict)  # rows each reward failed on
    per_row: Any = None  # a method's dataclass of [B, ...] tensors (see the class docstring)

    def __len__(self) -> int:
        return self.response_ids.shape[0]

    @property
    def train_mask(self) -> torch.Tensor:
        return self.response_mask if self.loss_mask is None else self.loss_mask

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)

    def response_token_lists(self) -> list[list[int]]:
        """Each response's token ids without padding and without its final EOS (every
        finished response shares it, which would make any two look a little alike)."""
        out = []
        for ids, mask, truncated in zip(
            self.response_ids, self.response_mask, self.truncated, strict=True
        ):
            toks = ids[mask.bool()].tolist()
            out.append(toks if truncated or not toks else toks[:-1])
        return out

    def select(self, index: torch.Tensor | list[int]) -> RolloutBatch:
        """Rows `index` of every per-sample field (a microbatch, or a filtered batch)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        rows = idx.tolist()

        def pick(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == len(self):
                return value[idx]
            if isinstance(value, list) and len(value) == len(self):
                return [value[i] for i in rows]
            return value

        per_row = self.per_row
        if per_row is not None:
            fields = dataclasses.fields(per_row)
            per_row = dataclasses.replace(
                per_row, **{f.name: pick(getattr(per_row, f.name)) for f in fields}
            )
        return RolloutBatch(
            **{
                name: pick(getattr(self, name))
                for name in self.__dataclass_fields__
                if name not in ("per_row", "reward_names", "reward_errors")
            },
            reward_names=list(self.reward_names),
            reward_errors=dict(self.reward_errors),
            per_row=per_row,
        )

    @classmethod
    def concat(cls, batches: list[RolloutBatch]) -> RolloutBatch:
        """The rows of `batches` in order, prompts left-padded and responses right-padded to
        the widest (padding is masked out, so its token id does not matter). Group ids and
        example indices are kept as they are: callers make them distinct. Per-row extras
        (`per_row`) are not carried."""
        if not batches:
            raise ValueError("concat needs at least one batch")
        p = max(b.prompt_ids.shape[1] for b in batches)
        t = max(b.response_ids.shape[1] for b in batches)

        def left(x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(x, (p - x.shape[1], 0))

        def right(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else torch.nn.functional.pad(x, (0, t - x.shape[1]))

        def cat(name: str, pad=lambda x: x) -> torch.Tensor | None:
            parts = [getattr(b, name) for b in batches]
            return None if any(x is None for x in parts) else torch.cat([pad(x) for x in parts])

        errors: dict[str, int] = {}
        for b in batches:
            for name, n in b.reward_errors.items():
                errors[name] = errors.get(name, 0) + n
        return cls(
            prompt_ids=cat("prompt_ids", left),
            prompt_mask=cat("prompt_mask", left),
            response_ids=cat("response_ids", right),
            response_mask=cat("response_mask", right),
            group_ids=cat("group_ids"),
            example_index=[i for b in batches for i in b.example_index],
            completions=[c for b in batches for c in b.completions],
            truncated=cat("truncated"),
            rewards=cat("rewards"),
            reward_matrix=cat("reward_matrix"),
            reward_names=list(batches[0].reward_names),
            advantages=cat("advantages"),
            old_logp=cat("old_logp", right),
            sampling_logp=cat("sampling_logp", right),
            ref_logp=cat("ref_logp", right),
            loss_mask=cat("loss_mask", right),
            reward_errors=errors,
        )

    def to(self, device: torch.device | str) -> RolloutBatch:
        """The batch with every tensor (and every tensor of `per_row`) on `device`; the batch
        itself when they all are already there (the CPU, in a CPU run)."""
        device = torch.device(device)
        names = [n for n in self.__dataclass_fields__ if n != "per_row"]

        def moved(value: Any) -> Any:
            return value.to(device) if isinstance(value, torch.Tensor) else value

        def elsewhere(value: Any) -> bool:
            return isinstance(value, torch.Tensor) and value.device != device

        extra = self.per_row
        extra_fields = [] if extra is None else [f.name for f in dataclasses.fields(extra)]
        if not any(elsewhere(getattr(self, n)) for n in names) and not any(
            elsewhere(getattr(extra, n)) for n in extra_fields
        ):
            return self
        if extra is not None:
            extra = dataclasses.replace(
                extra, **{n: moved(getattr(extra, n)) for n in extra_fields}
            )
        return dataclasses.replace(
            self, **{n: moved(getattr(self, n)) for n in names}, per_row=extra
        )

    def microbatches(self, size: int) -> list[RolloutBatch]:
        return [
            self.select(list(range(i, min(i + size, len(self))))) for i in range(0, len(self), size)
        ]
