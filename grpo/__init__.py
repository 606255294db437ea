"""grpo: Group Relative Policy Optimization in plain PyTorch.

A custom loop is five calls (see docs/architecture.md):
sampler.sample -> reward_set -> group_advantages -> engine.train_step -> sampler.load_weights.
Heavy parts (vLLM, DeepSpeed, transformers) are imported by the modules that need them, so
`import grpo` and the pure math stay light.
"""

from grpo.advantages import group_advantages
from grpo.loss import GRPOLoss, LossOutput, grpo_loss, k3_kl, loss_normalizer

__version__ = "0.1.0"
__all__ = ["GRPOLoss", "LossOutput", "grpo_loss", "group_advantages", "k3_kl", "loss_normalizer"]
