"""Group samplers: G completions per prompt, with the sampler's own log-prob of every token.
`VLLMSampler` (in-process vLLM), `VLLMServerSampler` (a separate `vllm serve` process) and
`HFSampler` (transformers `generate`) follow `GroupSampler` and return `Rollouts`; vLLM is
imported when a sampler is built."""

from grpo.rollouts import Rollouts
from grpo.sampler.base import GroupSampler
from grpo.sampler.hf import HFSampler
from grpo.sampler.vllm import VLLMSampler
from grpo.sampler.vllm_server import VLLMServerSampler

__all__ = ["GroupSampler", "HFSampler", "Rollouts", "VLLMSampler", "VLLMServerSampler"]
