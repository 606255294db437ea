"""Dynamic sampling, the overlong penalty, the numbers reward and the trainer's warnings.

The trainer's round logic is unit-tested here with a stand-in sampler and engine (the trainer is
the class under test); tests/test_trainer.py runs it with vLLM and TorchEngine through a SIGKILL
resume, and tests/test_engine_deepspeed.py with two ZeRO-3 ranks that need different rounds.
"""

import logging

import pytest
import torch
from datasets import Dataset

from grpo.config import GRPOConfig
from grpo.rewards import (OverlongPenalty, RewardSet, countdown_numbers_reward, join_outputs)
from grpo.rollouts import Rollouts
from grpo.seeds import data_order, derive_seed
from grpo.trainer import GRPOTrainer


class ScriptedSampler:
    """Completion j of a group is "x" * (j + 1): lengths differ within every group."""

    def __init__(self):
        self.calls = []  # (prompts, seed, first_row) per sample call

    def sample(self, prompts, *, seed=None, first_row=0, group_size=2, temperature=None):
        self.calls.append((list(prompts), seed, first_row))
        texts = ["x" * (j + 1) for _ in prompts for j in range(group_size)]
        return Rollouts.from_lists(
            prompt_ids=[[1] * (1 + len(p) % 3) for p in prompts for _ in range(group_size)],
            completion_ids=[[5] * len(t) for t in texts], logprobs=[[-1.0] * len(t) for t in texts],
            truncated=[False] * len(texts), texts=texts,
            prompts=[p for p in prompts for _ in range(group_size)], group_size=group_size,
            pad_id=0)

    def load_weights(self, named_tensors):
        list(named_tensors)

    def close(self):
        pass


class RecordingEngine:
    device, rank, world_size = torch.device("cpu"), 0, 1

    def __init__(self):
        self.batches = []  # (prompts, advantages) per train_step

    def train_step(self, rollouts, advantages, loss_mask=None):
        self.batches.append((rollouts.prompts, advantages.tolist()))
        return {"loss": 0.0}

    def named_weights(self):
        return iter(())

    def save(self, directory):
        pass


def even_targets_differ(completions, target):
    """Length for even targets (always differs in a group), 0 for odd ones (always tied)."""
    return [float(len(c)) if t % 2 == 0 else 0.0 for c, t in zip(completions, target)]


def _trainer(tmp_path, reward=even_targets_differ, **overrides):
    config = GRPOConfig(**{**dict(num_generations=2, per_device_train_batch_size=4,
                                  gradient_accumulation_steps=1, max_steps=3, save_steps=0,
                                  eval_steps=0, report_to="none", log_completions_steps=0,
                                  max_completion_length=16, seed=5, output_dir=str(tmp_path)),
                           **overrides})
    data = Dataset.from_dict({"prompt": [f"p{i}" for i in range(12)], "target": list(range(12))})
    return GRPOTrainer(config, train_dataset=data, reward_set=RewardSet([reward]),
                       sampler=ScriptedSampler(), engine=RecordingEngine())


def test_ties_force_extra_rounds_and_the_next_step_reads_on(tmp_path):
    trainer = _trainer(tmp_path, dynamic_sampling=True, dynamic_sampling_max_rounds=3)
    history = trainer.train()
    order = data_order(0, 40, 12, seed=5)  # the data order, 2 prompts a round
    position = 0
    for step, row in enumerate(history):
        # Predicted: rounds go on until 2 even targets were seen or 4 rounds were read.
        rounds, evens = 0, []
        while rounds < 4 and len(evens) < 2:
            evens += [i for i in order[position + 2 * rounds:position + 2 * rounds + 2]
                      if i % 2 == 0]
            rounds += 1
        prompts, advantages = trainer.engine.batches[step]
        kept = evens[:2]
        odd = [i for i in order[position:position + 2 * rounds] if i % 2][:2 - len(kept)]
        want = [i for i in order[position:position + 2 * rounds] if i in kept + odd]
        assert prompts == [f"p{i}" for i in want for _ in range(2)], step
        assert row["dynamic_sampling/rounds"] == rounds
        assert row["dynamic_sampling/groups_kept"] == len(kept)
        assert row["dynamic_sampling/groups_dropped"] == 2 * rounds - 2
        assert row["dynamic_sampling/prompts"] == 2 * rounds
        # Kept groups: lengths 1 and 2, mean 1.5, sample std 0.7071: -/+ 0.5 / (0.7071 + 1e-4)
        # = 0.70700; tied groups: 0.
        h = 0.5 / (0.5 ** 0.5 + 1e-4)
        assert advantages == pytest.approx(
            [a for i in want for a in ((-h, h) if i % 2 == 0 else (0.0, 0.0))])
        position += 2 * rounds
    assert trainer.prompts_consumed == position > 6  # some step needed more than one round
    # Each round drew its own noise: round k of step t is seeded derive_seed(5, t, k), and one
    # process's rows start at row 0 of the batch.
    expect = [derive_seed(5, step, k) for step, row in enumerate(history)
              for k in range(row["dynamic_sampling/rounds"])]
    assert [seed for _, seed, _ in trainer.sampler.calls] == expect
    assert len(set(expect)) == len(expect)
    assert {first_row for _, _, first_row in trainer.sampler.calls} == {0}


