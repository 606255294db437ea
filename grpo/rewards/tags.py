r"""The R1 tag format: `<think>…</think>\n<answer>…</answer>`, checked and parsed without regex.

Mini-R1 checks the format with one regex and pulls the answer out with another
(`<answer>(.*?)</answer>`, the first one on a single line). Here both rules come from one parser
of the message's tags, so the format reward and the answer rewards can never disagree about what
"the answer" is. How we differ from Mini-R1:

* The message is the whole assistant message, prefill included (the trainer prepends the prompt's
  prefill, e.g. "Let me solve this step by step.\n<think>"), so no synthetic "<think>" is added
  here. A lead-in before the first `<think>` is allowed; it may hold no think or answer tags.
* Exactly one `<answer>` and one `</answer>`: Mini-R1's lazy `[\s\S]*?` accepts
  `<answer>1</answer><answer>2</answer>` as one answer "1</answer><answer>2"; we give 0.0.
* Trailing whitespace after `</answer>` is allowed (samplers often leave a newline); Mini-R1's
  `$` allows one trailing newline only. Anything else after it gives 0.0.
* Every check is a linear scan (`str.count` / `str.find`), so a megabyte completion costs
  about a millisecond and no input can make it backtrack.
"""

from __future__ import annotations

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"


def extract_answer(message: str) -> str | None:
    """The text inside the message's single `<answer>…</answer>`, or None.

    None when there is no answer, more than one `<answer>` or `</answer>` tag, or the closing tag
    comes first: a completion that offers several answers gets no credit for any of them.
    """
    if not isinstance(message, str):
        raise ValueError(f"message must be a str, got {type(message).__name__}")
    if message.count(ANSWER_OPEN) != 1 or message.count(ANSWER_CLOSE) != 1:
        return None
    start = message.find(ANSWER_OPEN) + len(ANSWER_OPEN)
    end = message.find(ANSWER_CLOSE)
    if end < start:
        return None
    return message[start:end]


def is_r1_format(message: str) -> bool:
    """True for `[lead-in]<think>…</think>\n<answer>…</answer>[whitespace]`, one of each tag."""
    if not isinstance(message, str):
        raise ValueError(f"message must be a str, got {type(message).__name__}")
    for tag in (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE):
        if message.count(tag) != 1:  # one of each: no nesting, no second block
            return False
    think_open = message.find(THINK_OPEN)
    think_close = message.find(THINK_CLOSE)
    separator = THINK_CLOSE + "\n" + ANSWER_OPEN  # Mini-R1's rule: exactly one newline between
    if think_close < think_open or not message.startswith(separator, think_close):
        return False
    answer_close = message.find(ANSWER_CLOSE)
    if answer_close < think_close:
        return False
    return message[answer_close + len(ANSWER_CLOSE):].strip() == ""


def format_reward(completions: list[str]) -> list[float]:
    """1.0 when the assistant message has the R1 format (see `is_r1_format`), else 0.0."""
    _check_completions(completions)
    return [1.0 if is_r1_format(text) else 0.0 for text in completions]


def partial_format_reward(completions: list[str]) -> list[float]:
    """0.2 for each of the five rules of the R1 format a message keeps; 1.0 exactly when
    `format_reward` gives 1.0.

    A dense version of `format_reward` for models that start far from the format (a 135M model
    almost never writes it whole, so every group scores 0 and GRPO has nothing to compare). Each
    rule is checked on its own, so a completion earns credit for what it got right:

    1. one `<answer>`;
    2. one `</answer>`, after the `<answer>`;
    3. one `<think>` then one `</think>`;
    4. `</think>\n<answer>`: the think block runs straight into the answer;
    5. nothing but whitespace after the last `</answer>`.

    The idea is open-r1's tag-count reward (credit per tag); the rules are ours, chosen so that all
    five together are exactly `is_r1_format`.
    """
    _check_completions(completions)
    return [_format_score(text) for text in completions]


def _format_score(message: str) -> float:
    def once(tag: str) -> bool:
        return message.count(tag) == 1

    answer_open = once(ANSWER_OPEN)
    answer_close = once(ANSWER_CLOSE) and message.find(ANSWER_OPEN) < message.find(ANSWER_CLOSE)
    think = (once(THINK_OPEN) and once(THINK_CLOSE)
             and message.find(THINK_OPEN) < message.find(THINK_CLOSE))
    joined = THINK_CLOSE + "\n" + ANSWER_OPEN in message
    tail = message.rstrip().endswith(ANSWER_CLOSE)
    return (answer_open + answer_close + think + joined + tail) / 5


def _check_completions(completions, **columns) -> None:
    """Completions are a list of str, and each column has one row per completion."""
    if isinstance(completions, str) or not isinstance(completions, (list, tuple)):
        raise ValueError(f"completions must be a list of str, got {type(completions).__name__}")
    for i, text in enumerate(completions):
        if not isinstance(text, str):
            raise ValueError(f"completions[{i}] must be a str, got {type(text).__name__}")
    for name, column in columns.items():
        if len(column) != len(completions):
            raise ValueError(f"{name} has {len(column)} rows but completions has "
                             f"{len(completions)}: pass one row per completion")
