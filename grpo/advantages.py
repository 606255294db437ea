"""Group-relative advantages (DeepSeekMath sec. 4.1.2, outcome supervision).

Each prompt's G completions are one group, stored contiguously: rows [g*G, (g+1)*G).
A group whose rewards are all equal carries no signal and gets A = 0 exactly (never NaN).
"""

from __future__ import annotations

import typing
from typing import Literal

import torch
from torch import Tensor

Scale = Literal["group", "batch", "none"]
SCALES = typing.get_args(Scale)


def group_advantages(
    rewards: Tensor,  # [N] one scalar reward per completion, N = B * G
    group_size: int,  # G in DeepSeekMath
    scale: str = "group",
    eps: float = 1e-4,
) -> Tensor:  # [N]
    """A_i = (r_i - mean(group)) / (std + eps).

    scale="group": std of the group (unbiased, as the paper's sample std);
    scale="batch": std of the whole batch (more robust to near-constant groups);
    scale="none":  only centre the rewards (Dr. GRPO: dividing by std biases toward easy/hard
                   prompts).
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [N], got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 (GRPO compares completions), got {group_size}")
    if rewards.numel() % group_size != 0:
        raise ValueError(f"group_size={group_size} does not divide the number of rewards "
                         f"N={rewards.numel()}")
    if not torch.isfinite(rewards).all():
        bad = (~torch.isfinite(rewards)).nonzero().flatten().tolist()
        raise ValueError(f"rewards must be finite, got non-finite values at indices {bad[:10]}")
    if not rewards.is_floating_point():
        rewards = rewards.float()

    grouped = rewards.view(-1, group_size)  # [B, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    elif scale == "batch":
        centred = centred / (rewards.std() + eps)
    return centred.view(-1)


def zero_variance_groups(rewards: Tensor, group_size: int) -> Tensor:  # rewards: [N] -> [B] bool
    """Groups whose rewards are all equal: their advantages are 0 and they teach nothing."""
    grouped = rewards.view(-1, group_size)
    return (grouped == grouped[:, :1]).all(dim=1)
