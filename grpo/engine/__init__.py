"""Training engines: one small interface, a plain single-process engine and DeepSpeed ZeRO.

`TorchEngine` and `DeepSpeedEngine` are imported on first use, so `import grpo.engine` does not
import DeepSpeed (or transformers).
"""

from __future__ import annotations

from typing import Iterator, Protocol

import torch
from torch import Tensor

from grpo.rollouts import Rollouts


class Engine(Protocol):
    """What a training loop needs from an engine (see docs/architecture.md)."""

    rank: int  # this process's rank (0 in TorchEngine)
    world_size: int  # data-parallel ranks (1 in TorchEngine)
    model: torch.nn.Module  # the trainable transformers model (ZeRO-3: partitioned parameters)
    step: int  # train_step calls so far (what the learning-rate schedule counts)

    def train_step(self, rollouts: Rollouts, advantages: Tensor) -> dict[str, float]:
        """One optimizer step (or num_iterations of them) on this batch; returns metrics."""

    def named_weights(self) -> Iterator[tuple[str, Tensor]]:
        """Full (unsharded) weights, one tensor at a time, for sampler.load_weights."""

    def save(self, directory: str) -> None: ...

    def load(self, directory: str) -> None: ...

    def ref_logprobs(self, rollouts: Rollouts) -> Tensor | None:
        """[N, T] log-probs of the completions under the frozen reference; None when beta == 0."""


__all__ = ["Engine", "TorchEngine", "DeepSpeedEngine"]


def __getattr__(name: str):
    if name == "TorchEngine":
        from grpo.engine.torch_engine import TorchEngine
        return TorchEngine
    if name == "DeepSpeedEngine":
        from grpo.engine.deepspeed_engine import DeepSpeedEngine
        return DeepSpeedEngine
    raise AttributeError(f"module 'grpo.engine' has no attribute {name!r}")
