"""Reward functions: strings and dataset columns in, one float per completion out.

Each reward takes the whole assistant message (the prompt's prefill plus the generated text) as
`completions` and the dataset columns it names as keywords; `RewardSet` matches columns to
signatures, weights and sums the rewards and never lets a NaN through.
"""

from grpo.rewards.choice import choice_reward
from grpo.rewards.countdown import (ExpressionError, countdown_numbers_reward, countdown_reward,
                                    countdown_strict_reward, evaluate_expression)
from grpo.rewards.math_answer import math_reward
from grpo.rewards.overlong import OverlongPenalty
from grpo.rewards.reward_set import RewardError, RewardOutput, RewardSet, join_outputs
from grpo.rewards.tags import extract_answer, format_reward, partial_format_reward

# The rewards a config names (GRPOConfig.rewards); any other callable works in RewardSet.
# "overlong" is built with the config's lengths (from_config.reward_set).
NAMED_REWARDS = {"format": format_reward, "partial_format": partial_format_reward,
                 "countdown": countdown_reward, "countdown_strict": countdown_strict_reward,
                 "countdown_numbers": countdown_numbers_reward,
                 "choice": choice_reward, "math": math_reward, "overlong": OverlongPenalty}

__all__ = [
    "NAMED_REWARDS", "ExpressionError", "OverlongPenalty", "RewardError", "RewardOutput",
    "RewardSet", "choice_reward", "countdown_numbers_reward", "countdown_reward",
    "countdown_strict_reward", "evaluate_expression", "extract_answer", "format_reward",
    "join_outputs", "math_reward", "partial_format_reward",
]
