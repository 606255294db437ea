"""Math accuracy: the final answer equals the reference as mathematics, decided by math-verify.

Equivalence of `0.5`, `1/2`, `\\frac{1}{2}` and `\\boxed{\\frac12}` is a library's job, not ours:
math-verify (Hugging Face, on sympy) parses LaTeX and plain expressions and compares them
symbolically. What we add around it:

* The answer is the message's single `<answer>…</answer>` when the message has answer tags (two
  answers give 0.0); a message with no answer tags is handed whole to math-verify, which takes
  its last `\\boxed{}` or final expression (so R1-style and boxed-style models both work).
* Text without math delimiters (`1/2`, `\\frac{1}{2}`) is wrapped in `$…$` before parsing, since
  math-verify only reads bare LaTeX inside delimiters (bare `\\frac{\\sqrt 2}{2}` parses as 2).
* Answers longer than `MAX_MATH_CHARS` give 0.0 without parsing. math-verify bounds each parse
  and comparison with `signal.alarm` (`timeout_seconds`, whole seconds), which only works in the
  main thread; in another thread it runs without a timeout, so run `math_reward` in the main
  thread or in `RewardSet(..., num_workers=k, timeout=...)`'s process pool.
"""

from __future__ import annotations

import threading

from grpo.rewards.tags import ANSWER_CLOSE, ANSWER_OPEN, _check_completions, extract_answer

MAX_MATH_CHARS = 2000
_DELIMITERS = ("$", "\\(", "\\[", "\\boxed")


def _parse(text: str, timeout_seconds: int | None):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    config = [LatexExtractionConfig(), ExprExtractionConfig()]
    if not any(d in text for d in _DELIMITERS):
        parsed = parse(f"${text.strip()}$", extraction_config=config,
                       parsing_timeout=timeout_seconds)
        if parsed:
            return parsed
    return parse(text, extraction_config=config, parsing_timeout=timeout_seconds)


def is_math_equal(prediction: str, reference: str, timeout_seconds: int = 3) -> bool:
    """True when math-verify finds `prediction` and `reference` equal (False on a timeout)."""
    from math_verify import verify

    if not isinstance(reference, str) or not reference.strip():
        raise ValueError(f"answer must hold non-empty reference strings, got {reference!r}")
    if len(prediction) > MAX_MATH_CHARS:
        return False
    timeout = timeout_seconds if threading.current_thread() is threading.main_thread() else None
    gold, pred = _parse(reference, timeout), _parse(prediction, timeout)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout))


def math_reward(completions: list[str], answer: list[str]) -> list[float]:
    """1.0 when the message's final answer equals `answer[i]` as mathematics, else 0.0."""
    _check_completions(completions)
    if len(answer) != len(completions):
        raise ValueError(f"answer has {len(answer)} rows but completions has {len(completions)}: "
                         "pass one row per completion")
    rewards = []
    for text, reference in zip(completions, answer):
        reference = str(reference) if isinstance(reference, (int, float)) else reference
        if ANSWER_OPEN in text or ANSWER_CLOSE in text:
            given = extract_answer(text)
        else:
            given = text[-MAX_MATH_CHARS:]  # the final answer is at the end
        rewards.append(1.0 if given is not None and is_math_equal(given, reference) else 0.0)
    return rewards
