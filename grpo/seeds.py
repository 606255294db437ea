"""Seeds derived from a run's seed, so that no two runs share a stream.

`seed + step` is the obvious per-step seed and a bad one: run s at step t + 1 then draws with the
same seed as run s + 1 at step t, so a sweep over seeds 1..10 re-uses a handful of noise
realisations at shifted steps. Per row, Gumbel-max noise does not depend on the prompt, so the
draws of those runs are coupled (measured: same-row openings agree 2.5x as often as chance;
benchmarks/RESULTS.md) and the runs of a "10-seed" comparison are not independent. Each derived
seed here is a splitmix64 chain over (seed, key, key, ...): distinct keys give unrelated seeds.
"""

from __future__ import annotations

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
