"""Countdown puzzles, generated here, seeded and offline.

Shaped like Jiayi-Pan/Countdown-Tasks-3to4, the data set of the Mini-R1 recipe (3 or 4 numbers
in 1..99, a target in 10..100), each with one stored solution that a solver found with +, *,
non-negative - and exact / (every intermediate value a non-negative integer), using every number
once. Knobs (`num_numbers`, `number_range`, `target_range`) make easy puzzles for small models.
Puzzles are distinct ((sorted nums, target) never repeats), so `countdown_splits` has no puzzle
in both train and test.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import lru_cache

from datasets import Dataset, DatasetDict


@lru_cache(maxsize=4096)  # ~14 KB each for 4 numbers: bounded memory
def solve_countdown(nums: tuple[int, ...]) -> dict[int, str]:
    """Every value reachable using each number exactly once, with one expression for each.

    Dynamic programming over subsets (bit masks): a subset's values combine two complementary
    sub-subsets' values with +, *, - (only when the result is >= 0) and / (only when exact), so
    every intermediate value is a non-negative integer, as in the game. Composite operands are
    parenthesised, so each expression reads unambiguously and evaluates exactly to its value.
    """
    k = len(nums)
    table: dict[int, dict[int, str]] = {1 << i: {n: str(n)} for i, n in enumerate(nums)}
    for mask in range(1, 1 << k):
        if mask in table:
            continue
        low = mask & -mask  # the split always puts the lowest number left: each pair once
        out: dict[int, str] = {}
        sub = (mask - 1) & mask
        while sub:
            if sub & low:
                for va, ea in table[sub].items():
                    for vb, eb in table[mask ^ sub].items():
                        _combine(out, va, _wrap(ea), vb, _wrap(eb))
            sub = (sub - 1) & mask
        table[mask] = out
    return table[(1 << k) - 1]


def _wrap(expression: str) -> str:
    return expression if expression.isdigit() else f"({expression})"


def _combine(out: dict[int, str], va: int, ea: str, vb: int, eb: str) -> None:
    out.setdefault(va + vb, f"{ea} + {eb}")
    out.setdefault(va * vb, f"{ea} * {eb}")
    if va >= vb:
        out.setdefault(va - vb, f"{ea} - {eb}")
    if vb >= va:
        out.setdefault(vb - va, f"{eb} - {ea}")
    if vb and va % vb == 0:
        out.setdefault(va // vb, f"{ea} / {eb}")
    if va and vb % va == 0:
        out.setdefault(vb // va, f"{eb} / {ea}")


def _check_range(name: str, value, low: int) -> tuple[int, int]:
    if (not isinstance(value, Sequence) or len(value) != 2
            or not all(isinstance(v, int) for v in value) or value[0] > value[1] or value[0] < low):
        raise ValueError(f"{name} must be (low, high) integers with {low} <= low <= high, "
                         f"got {value!r}")
    return value[0], value[1]


def countdown_dataset(
    n: int,
    seed: int = 0,
    num_numbers: int | Sequence[int] = (3, 4),
    number_range: tuple[int, int] = (1, 99),
    target_range: tuple[int, int] = (10, 100),
) -> Dataset:
    """`n` distinct solvable puzzles: columns nums (list[int]), target (int), solution (str).

    Each puzzle draws how many numbers (uniformly from `num_numbers`), the numbers (uniformly in
    `number_range`, inclusive, repeats allowed) and then a target uniformly among the values in
    `target_range` (inclusive) that the solver reaches; numbers with no such value are redrawn.
    Same arguments, same puzzles. Easy settings for a 135M model on CPU, for example:
    `num_numbers=3, number_range=(1, 20), target_range=(10, 40)`.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    counts = [num_numbers] if isinstance(num_numbers, int) else list(num_numbers)
    if not counts or not all(isinstance(c, int) and 2 <= c <= 6 for c in counts):
        raise ValueError(f"num_numbers must be an int or ints in 2..6, got {num_numbers!r}")
    lo, hi = _check_range("number_range", number_range, 1)
    tlo, thi = _check_range("target_range", target_range, 0)
    rng = random.Random(seed)
    rows: dict[str, list] = {"nums": [], "target": [], "solution": []}
    seen: set[tuple] = set()
    attempts, max_attempts = 0, 100 * n + 1000
    while len(seen) < n:
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(f"found only {len(seen)} of n={n} distinct puzzles in {max_attempts} "
                             f"draws with num_numbers={num_numbers}, number_range={number_range}, "
                             f"target_range={target_range}: widen the ranges or ask for fewer")
        nums = [rng.randint(lo, hi) for _ in range(rng.choice(counts))]
        reachable = solve_countdown(tuple(sorted(nums)))
        targets = sorted(v for v in reachable if tlo <= v <= thi)
        if not targets:
            continue
        target = rng.choice(targets)
        key = (tuple(sorted(nums)), target)
        if key in seen:
            continue
        seen.add(key)
        rows["nums"].append(nums)
        rows["target"].append(target)
        rows["solution"].append(reachable[target])
    return Dataset.from_dict(rows)


def countdown_splits(num_train: int, num_test: int, seed: int = 0, **difficulty) -> DatasetDict:
    """"train" and "test" Countdown sets with no puzzle in both (all puzzles are distinct).

    The test set is drawn first, so it stays the same when only `num_train` changes.
    """
    for name, value in (("num_train", num_train), ("num_test", num_test)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    puzzles = countdown_dataset(num_test + num_train, seed=seed, **difficulty)
    return DatasetDict(test=puzzles.select(range(num_test)),
                       train=puzzles.select(range(num_test, num_test + num_train)))
