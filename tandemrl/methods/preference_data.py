"""Preference data for DPO/IPO: reading an offline JSONL file of (prompt, chosen, rejected) and
laying pairs out as a `RolloutBatch` that `score_tokens` can score.

File format, one JSON object per line (blank lines are skipped)::

    {"prompt": "Calculate 2 + 3.", "chosen": "2 + 3 = 5. Answer: 5", "rejected": "Answer: 6"}

`prompt` is a string (sent as one user message through the model's chat template, as task
prompts are) or a list of chat messages `{"role": ..., "content": ...}`; `chosen` and
`rejected` are the assistant's replies as plain text. Other keys are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from tandemrl.errors import ConfigError
from tandemrl.rollout import RolloutBatch
from tandemrl.rollout.generate import encode_prompts
from tandemrl.tasks.rows import read_json_lines

REQUIRED = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PreferenceRow:
    messages: list[dict[str, str]]
    chosen: str
    rejected: str
    line: int


def _messages(value: object, where: str) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    ok = (
        isinstance(value, list)
        and value
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in value
        )
    )
    if not ok:
        raise ConfigError(
            f"{where}: 'prompt' must be a string or a non-empty list of "
            "{'role': ..., 'content': ...} messages"
        )
    return [{"role": m["role"], "content": m["content"]} for m in value]


def load_preference_jsonl(path: str | Path, key: str = "dpo.data") -> list[PreferenceRow]:
    """Rows of a preference JSONL file; a ConfigError naming the file, line and fix otherwise."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{key}: no such file {str(file)!r} (a JSONL of prompt/chosen/rejected)")
    try:
        objects = read_json_lines(file)
    except ValueError as err:
        raise ConfigError(f"{key}: {err}") from None
    rows: list[PreferenceRow] = []
    for number, obj in objects:
        where = f"{file}:{number}"
        missing = [c for c in REQUIRED if c not in obj]
        if missing:
            raise ConfigError(
                f"{key}: {where} has no {', '.join(repr(c) for c in missing)} "
                f"(every line needs {', '.join(REQUIRED)}; it has {sorted(obj)})"
            )
        for column in ("chosen", "rejected"):
            if not isinstance(obj[column], str) or not obj[column]:
                raise ConfigError(f"{key}: {where}: {column!r} must be a non-empty string")
        messages = _messages(obj["prompt"], where)
        rows.append(PreferenceRow(messages, obj["chosen"], obj["rejected"], number))
    if not rows:
        raise ConfigError(
            f"{key}: {file} has no rows (expected JSON lines with {', '.join(REQUIRED)})"
        )
    return rows


def pair_batch(tokenizer: PreTrainedTokenizerBase, rows: list[PreferenceRow]) -> RolloutBatch:
    """Rows [c_0, r_0, c_1, r_1, ...] (each pair's chosen then rejected reply to its prompt):
    prompts through the chat template and left-padded, replies tokenized as generated text
    (no special tokens) with the EOS token appended and right-padded, as `generate` lays out
    its samples. `group_ids` is the pair index."""
    prompts = [row.messages for row in rows for _ in range(2)]
    replies = [text for row in rows for text in (row.chosen, row.rejected)]
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] + [eos] for text in replies]
    width = max(len(ids) for ids in encoded)
    response_ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    response_mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, ids in enumerate(encoded):
        response_ids[i, : len(ids)] = torch.tensor(ids)
        response_mask[i, : len(ids)] = 1
    n = len(prompts)
    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        group_ids=torch.arange(n) // 2,
        example_index=list(range(n)),
        completions=replies,
        truncated=torch.zeros(n, dtype=torch.bool),
    )


__all__ = ["PreferenceRow", "load_preference_jsonl", "pair_batch"]
