"""Module-level reward functions for the process-pool tests (spawned workers import them)."""

import time


def seed_eval_reward(completions):
    # Mini-R1's way, on purpose: `eval` of arithmetic. "9**9**9**9" never finishes, and it is
    # C-level big-integer work that no signal can interrupt: only killing the worker stops it.
    return [float(eval(text, {"__builtins__": None}, {})) for text in completions]  # noqa: S307


def slow_reward(completions, delay):
    time.sleep(float(delay[0]))
    return [1.0] * len(completions)


def failing_on_marker(completions):
    if any("FAIL" in text for text in completions):
        raise KeyError("marker")
    return [1.0] * len(completions)