def test_the_round_cap_is_honoured_and_ties_fill_the_batch(tmp_path, caplog):
    def all_tied(completions):
        return [0.0] * len(completions)

    trainer = _trainer(tmp_path, reward=all_tied, max_steps=6, dynamic_sampling=True,
                       dynamic_sampling_max_rounds=2)
    with caplog.at_level(logging.WARNING, logger="grpo"):
        history = trainer.train()
    assert len(trainer.sampler.calls) == 6 * 3  # 1 + 2 rounds a step, never more
    assert [r["dynamic_sampling/rounds"] for r in history] == [3] * 6
    assert all(r["dynamic_sampling/groups_kept"] == 0 and r["dynamic_sampling/groups_dropped"] == 4
               for r in history)
    order = data_order(0, 36, 12, seed=5)
    # The batch is the first round's groups (the first tied ones), trained at advantage 0.
    assert trainer.engine.batches[1][0] == [f"p{i}" for i in order[6:8] for _ in range(2)]
    assert trainer.prompts_consumed == 36
    # Every group tied: one warning at step 5 (the first full window), naming the settings.
    tied = [r.getMessage() for r in caplog.records if "scored all alike" in r.getMessage()]
    assert len(tied) == 1 and "step 5" in tied[0] and "dynamic_sampling_max_rounds" in tied[0]


def test_without_dynamic_sampling_one_round_per_step(tmp_path):
    trainer = _trainer(tmp_path)
    history = trainer.train()
    order = data_order(0, 6, 12, seed=5)
    assert [p for p, _ in trainer.engine.batches] == [
        [f"p{i}" for i in order[2 * s:2 * s + 2] for _ in range(2)] for s in range(3)]
    assert trainer.prompts_consumed == 6
    assert not any(k.startswith("dynamic_sampling/") for k in history[0])


def test_truncation_warning_names_max_completion_length(tmp_path, caplog):
    trainer = _trainer(tmp_path, max_steps=12)
    trainer.sampler.sample = _truncating(trainer.sampler.sample)
    with caplog.at_level(logging.WARNING, logger="grpo"):
        trainer.train()
    cut = [r.getMessage() for r in caplog.records if "max_completion_length=16" in r.getMessage()]
    assert [m.split(":")[0] for m in cut] == ["grpo step 5", "grpo step 10"]  # not every step
    assert "100% of the completions" in cut[0]


def _truncating(sample):
    def wrapped(*args, **kwargs):
        rollouts = sample(*args, **kwargs)
        rollouts.truncated[:] = True
        return rollouts
    return wrapped


def test_rollouts_from_groups_repeats_each_prompt_for_its_group():
    got = Rollouts.from_groups([[7], [8, 9]], ["q", "r"], [[1, 2, 3], [4], [5], [6, 6]],
                               [[-.1, -.2, -.3], [-.4], [-.5], [-.6, -.6]],
                               [True, False, False, True], ["abc", "d", "e", "ff"], 2, pad_id=0)
    want = Rollouts.from_lists([[7], [7], [8, 9], [8, 9]], [[1, 2, 3], [4], [5], [6, 6]],
                               [[-.1, -.2, -.3], [-.4], [-.5], [-.6, -.6]],
                               [True, False, False, True], ["abc", "d", "e", "ff"],
                               ["q", "q", "r", "r"], 2, pad_id=0)
    assert got.prompt_ids.tolist() == [[0, 7], [0, 7], [8, 9], [8, 9]]
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask",
                 "sampler_logprobs", "truncated"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert got.prompts == ["q", "q", "r", "r"] and got.texts == want.texts and got.group_size == 2


