import math

import pytest
import torch
from torch.testing import assert_close

from grpo.advantages import group_advantages, zero_variance_groups

F64 = torch.float64


def test_group_scale_by_hand():
    # Group 0: [1, 0, 0, 1]: mean 0.5, unbiased std = sqrt(4 * 0.25 / 3) = sqrt(1/3) = 0.57735
    # Group 1: [2, 2, 2, 2]: all equal -> A = 0 / (0 + eps) = 0, never NaN
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0], dtype=F64)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    expected = torch.tensor([a, -a, -a, a, 0.0, 0.0, 0.0, 0.0], dtype=F64)
    assert_close(group_advantages(rewards, 4), expected)


def test_batch_and_none_scales_by_hand():
    # Groups [0, 2] and [1, 1] (G = 2): centred [-1, 1, 0, 0].
    # Whole-batch unbiased std of [0, 2, 1, 1]: mean 1, sum of squares 2, / 3 -> sqrt(2/3).
    rewards = torch.tensor([0.0, 2.0, 1.0, 1.0], dtype=F64)
    centred = torch.tensor([-1.0, 1.0, 0.0, 0.0], dtype=F64)
    assert_close(group_advantages(rewards, 2, scale="none"), centred)
    assert_close(group_advantages(rewards, 2, scale="batch"),
                 centred / (math.sqrt(2 / 3) + 1e-4))
    # Group scale: group 0 std = sqrt(2) -> +-1/(sqrt 2 + eps); group 1 is constant -> 0.
    assert_close(group_advantages(rewards, 2, eps=0.0)[:2],
                 torch.tensor([-1 / math.sqrt(2), 1 / math.sqrt(2)], dtype=F64))


def test_zero_variance_groups():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5])
    assert zero_variance_groups(rewards, 2).tolist() == [True, False, True]


def test_integer_rewards_and_dtype():
    assert group_advantages(torch.tensor([1, 0]), 2).dtype == torch.float32
    assert group_advantages(torch.tensor([1.0, 0.0], dtype=F64), 2).dtype == F64


@pytest.mark.parametrize("rewards,group_size,kwargs,match", [
    (torch.zeros(6), 4, {}, "group_size=4 does not divide"),
    (torch.zeros(6), 1, {}, "group_size"),
    (torch.tensor([0.0, float("nan")]), 2, {}, "rewards must be finite.*\\[1\\]"),
    (torch.tensor([float("inf"), 0.0]), 2, {}, "rewards must be finite"),
    (torch.zeros(2, 2), 2, {}, "rewards must be \\[N\\]"),
    (torch.zeros(4), 2, {"scale": "rank"}, "scale"),
])
def test_bad_input(rewards, group_size, kwargs, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, group_size, **kwargs)
