"""A trainer run in its own process (so a test can SIGKILL it), with a reward that varies.

The base model almost never writes the R1 format in 16 tokens, so the built-in rewards are all 0
there and every step would be skipped; this dense reward (the share of digits in the completion)
gives every group some variance, so the resume test checks steps that really train.
"""

import sys

from grpo.config import GRPOConfig
from grpo.rewards import RewardSet, format_reward
from grpo.trainer import GRPOTrainer


def digit_share(completions: list[str]) -> list[float]:
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


if __name__ == "__main__":
    config = GRPOConfig.from_args(sys.argv[1:])
    GRPOTrainer(config, reward_set=RewardSet([format_reward, digit_share])).train()
