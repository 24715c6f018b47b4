"""Per-token log-probabilities and entropies of the responses in a batch (and the hidden
states that predict them, for heads on the trunk).

Only the response positions go through the LM head (`logits_to_keep`): the vocabulary
projection is the largest single matmul of a small model, and prompt positions never need it.

Responses of one group share their prompt. When a batch holds repeated prompts, each distinct
prompt is run once and its key/value cache is copied to the rows that use it, so the prompt's
tokens cost one forward (and one backward) per group instead of one per response. The result
equals a forward over `cat(prompt, response)` per row, gradients included. Not done under
gradient checkpointing in training (Hugging Face turns the cache off there) nor on an FSDP2-
sharded model (every rank must run the same forwards).

Inputs move to the model's device here; `score_tokens` returns scores there (the loss needs
them), `score_batch` brings them back to the CPU, where the batch's bookkeeping lives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tandemrl.algos.entropy import entropy_from_logits
from tandemrl.models.sharding import is_sharded, model_device
from tandemrl.rollout.batch import RolloutBatch


@dataclass
class TokenScores:
    logp: torch.Tensor  # [B, T] log π(y_t | prompt, y_<t)
    entropy: torch.Tensor | None  # [B, T] entropy of π(· | prompt, y_<t)


def distinct_prompts(
    prompt_ids: torch.Tensor, prompt_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, inverse): row `first[u]` holds the u-th distinct prompt and row b's prompt is
    `first[inverse[b]]`. Padding is masked out of the comparison, so it never tells prompts apart
    or makes two different prompts look equal."""
    key = torch.cat([prompt_ids * prompt_mask, prompt_mask], dim=1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    rows = torch.arange(len(inverse), device=inverse.device)
    first = torch.full(
        (int(inverse.max()) + 1,), len(inverse), dtype=torch.long, device=rows.device
    )
    first = first.scatter_reduce(0, inverse, rows, reduce="amin")
    return first, inverse


def _outputs_before_responses(
    module: nn.Module,
    p_ids: torch.Tensor,
    p_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    share_prompts: bool,
    field: str,
) -> torch.Tensor:
    """[B, T, ...] output `field` ("logits" of a causal LM, or "last_hidden_state" of its
    decoder) at the position that predicts each response token: the prompt's last position
    for y_0, response position t - 1 for y_t.

    One forward over prompt + response per row; or, when `share_prompts` finds repeated
    prompts, each distinct prompt forwarded once, its cache gathered to every row that uses
    it (indexing, so gradients flow back to the prompt pass) and the responses forwarded on
    top of it. An LM computes logits only at the positions returned (`logits_to_keep`).
    """
    t = response_ids.shape[1]
    device = model_device(module)
    p_ids, p_mask = p_ids.to(device), p_mask.to(device)
    response_ids, response_mask = response_ids.to(device), response_mask.to(device)
    share_prompts = share_prompts and can_share_prompts(module)

    def keep(n: int) -> dict:
        return {"logits_to_keep": n} if field == "logits" else {}

    attention_mask = torch.cat([p_mask, response_mask], dim=1)
    # Left padding shifts positions; rebuild them from the mask as generate() does.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    first, inverse = (None, None)
    if share_prompts:
        first, inverse = distinct_prompts(p_ids, p_mask)
    if first is None or len(first) == len(inverse):
        out = module(
            input_ids=torch.cat([p_ids, response_ids], dim=1),
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            **keep(t + 1),
        )
        return getattr(out, field)[:, -t - 1 : -1]
    u_mask = p_mask[first]
    prompt_out = module(
        input_ids=p_ids[first],
        attention_mask=u_mask,
        position_ids=(u_mask.cumsum(-1) - 1).clamp(min=0),
        use_cache=True,
        **keep(1),
    )
    cache = prompt_out.past_key_values
    cache.batch_select_indices(inverse)
    response_out = module(
        input_ids=response_ids,
        attention_mask=attention_mask,
        position_ids=position_ids[:, p_ids.shape[1] :],
        past_key_values=cache,
        use_cache=True,
        **keep(t),
    )
    last_prompt = getattr(prompt_out, field)[:, -1:][inverse]
    return torch.cat([last_prompt, getattr(response_out, field)[:, :-1]], dim=1)


def can_share_prompts(module: nn.Module) -> bool:
    """Whether a repeated prompt may be forwarded once for its rows (module docstring)."""
    flag = "is_activation_checkpointing"  # transformers 5.x (formerly is_gradient_checkpointing)
    if not hasattr(module, flag):
        flag = "is_gradient_checkpointing"
    checkpointing = module.training and getattr(module, flag, False)
    return not checkpointing and not is_sharded(module)


def states_before_responses(
    decoder: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    share_prompts: bool = True,
) -> torch.Tensor:
    """[B, T, H] last hidden state at the position that predicts each response token, aligned
    as `score_tokens` aligns its logits; for heads on the trunk such as PPO's value head.
    `decoder` is a Hugging Face decoder without the LM head (`model.get_decoder()`)."""
    args = (prompt_ids, prompt_mask, response_ids, response_mask, share_prompts)
    return _outputs_before_responses(decoder, *args, field="last_hidden_state")


def score_tokens(
    model: nn.Module,
    batch: RolloutBatch,
    temperature: float = 1.0,
    with_entropy: bool = False,
    prompt_ids: torch.Tensor | None = None,
    prompt_mask: torch.Tensor | None = None,
    share_prompts: bool = True,
    entropy_grad: bool = False,
) -> TokenScores:
    """Log-probs (and entropies) of `batch.response_ids` under `model`, differentiable.

    The entropy is a detached metric unless `entropy_grad` (an entropy bonus in the loss needs
    its gradient; it keeps the [B, T, V] probabilities for the backward pass).

    Logits are divided by the sampling temperature so that the scored distribution is the one
    that was sampled from. `prompt_ids`/`prompt_mask` override the batch's prompts (used when a
    response is scored under another context, e.g. a different system prompt).
    `share_prompts` forwards each distinct prompt once (see the module docstring); it needs a
    model whose forward accepts `past_key_values`, as every Hugging Face causal LM does.
    """
    p_ids = batch.prompt_ids if prompt_ids is None else prompt_ids
    p_mask = batch.prompt_mask if prompt_mask is None else prompt_mask
    args = (p_ids, p_mask, batch.response_ids, batch.response_mask, share_prompts)
    logits = _outputs_before_responses(model, *args, field="logits")
    logits = logits.float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    log_norm = torch.logsumexp(logits, dim=-1)
    response_ids = batch.response_ids.to(logits.device)
    token_logits = logits.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1)
    logp = token_logits - log_norm
    entropy = None
    if entropy_grad:
        entropy = entropy_from_logits(logits)
    elif with_entropy:
        with torch.no_grad():
            probs = torch.softmax(logits, dim=-1)
            entropy = log_norm - (probs * logits).sum(-1)
    return TokenScores(logp=logp, entropy=entropy)


@torch.no_grad()
def score_batch(
    model: nn.Module,
    batch: RolloutBatch,
    temperature: float,
    micro_batch_size: int,
    with_entropy: bool = False,
) -> TokenScores:
    """`score_tokens` without gradient, `micro_batch_size` rows per forward, concatenated on
    the CPU: old log-probs, reference log-probs, a frozen policy's scores. In eval mode (no
    dropout): these are the scores of the policy itself, not of a noisy copy."""
    was_training = model.training
    model.eval()
    try:
        parts = [
            score_tokens(model, micro, temperature, with_entropy=with_entropy)
            for micro in batch.microbatches(micro_batch_size)
        ]
    finally:
        model.train(was_training)
    entropy = torch.cat([p.entropy for p in parts]).cpu() if with_entropy else None
    return TokenScores(logp=torch.cat([p.logp for p in parts]).cpu(), entropy=entropy)
