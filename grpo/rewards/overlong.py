"""DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): a length penalty in a buffer before
the sampler's token limit.

With L_max = max_completion_length and a buffer of L_cache tokens, a completion of |y| tokens
scores 0 up to L_max - L_cache, then (L_max - L_cache - |y|) / L_cache, falling linearly to -1
at L_max (the sampler never returns more than L_max tokens, so DAPO's "-1 beyond L_max" is the
value at L_max). It sits beside `mask_truncated_completions` (DAPO's overlong filter, which takes
cut completions out of the loss): the filter removes a noisy signal, this adds a graded one.
"""

from __future__ import annotations

from grpo.rewards.tags import _check_completions


class OverlongPenalty:
    """`f(completions, completion_length) -> [0 .. -1]`; the trainer passes each completion's
    token count as the `completion_length` column."""

    __name__ = "overlong_reward"

    def __init__(self, max_length: int, buffer: int):
        if not 0 < buffer <= max_length:
            raise ValueError(f"overlong buffer must be in [1, max_length={max_length}], "
                             f"got {buffer}")
        self.max_length, self.buffer = int(max_length), int(buffer)

    def __call__(self, completions: list[str], completion_length: list) -> list[float]:
        _check_completions(completions, completion_length=completion_length)
        start = self.max_length - self.buffer
        return [max(-1.0, min(0.0, (start - int(n)) / self.buffer)) for n in completion_length]

    def __repr__(self) -> str:
        return f"OverlongPenalty(max_length={self.max_length}, buffer={self.buffer})"
