"""Multiple-choice accuracy: the single `<answer>` must be the right option's letter.

As in Mini-R1's multiple-choice variant, the answer is compared as a letter; how we differ:
the answer is the message's one `<answer>…</answer>` (two answers or none give 0.0, so listing
every letter earns nothing), surrounding whitespace, a trailing "." or ")" and a wrapping
"(B)" are ignored, and the comparison is case-insensitive ("b" is "B"). Anything longer than the
letter ("B. Paris", "B and C") gives 0.0: the template asks for the letter only.
"""

from __future__ import annotations

from grpo.rewards.tags import _check_completions, extract_answer


def normalize_choice(text: str) -> str:
    """"(b)." -> "B"; "B. Paris" stays "B. PARIS" (and so never matches a letter)."""
    text = text.strip().rstrip(".").strip()
    if len(text) == 3 and text[0] == "(" and text[2] == ")":
        text = text[1]
    elif len(text) == 2 and text[1] == ")":
        text = text[0]
    return text.upper()


def choice_reward(completions: list[str], answer: list[str]) -> list[float]:
    """1.0 when the message's single `<answer>` is the letter `answer[i]`, else 0.0."""
    _check_completions(completions, answer=answer)
    rewards = []
    for text, right in zip(completions, answer):
        if not isinstance(right, str) or len(right.strip()) != 1 or not right.strip().isalpha():
            raise ValueError(f"answer must hold single option letters such as 'B', got {right!r}")
        given = extract_answer(text)
        rewards.append(1.0 if given is not None and normalize_choice(given) == right.strip().upper()
                       else 0.0)
    return rewards
