"""Generation and scoring of responses: one `RolloutBatch` flows through a training step."""

from tandemrl.rollout.batch import RolloutBatch
from tandemrl.rollout.engine import HFEngine, PolicySampler, RolloutEngine, SampleRequest
from tandemrl.rollout.generate import SamplingConfig, encode_prompts, generate
from tandemrl.rollout.logprobs import TokenScores, score_batch, score_tokens

__all__ = [
    "HFEngine",
    "PolicySampler",
    "RolloutBatch",
    "RolloutEngine",
    "SampleRequest",
    "SamplingConfig",
    "TokenScores",
    "encode_prompts",
    "generate",
    "score_batch",
    "score_tokens",
]
