"""Runs one vLLM scenario in its own process and prints its findings as JSON (last line).

Why a separate process: an in-process vLLM engine binds the process's threads and memory
to cores, replaces `torch.set_num_threads` with a no-op and starts a one-rank process group;
none of that should leak into the rest of the test session. Used by tests/test_vllm.py:

    python -m tests.vllm_worker base|lora-merge|lora-adapter|grpo|dupo
"""

from __future__ import annotations

import copy
import json
import sys

import torch

from tandemrl.models import load_model
from tandemrl.models.adapters import LoraConfig, adapter_parameters, apply_lora_adapters
from tandemrl.rollout import HFEngine, SampleRequest, SamplingConfig, score_batch
from tandemrl.rollout.generate import encode_prompts
from tandemrl.rollout.vllm_engine import VllmEngine, VllmSettings

QUESTIONS = [(3, 4), (12, 9), (25, 17), (8, 8), (41, 7), (6, 13)]
PROMPTS = [
    [{"role": "user", "content": f"What is {a} + {b}? End your reply with: Answer: <number>"}]
    for a, b in QUESTIONS
]
OPEN_PROMPT = [[{"role": "user", "content": "Name one animal."}]]
GREEDY = SamplingConfig(max_new_tokens=32, temperature=0.0)
SETTINGS = VllmSettings(enforce_eager=True, cpu_kv_cache_gb=0.5)
FREQ_SAMPLES = 800


def greedy_pair(model, tokenizer, engine, names=None) -> dict:
    n = 1 if names is None else len(names) // len(PROMPTS)
    request = SampleRequest(PROMPTS, n, GREEDY, adapter_names=names)
    hf = HFEngine(tokenizer).generate(model, request)
    vllm = engine.generate(model, request)
    width = max(hf.response_ids.shape[1], vllm.response_ids.shape[1])
    pad = torch.nn.functional.pad
    same_ids = torch.equal(
        pad(hf.response_ids * hf.response_mask, (0, width - hf.response_ids.shape[1])),
        pad(vllm.response_ids * vllm.response_mask, (0, width - vllm.response_ids.shape[1])),
    )
    return {"hf": hf.completions, "vllm": vllm.completions, "same_ids": same_ids}


def first_token_frequencies(model, tokenizer, engine) -> dict:
    """Exact next-token probabilities of an open prompt, and how often each engine drew each
    of the likeliest tokens in FREQ_SAMPLES one-token samples at T=1."""
    one = SamplingConfig(max_new_tokens=1, temperature=1.0)
    request = SampleRequest(OPEN_PROMPT, FREQ_SAMPLES, one, seed=11)
    drawn = {
        "hf": HFEngine(tokenizer).generate(model, request).response_ids[:, 0],
        "vllm": engine.generate(model, request).response_ids[:, 0],
    }
    ids, _ = encode_prompts(tokenizer, OPEN_PROMPT)
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits[0, -1].float(), -1)
    top = probs.topk(8).indices.tolist()
    nucleus = nucleus_tokens(probs, 0.5)
    top_p = SamplingConfig(max_new_tokens=1, temperature=1.0, top_p=0.5)
    in_nucleus = engine.generate(model, SampleRequest(OPEN_PROMPT, 300, top_p, seed=3))
    return {
        "n": FREQ_SAMPLES,
        "p": [probs[t].item() for t in top],
        **{k: [(v == t).float().mean().item() for t in top] for k, v in drawn.items()},
        "top_p_outside": sorted(set(in_nucleus.response_ids[:, 0].tolist()) - set(nucleus)),
        "nucleus_size": len(nucleus),
    }


def nucleus_tokens(probs: torch.Tensor, top_p: float) -> list[int]:
    """The smallest set of likeliest tokens whose probability reaches top_p."""
    p, order = probs.sort(descending=True)
    keep = (p.cumsum(0) - p) < top_p
    return order[keep].tolist()


def logprob_gap(model, engine, adapter_names=None) -> dict:
    sampling = SamplingConfig(max_new_tokens=32, temperature=1.0)
    batch = engine.generate(model, SampleRequest(PROMPTS, 4, sampling, seed=5))
    again = engine.generate(model, SampleRequest(PROMPTS, 4, sampling, seed=5))
    other = engine.generate(model, SampleRequest(PROMPTS, 4, sampling, seed=6))
    trainer = score_batch(model, batch, 1.0, 8).logp
    gap = (trainer - batch.sampling_logp)[batch.response_mask.bool()].abs()
    return {
        "gap_mean": gap.mean().item(),
        "gap_max": gap.max().item(),
        "same_seed_same": again.completions == batch.completions,
        "other_seed_differs": other.completions != batch.completions,
        "distinct": len(set(batch.completions)),
    }


