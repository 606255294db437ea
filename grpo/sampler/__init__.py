"""Group samplers: G completions per prompt, with the sampler's own log-prob of every token.

| module | holds |
| --- | --- |
| `base.py` | `GroupSampler` (the protocol) and what both samplers accept |
| `vllm.py` | `VLLMSampler`: in-process vLLM, new weights pushed in place |
| `hf.py` | `HFSampler`: transformers `generate`, for models vLLM can't run |

Both return `Rollouts` (grpo/rollouts.py). vLLM and transformers are imported when a sampler is
built, not by `import grpo.sampler`.
"""

from grpo.rollouts import Rollouts
from grpo.sampler.base import GroupSampler
from grpo.sampler.hf import HFSampler
from grpo.sampler.vllm import VLLMSampler

__all__ = ["GroupSampler", "HFSampler", "Rollouts", "VLLMSampler"]
