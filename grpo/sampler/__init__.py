"""Group samplers: G completions per prompt, with the sampler's own log-prob of every token.
`VLLMSampler` (in-process vLLM) and `HFSampler` (transformers `generate`) both follow
`GroupSampler` and return `Rollouts`; vLLM is imported when a sampler is built."""

from grpo.rollouts import Rollouts
from grpo.sampler.base import GroupSampler
from grpo.sampler.hf import HFSampler
from grpo.sampler.vllm import VLLMSampler

__all__ = ["GroupSampler", "HFSampler", "Rollouts", "VLLMSampler"]
