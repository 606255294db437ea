"""Training engines: one small interface, a plain single-process engine and DeepSpeed ZeRO."""

from __future__ import annotations

from typing import Iterator, Protocol

from torch import Tensor

from grpo.rollouts import Rollouts


class Engine(Protocol):
    """What a training loop needs from an engine (see docs/architecture.md)."""

    def train_step(self, rollouts: Rollouts, advantages: Tensor) -> dict[str, float]:
        """One optimizer step (or num_iterations of them) on this batch; returns metrics."""

    def named_weights(self) -> Iterator[tuple[str, Tensor]]:
        """Full (unsharded) weights, one tensor at a time, for sampler.load_weights."""

    def save(self, directory: str) -> None: ...

    def load(self, directory: str) -> None: ...
