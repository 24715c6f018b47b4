"""A sequence-classification model as a reward function (`rm:<model>`), as TRL, verl and
OpenRLHF take reward models by name.

`RewardModel("org/name-or-path")` is a TRL-style reward function: it renders each (prompt,
completion) pair with the reward model's own chat template (plain "prompt\\n\\ncompletion"
when it has none), scores them in batches with `AutoModelForSequenceClassification` and
returns the logit of its single output (label 0 of several; `label=` picks another). The model
loads on the first call, in eval mode, on `device` (the trainer binds it to the policy's
device); `normalize="batch"` z-scores the scores over each call's batch (the scale of a reward
model's logits is arbitrary).
"""

from __future__ import annotations

from typing import Any

REWARD_MODEL_PREFIX = "rm:"


class RewardModel:
    """Reward = a classifier's score of (prompt, completion); see the module docstring."""

    def __init__(
        self,
        model: str,
        *,
        batch_size: int = 16,
        label: int = 0,
        normalize: str = "none",
        device: str = "cpu",
        max_length: int = 2048,
    ) -> None:
        if normalize not in ("none", "batch"):
            raise ValueError(f"normalize must be 'none' or 'batch', got {normalize!r}")
        self.model_name = model
        self.__name__ = model.rstrip("/").rpartition("/")[2] or "reward_model"
        self.batch_size, self.label, self.normalize = batch_size, label, normalize
        self.device, self.max_length = device, max_length
        self._model: Any = None
        self._tokenizer: Any = None

    def bind_device(self, device: Any) -> None:
        """Score on the policy's device (the trainer calls this once)."""
        self.device = device
        if self._model is not None:
            self._model.to(device)

    def _load(self) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(self.model_name)
        model = AutoModelForSequenceClassification.from_pretrained(self.model_name)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self._tokenizer.pad_token_id
        self._model = model.eval().requires_grad_(False).to(self.device)

    def _text(self, prompt: Any, completion: Any) -> str:
        messages = (
            list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
        )
        reply = completion if isinstance(completion, str) else completion[-1]["content"]
        if getattr(self._tokenizer, "chat_template", None):
            chat = [*messages, {"role": "assistant", "content": reply}]
            return self._tokenizer.apply_chat_template(chat, tokenize=False)
        return f"{messages[-1]['content']}\n\n{reply}"

    def __call__(self, prompts: list, completions: list, **_: Any) -> list[float | None]:
        import torch

        if self._model is None:
            self._load()
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        texts = [self._text(p, c) for p, c in zip(prompts, completions, strict=True)]
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            enc = self._tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
            ).to(self.device)
            with torch.no_grad():
                logits = self._model(**enc).logits.float()
            scores += logits[:, self.label].cpu().tolist()
        if self.normalize == "batch" and len(scores) > 1:
            t = torch.tensor(scores)
            scores = ((t - t.mean()) / (t.std() + 1e-6)).tolist()
        return scores