def test_rollouts_cat_repads_prompts_left_and_completions_right():
    a = Rollouts.from_lists([[7], [7]], [[1, 2, 3], [4]], [[-.1, -.2, -.3], [-.4]], [True, False],
                            ["abc", "d"], ["q", "q"], 2, pad_id=0)
    b = Rollouts.from_lists([[8, 9], [8, 9]], [[5], [6, 6]], [[-.5], [-.6, -.6]], [False, True],
                            ["e", "ff"], ["r", "r"], 2, pad_id=0)
    both = Rollouts.cat([a, b], pad_id=99)
    assert both.prompt_ids.tolist() == [[99, 7], [99, 7], [8, 9], [8, 9]]
    assert both.prompt_mask.tolist() == [[0, 1], [0, 1], [1, 1], [1, 1]]
    assert both.completion_ids.tolist() == [[1, 2, 3], [4, 0, 0], [5, 0, 99], [6, 6, 99]]
    assert both.completion_mask.tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0], [1, 1, 0]]
    assert both.sampler_logprobs[3].tolist() == pytest.approx([-.6, -.6, 0.0])
    assert both.truncated.tolist() == [True, False, False, True]
    assert both.texts == ["abc", "d", "e", "ff"] and both.prompts == ["q", "q", "r", "r"]


def test_join_outputs_recomputes_stats_over_all_rows():
    def half(completions):
        return [None if c == "n" else len(c) / 2 for c in completions]

    rewards = RewardSet([half])
    joined = join_outputs([rewards(["ab", "n"]), rewards(["abcd", "abcdef"])])
    assert joined.total.tolist() == [1.0, 0.0, 2.0, 3.0]  # None counts 0 in the total
    # Over the applicable values 1, 2, 3: mean 2, population std sqrt(2/3) = 0.8165.
    assert joined.metrics["rewards/half/mean"] == 2.0
    assert joined.metrics["rewards/half/std"] == pytest.approx((2 / 3) ** 0.5)
    assert joined.metrics["rewards/total/mean"] == 1.5
    assert joined.metrics["rewards/half/errors"] == 0.0


def test_overlong_penalty_at_the_buffer_edges():
    # L_max = 100, buffer 20: 0 up to 80 tokens, then (80 - n) / 20, -1 at 100.
    penalty = OverlongPenalty(max_length=100, buffer=20)
    lengths = [0, 79, 80, 81, 90, 99, 100]
    assert penalty(["x"] * 7, lengths) == [0.0, 0.0, 0.0, -0.05, -0.5, -0.95, -1.0]
    assert RewardSet([penalty]).check_columns(["completion_length"]) is None
    with pytest.raises(ValueError, match="overlong buffer must be in"):
        OverlongPenalty(max_length=10, buffer=11)
    with pytest.raises(ValueError, match="overlong_buffer must be in"):
        GRPOConfig(rewards=["overlong"], max_completion_length=8, overlong_buffer=9)


def test_config_builds_the_overlong_reward_from_the_lengths():
    from grpo.from_config import reward_set

    built = reward_set(GRPOConfig(rewards=["format", "overlong"], max_completion_length=64))
    out = built(["no", "no"], completion_length=[48, 64])  # buffer 64 // 4 = 16
    assert out.per_function["overlong_reward"].tolist() == [0.0, -1.0]


@pytest.mark.parametrize("answer, nums, want", [
    ("3 + 5", [3, 5], 1.0),  # exactly the numbers, whatever the value
    ("5 - 3 = 4", [3, 5], 1.0),  # the right side is not read
    ("1 + 3 = 4", [3, 5], 0.5),  # one of two
    ("3 + 5 + 3", [3, 5], 2 / 3),  # an extra number: over the larger count
    ("3", [3, 5, 7], 1 / 3),
    ("(3 + 5", [3, 5], 0.0),  # not well-formed
    ("3 5", [3, 5], 0.0),
    ("3 ** 5", [3, 5], 0.0),
])
def test_countdown_numbers_reward(answer, nums, want):
    message = f"<think> t </think>\n<answer>{answer}</answer>"
    assert countdown_numbers_reward([message], [nums]) == [pytest.approx(want)]
