"""Training engines: the `Engine` interface, `TorchEngine` (one process) and `DeepSpeedEngine`
(ZeRO-2/3, offload), both taking a `StepSettings` (and a `LoraSettings` to train a LoRA adapter)
and running the step of `step.py`. DeepSpeed, peft and transformers are imported when an engine
is built, not by `import grpo.engine`."""

from __future__ import annotations

from typing import Iterator, Protocol

import torch
from torch import Tensor

from grpo.engine.deepspeed_engine import DeepSpeedEngine
from grpo.engine.settings import LoraSettings, StepSettings, ZeroSettings
from grpo.engine.torch_engine import TorchEngine
from grpo.rollouts import Rollouts


class Engine(Protocol):
    """What a training loop needs from an engine (see docs/architecture.md)."""

    rank: int  # this process's rank (0 in TorchEngine)
    world_size: int  # data-parallel ranks (1 in TorchEngine)
    model: torch.nn.Module  # the trainable transformers model (ZeRO-3: partitioned parameters;
    # with LoRA the peft model, base weights frozen)
    step: int  # train_step calls so far (what the learning-rate schedule counts)
    settings: StepSettings

    def train_step(self, rollouts: Rollouts, advantages: Tensor,
                   loss_mask: Tensor | None = None) -> dict[str, float]:
        """One optimizer step (or num_iterations of them) on this batch; returns metrics."""

    def named_weights(self) -> Iterator[tuple[str, Tensor]]:
        """Full (unsharded) weights, one tensor at a time, for sampler.load_weights (with LoRA:
        the base model's names, adapted weights merged)."""

    def adapter_weights(self) -> dict[str, Tensor]:
        """With LoRA: the adapter, PEFT's file names, for sampler.load_adapter (collective)."""

    def adapter_config(self) -> dict:
        """With LoRA: the adapter's adapter_config.json content."""

    def save(self, directory: str) -> None: ...

    def load(self, directory: str) -> None: ...

    def ref_logprobs(self, rollouts: Rollouts) -> Tensor | None:
        """[N, T] log-probs of the completions under the frozen reference; None when beta == 0."""


__all__ = ["DeepSpeedEngine", "Engine", "LoraSettings", "StepSettings", "TorchEngine",
           "ZeroSettings"]
