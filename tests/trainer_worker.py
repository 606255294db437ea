"""A trainer run in its own process (so a test can SIGKILL it, or torchrun can start two), with a
reward that varies.

The base model almost never writes the R1 format in 16 tokens, so the built-in rewards are all 0
there and every step would be skipped; this dense reward (the completion's length in characters)
gives a group variance for puzzles whose target is a multiple of 4 and ties every other group, so
dynamic sampling has groups to set aside. With GRPO_TEST_CALLS=dir each rank writes, for each of
its sample calls, the number of prompts, the seed, first_row and the completions' token ids to
dir/calls_rank<r>.json.
"""

import json
import os
import sys
from pathlib import Path

from grpo.config import GRPOConfig
from grpo.rewards import RewardSet, format_reward
from grpo.trainer import GRPOTrainer


def length_if_target_divisible_by_4(completions: list[str], target: list) -> list[float]:
    return [len(c) / 100 if int(t) % 4 == 0 else 0.0 for c, t in zip(completions, target)]


def length(completions: list[str]) -> list[float]:
    return [len(c) / 100 for c in completions]


if __name__ == "__main__":
    config = GRPOConfig.from_args(sys.argv[1:])
    # GRPO_TEST_REWARD=length: every group has signal, so the mean reward does not depend on
    # which prompts a step drew and a short run can show it rise.
    dense = length if os.environ.get("GRPO_TEST_REWARD") == "length" else \
        length_if_target_divisible_by_4
    trainer = GRPOTrainer(config, reward_set=RewardSet([format_reward, dense]))
    calls, sample = [], trainer.sampler.sample

    def recorded(prompts, **kw):
        rollouts = sample(prompts, **kw)
        completions = [ids[mask.bool()].tolist() for ids, mask in
                       zip(rollouts.completion_ids, rollouts.completion_mask)]
        calls.append([len(prompts), kw.get("seed"), kw.get("first_row", 0), completions])
        return rollouts

    trainer.sampler.sample = recorded
    trainer.train()
    if os.environ.get("GRPO_TEST_CALLS"):
        path = Path(os.environ["GRPO_TEST_CALLS"]) / f"calls_rank{trainer.rank}.json"
        path.write_text(json.dumps(calls))
