"""Batched sampling with a KV cache (Hugging Face `generate`), returning a `RolloutBatch`.

Measured here: a hand-written decode loop with a KV cache was no faster than `generate` on
CPU, so we use `generate` and spend our effort on not recomputing what it already did.
Rows that repeat a prompt (a group's samples) share its prefill: the prompt is encoded once
and its cache copied to those rows (`prefill_once`), instead of once per sample.
Sampling draws each token by inverse CDF (`InverseCdfSampler`) rather than `generate`'s
`torch.multinomial`, which was 13 % of the rollout here (scripts/profile_step.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation import (
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from tandemrl.models.adapters import mixed_adapter_rows
from tandemrl.models.memory import release_freed_memory
from tandemrl.models.sharding import is_sharded, model_device
from tandemrl.rollout.batch import RolloutBatch
from tandemrl.rollout.logprobs import distinct_prompts


@dataclass
class SamplingConfig:
    max_new_tokens: int = 32
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off


class InverseCdfSampler(LogitsProcessor):
    """Draws the next token itself and hands `generate` (run greedy) a score that is 0 at the
    drawn token and -inf elsewhere, so greedy decoding emits exactly the sampled token.

    Why: `torch.multinomial` draws one exponential variate per vocabulary entry; for 32 rows
    of a 49k vocabulary that took 33 ms a token on the reference CPU (13 % of the rollout).
    Inverse-CDF sampling needs one uniform per row: with c = cumsum(softmax(z)) the token is
    the first index where c > u * c[-1], u ~ U[0, 1): the same categorical distribution (a
    token whose probability is below the float32 spacing of c, ~6e-8, is never drawn).
    Temperature, top-k and top-p are applied first, in `generate`'s order, by its own warpers.
    Draws come from the global torch RNG, so `generate(seed=...)` stays reproducible.
    """

    def __init__(self, temperature: float, top_k: int = 0, top_p: float = 1.0) -> None:
        self.warpers = [TemperatureLogitsWarper(temperature)]
        if top_k > 0:
            self.warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        cdf = torch.softmax(scores.float(), dim=-1).cumsum(dim=-1)
        u = torch.rand(cdf.shape[0], 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
        token = torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[1] - 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, token, 0.0)


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[list[dict[str, str]]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the chat template and left-pad: returns (input_ids, attention_mask)."""
    texts = [
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        for messages in prompts
    ]
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


def response_mask_from_ids(response_ids: torch.Tensor, eos_ids: list[int]) -> torch.Tensor:
    """1 for tokens up to and including the first EOS, 0 afterwards."""
    is_eos = torch.isin(response_ids, torch.tensor(eos_ids))
    # Count of EOS strictly before each position: a token is kept while that count is 0.
    eos_before = torch.cumsum(is_eos.long(), dim=1) - is_eos.long()
    return (eos_before == 0).long()


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[dict[str, str]]],
    num_samples: int,
    sampling: SamplingConfig,
    seed: int | None = None,
    batch_size: int | None = None,
    adapter_names: list[str] | None = None,
) -> RolloutBatch:
    """Sample `num_samples` responses per prompt. Row i*num_samples+j is sample j of prompt i.

    `seed` makes the draw reproducible (the global torch RNG is forked, not disturbed).
    `batch_size` caps how many sequences are decoded at once (memory).
    `adapter_names` (one per row, peft models only) samples each row from its own adapter in
    one batched decode over the shared base ("__base__" = none; see
    `models.adapters.mixed_adapter_rows`: order rows by adapter for the fast path).

    Decoding runs on the model's device; the batch comes back on the CPU. On an FSDP2-sharded
    model every rank decodes in step (`synced_gpus`: a rank that has finished keeps running
    forwards until all have) and the shared-prompt prefill is skipped, so every rank runs the
    same forwards.
    """
    device = model_device(model)
    synced = is_sharded(model)
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
    prompt_ids = prompt_ids.repeat_interleave(num_samples, dim=0)
    prompt_mask = prompt_mask.repeat_interleave(num_samples, dim=0)
    eos_ids = eos_token_ids(model, tokenizer)
    greedy = sampling.temperature <= 0
    sampler = LogitsProcessorList(
        [] if greedy else [InverseCdfSampler(sampling.temperature, sampling.top_k, sampling.top_p)]
    )
    gen_cfg = GenerationConfig(
        max_new_tokens=sampling.max_new_tokens,
        do_sample=False,  # sampled rows are drawn by `sampler`; greedy decoding then keeps them
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    total = prompt_ids.shape[0]
    if adapter_names is not None and len(adapter_names) != total:
        raise ValueError(f"adapter_names has {len(adapter_names)} entries for {total} rows")
    step = batch_size or total
    chunks = []
    was_training = model.training
    model.eval()
    # The sampler draws on the model's device: fork (and seed) that device's generator too.
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        if seed is not None:
            torch.manual_seed(seed)
        for start in range(0, total, step):
            ids = prompt_ids[start : start + step].to(device)
            mask = prompt_mask[start : start + step].to(device)
            names = None if adapter_names is None else list(adapter_names[start : start + step])
            prefill = {} if synced else prefill_once(model, ids, mask, names)
            rows, extra = contextlib.nullcontext(), {}
            if names is not None:
                rows, extra = mixed_adapter_rows(model, names)
            with rows:
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    generation_config=gen_cfg,
                    logits_processor=sampler,
                    synced_gpus=synced,
                    **prefill,
                    **extra,
                )
            chunks.append(out[:, ids.shape[1] :].cpu())
    model.train(was_training)
    # The caches and logits of the decode are freed now; on the CPU their heap pages stay in
    # the RSS until trimmed (450 MB a rank for 2-rank FSDP2 SmolLM2, docs/distributed.md).
    release_freed_memory()
    width = max(c.shape[1] for c in chunks)
    pad = tokenizer.pad_token_id
    response_ids = torch.cat(
        [torch.nn.functional.pad(c, (0, width - c.shape[1]), value=pad) for c in chunks]
    )
    return rollout_batch(tokenizer, prompt_ids, prompt_mask, response_ids, eos_ids, num_samples)