def scenario_base() -> dict:
    loaded = load_model("smollm2-135m")
    model, tokenizer = loaded.model.eval(), loaded.tokenizer
    engine = VllmEngine(tokenizer, SETTINGS)
    out = {"greedy": greedy_pair(model, tokenizer, engine)}
    out["frequencies"] = first_token_frequencies(model, tokenizer, engine)
    out["gap"] = logprob_gap(model, engine)
    pushes = engine.pushes
    greedy_pair(model, tokenizer, engine)
    out["pushes_unchanged"] = engine.pushes - pushes
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # an in-place edit, as an optimizer step makes one
        for layer in model.model.layers[-4:]:
            w = layer.mlp.down_proj.weight
            w.add_(torch.randn(w.shape, generator=generator) * 0.02)
    out["after_edit"] = greedy_pair(model, tokenizer, engine)
    out["pushes_after_edit"] = engine.pushes - pushes
    return out


def two_adapter_model():
    loaded = load_model("smollm2-135m")
    torch.manual_seed(0)
    model = apply_lora_adapters(loaded.model, LoraConfig(), ["explore", "exploit"])
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # as if trained: B != 0, and different per adapter
        for name, scale in (("explore", 0.02), ("exploit", 0.04)):
            for key, p in adapter_parameters(model, name).items():
                if "lora_B" in key:
                    p.copy_(torch.randn(p.shape, generator=generator) * scale)
    return model.eval(), loaded.tokenizer


def scenario_lora(mode: str) -> dict:
    model, tokenizer = two_adapter_model()
    engine = VllmEngine(tokenizer, VllmSettings(**{**vars(SETTINGS), "lora": mode}))
    names = ["explore", "exploit"] * len(PROMPTS)  # row 2i: explorer, 2i+1: exploiter
    first = greedy_pair(model, tokenizer, engine, names)
    ids_before = {k: v[1].lora_int_id for k, v in engine._adapters.items()}
    with torch.no_grad():  # an update of the exploiter alone
        for key, p in adapter_parameters(model, "exploit").items():
            if "lora_B" in key:
                p.mul_(-1.0)
    return {
        "greedy": first,
        "after_edit": greedy_pair(model, tokenizer, engine, names),
        "pushes": engine.pushes,
        "lora_ids_before": ids_before,
        "lora_ids_after": {k: v[1].lora_int_id for k, v in engine._adapters.items()},
    }


def method_steps(method_keys: list[str], steps: int = 2) -> dict:
    """`steps` training steps of a method on SmolLM2 with rollout.engine=vllm (on the toy
    letters task, whose rewards vary in every group, so every update moves the weights); the
    step metrics, and the log-prob gap of the last step's samples to the policy before the
    update that preceded them (what the engine would have sampled from had the push after
    that update been skipped)."""
    import tests.toy_task  # noqa: F401  (registers toy_letters)
    from tandemrl.loop import load_config
    from tandemrl.loop.trainer import seed_everything
    from tandemrl.methods import RunContext, get_method_class
    from tandemrl.tasks import get_task

    keys = ["model=smollm2-135m", "rollout.engine=vllm", "vllm.enforce_eager=true",
            "vllm.cpu_kv_cache_gb=0.5", "rollout.prompts_per_step=4", "rollout.group_size=4",
            "rollout.max_new_tokens=24", "optim.lr=2e-3", "task=toy_letters", *method_keys]  # fmt: skip
    cfg = load_config(None, keys)
    seed_everything(0)
    task = get_task(cfg.task, **cfg.task_options)
    method = get_method_class(cfg.method)(RunContext(cfg, load_model(cfg.model), task))
    examples = list(task.train_examples())
    batches, sample = [], method.rollout

    def keep(step, ex):
        batches.append(sample(step, ex))
        return batches[-1]

    method.rollout = keep
    records, snapshots = [], []
    for step in range(steps):
        snapshots.append(copy.deepcopy(method.policy.state_dict()))
        records.append(method.step(step, examples[step * 4 : step * 4 + 4]))
    last = batches[-1]
    trained = copy.deepcopy(method.policy.state_dict())
    method.policy.load_state_dict(snapshots[-2])
    with torch.no_grad():
        stale = score_batch(method.eval_policy(), last, 1.0, 8).logp
    method.policy.load_state_dict(trained)
    mask = last.response_mask.bool()
    stale_gap = (stale - last.sampling_logp)[mask].abs().mean().item()
    engine = method.rollout_engine
    names = None
    if method.name == "dupo":  # both policies, row by row, in one engine call
        names = ["explore", "exploit"] * len(PROMPTS)
    greedy = greedy_pair(method.policy, method.tokenizer, engine, names)
    return {"records": records, "stale_gap": stale_gap, "greedy": greedy, "pushes": engine.pushes}


if __name__ == "__main__":
    name = sys.argv[1]
    torch.set_num_threads(2)
    runs = {
        "base": scenario_base,
        "lora-merge": lambda: scenario_lora("merge"),
        "lora-adapter": lambda: scenario_lora("adapter"),
        "grpo": lambda: method_steps(["method=grpo", "rollout.tis_cap=2"]),
        "dupo": lambda: method_steps(["method=dupo"]),
    }
    print(json.dumps(runs[name](), default=float))
