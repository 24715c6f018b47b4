"""Per-token log-probabilities and entropies of the responses in a batch, in one forward.

Only the response positions go through the LM head (`logits_to_keep`): the vocabulary
projection is the largest single matmul of a small model, and prompt positions never need it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tandemrl.rollout.batch import RolloutBatch


@dataclass
class TokenScores:
    logp: torch.Tensor  # [B, T] log π(y_t | prompt, y_<t)
    entropy: torch.Tensor | None  # [B, T] entropy of π(· | prompt, y_<t)


def score_tokens(
    model: nn.Module,
    batch: RolloutBatch,
    temperature: float = 1.0,
    with_entropy: bool = False,
    prompt_ids: torch.Tensor | None = None,
    prompt_mask: torch.Tensor | None = None,
) -> TokenScores:
    """Log-probs (and entropies) of `batch.response_ids` under `model`, differentiable.

    Logits are divided by the sampling temperature so that the scored distribution is the one
    that was sampled from. `prompt_ids`/`prompt_mask` override the batch's prompts (used when a
    response is scored under another context, e.g. a different system prompt).
    """
    p_ids = batch.prompt_ids if prompt_ids is None else prompt_ids
    p_mask = batch.prompt_mask if prompt_mask is None else prompt_mask
    input_ids = torch.cat([p_ids, batch.response_ids], dim=1)
    attention_mask = torch.cat([p_mask, batch.response_mask], dim=1)
    # Left padding shifts positions; rebuild them from the mask as generate() does.
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    n_resp = batch.response_ids.shape[1]
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=n_resp + 1,
        use_cache=False,
    )
    logits = out.logits[:, :-1, :].float()
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    log_norm = torch.logsumexp(logits, dim=-1)
    token_logits = logits.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    logp = token_logits - log_norm
    entropy = None
    if with_entropy:
        with torch.no_grad():
            probs = torch.softmax(logits, dim=-1)
            entropy = log_norm - (probs * logits).sum(-1)
    return TokenScores(logp=logp, entropy=entropy)
