"""Random models built locally, with a byte-level tokenizer: nothing to download.

`tiny`: a small random Llama for tests. Two layers, hidden size 64, a 259-token vocabulary
(256 bytes + 3 specials) and a ChatML-style chat template, so every code path that a real
model takes (chat template, EOS stop, padding, LoRA) runs in milliseconds.

`smollm2-135m-random`: SmolLM2-135M's architecture (30 layers, hidden 576, 9 query and 3
key/value heads, a 49152-entry vocabulary, tied embeddings) with random weights: the same
compute and memory per step as the real model, for speed and memory checks on machines where
its weights cannot be brought (`make gpu-check`). It learns nothing useful.

Weights are initialised from a fixed seed: two builds are equal.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tandemrl.models.loading import LoadedModel, register_model

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<pad>", "<|im_start|>", "<|im_end|>"]


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(byte_chars):
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def build_tiny_model(vocab_size: int, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    return _seeded(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=True,
        ),
        dtype,
    )


def _seeded(config: LlamaConfig, dtype: torch.dtype) -> LlamaForCausalLM:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    return model.to(dtype)


# SmolLM2-135M's config.json, as far as the compute goes.
SMOLLM2_135M = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}


@register_model("tiny")
def load_tiny(dtype: torch.dtype) -> LoadedModel:
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(len(tokenizer), dtype)
    return LoadedModel(model=model, tokenizer=tokenizer, name="tiny", pretrained=False)


@register_model("smollm2-135m-random")
def load_smollm2_random(dtype: torch.dtype) -> LoadedModel:
    tokenizer = build_tiny_tokenizer()
    ids = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    model = _seeded(LlamaConfig(**SMOLLM2_135M, **ids), dtype)
    # Its vocabulary is SmolLM2's; the byte tokenizer reads only the first 259 ids (the
    # rest decode to nothing), which changes nothing in the cost of a step.
    return LoadedModel(
        model=model, tokenizer=tokenizer, name="smollm2-135m-random", pretrained=True
    )