def rollout_batch(
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    response_ids: torch.Tensor,
    eos_ids: list[int],
    num_samples: int,
    **extra: torch.Tensor,
) -> RolloutBatch:
    """The batch of an engine's output: rows (prompt i, sample j) at i*num_samples+j, prompts
    already repeated per row, responses right-padded; masks, truncation and text follow from
    the ids (`extra`: more RolloutBatch fields, e.g. the engine's sampling log-probs)."""
    response_mask = response_mask_from_ids(response_ids, eos_ids)
    # Padding may reuse the EOS id; mask positions that were padded after finishing.
    has_eos = (torch.isin(response_ids, torch.tensor(eos_ids)) & response_mask.bool()).any(-1)
    pad = tokenizer.pad_token_id
    completions = tokenizer.batch_decode(
        response_ids.masked_fill(response_mask == 0, pad), skip_special_tokens=True
    )
    n_prompts = len(prompt_ids) // num_samples
    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        group_ids=torch.arange(n_prompts).repeat_interleave(num_samples),
        example_index=[i for i in range(n_prompts) for _ in range(num_samples)],
        completions=completions,
        truncated=~has_eos,
        **{k: v * response_mask for k, v in extra.items()},
    )


def prefill_once(
    model: PreTrainedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    adapter_names: list[str] | None = None,
) -> dict:
    """`generate` kwargs that start from a cache of each prompt's tokens but the last, computed
    once per distinct prompt (and adapter, for mixed-adapter rows) and gathered to the rows
    that repeat it; `generate` then only runs the last prompt token and the new ones. Same
    logits as encoding every row (greedy decoding gives identical tokens; sampled ones can
    differ by float rounding). {} when no row repeats another."""
    if ids.shape[1] < 2:
        return {}
    key_ids, key_mask = ids, mask
    if adapter_names is not None:
        codes = {name: i for i, name in enumerate(dict.fromkeys(adapter_names))}
        code = torch.tensor(
            [[codes[name]] for name in adapter_names], dtype=ids.dtype, device=ids.device
        )
        key_ids = torch.cat([ids, code], dim=1)
        key_mask = torch.cat([mask, torch.ones_like(code, dtype=mask.dtype)], dim=1)
    first, inverse = distinct_prompts(key_ids, key_mask)
    if len(first) == len(ids):
        return {}
    rows, extra = contextlib.nullcontext(), {}
    if adapter_names is not None:
        rows, extra = mixed_adapter_rows(model, [adapter_names[i] for i in first.tolist()])
    first_mask = mask[first, :-1]
    with rows:
        out = model(
            input_ids=ids[first, :-1],
            attention_mask=first_mask,
            position_ids=(first_mask.cumsum(-1) - 1).clamp(min=0),
            logits_to_keep=1,
            use_cache=True,
            **extra,
        )
    cache = out.past_key_values
    cache.batch_select_indices(inverse)
    return {"past_key_values": cache}


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokens that end a response: the tokenizer's EOS and the model's generation EOS."""
    ids = {tokenizer.eos_token_id}
    cfg_eos = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(cfg_eos, int):
        ids.add(cfg_eos)
    elif isinstance(cfg_eos, list):
        ids.update(cfg_eos)
    return sorted(i for i in ids if i is not None)
