"""Seeds derived from a run's seed, so that no two runs share a stream.

`seed + step` is the obvious per-step seed and a bad one: run s at step t + 1 then draws with the
same seed as run s + 1 at step t, so a sweep over seeds 1..10 re-uses a handful of noise
realisations at shifted steps. Per row, Gumbel-max noise does not depend on the prompt, so the
draws of those runs are coupled (measured: same-row openings agree 2.5x as often as chance;
benchmarks/RESULTS.md) and the runs of a "10-seed" comparison are not independent. Each derived
seed here is a splitmix64 chain over (seed, key, key, ...): distinct keys give unrelated seeds.

The order in which a run reads its prompts is seeded the same way (`data_order`): epoch after
epoch, a permutation of the dataset drawn from derive_seed(seed, epoch).
"""

from __future__ import annotations

import torch

_MASK = (1 << 64) - 1


def splitmix64(x: int) -> int:
    """The splitmix64 finaliser of x + the golden gamma: a 64-bit hash, bijective on 64 bits."""
    x = (int(x) + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for (seed, *keys), e.g. (run seed, step, rank); well mixed in every bit
    (torch's CPU generator keeps only the low 32)."""
    x = splitmix64(seed)
    for key in keys:
        x = splitmix64(x ^ (int(key) & _MASK))
    return x >> 1


def prompt_indices(step: int, num_prompts: int, prompts_per_step: int, seed: int,
                   rank: int = 0, world_size: int = 1) -> list[int]:
    """Dataset rows that `rank` trains on at `step` when every step reads one round: the r-th
    slice of the step's prompts in the data order. The step's prompts over all ranks are the same
    for any world size: 1 and 2 processes see the same puzzles."""
    first = step * prompts_per_step * world_size + rank * prompts_per_step
    return data_order(first, prompts_per_step, num_prompts, seed)


def data_order(first: int, count: int, num_prompts: int, seed: int) -> list[int]:
    """Dataset rows at positions [first, first + count) of the data order: epoch after epoch, a
    permutation of the dataset seeded with derive_seed(seed, epoch)."""
    orders = {}  # epoch -> its permutation, drawn once per call
    indices = []
    for position in range(first, first + count):
        epoch, offset = divmod(position, num_prompts)
        if epoch not in orders:
            generator = torch.Generator().manual_seed(derive_seed(seed, epoch))
            orders[epoch] = torch.randperm(num_prompts, generator=generator)
        indices.append(int(orders[epoch][offset]))
    return indices
