"""The Countdown equation reward, with its own exact, bounded arithmetic evaluator.

Mini-R1's `equation_reward_func` runs `eval` on answers that pass a character whitelist. The
whitelist admits `**`, so a single completion like `9**9**9**9` makes `eval` compute a number with
billions of digits and stalls training for good; its float comparison also calls 0.1 + 0.2 == 0.3.
Here no answer is ever executed:

* The answer is tokenised into ASCII integers, `+ - * /` and parentheses. Any other character
  (`**` is two `*` tokens and a syntax error, `^`, `.`, `x`, non-ASCII digits such as "٣") gives
  0.0. At most `MAX_ANSWER_CHARS` characters, `MAX_DEPTH` nested parentheses and
  `MAX_LITERAL_DIGITS` digits per number, so the work per completion is bounded (microseconds).
* The numbers written must be exactly the multiset `nums` before anything is evaluated, so the
  values stay tiny. Numbers with a leading zero ("07") are not the number 7 as written: 0.0.
* No unary minus or plus: `-3 + 5` gives 0.0. Each number of the puzzle is positive and used as
  given; subtraction is written as a binary operator. (Mini-R1's `eval` accepted `-(3 - 5)`.)
* Arithmetic is exact over the rationals (`fractions.Fraction`), so `6 / (4 - 2)` is exactly 3
  and intermediate fractions are fine (`(1 / 3) * 3 * 5 == 5`). Division by zero gives 0.0.
* An optional trailing `= <integer>` is accepted when that integer is the target (models often
  write `55 + 36 - 7 - 19 = 65`; Mini-R1's prompt example has no `=`, its reward gave that 0.0).
  The left side must still use the numbers and equal the target, so `= target` alone earns
  nothing. `countdown_strict_reward` (config name `countdown_strict`) is Mini-R1's rule: any `=`
  gives 0.0.
* The answer is the single `<answer>…</answer>` of the message (`tags.extract_answer`); two
  answers or none give 0.0.

`countdown_numbers_reward` is shaping, not accuracy: how much of a well-formed answer is made of
the puzzle's numbers, whatever its value. A small model first writes equations over numbers of its
own (`1 + 3 = 4`), which the strict reward scores 0 in every group, so GRPO has nothing to
compare; credit for using the given numbers is the step before solving (TinyZero gives 0.1 for a
well-formed wrong answer). Reported accuracy is always `countdown_reward`'s.
"""

from __future__ import annotations

from fractions import Fraction
from numbers import Integral

from grpo.rewards.tags import _check_completions, extract_answer

MAX_ANSWER_CHARS = 256
MAX_DEPTH = 16
MAX_LITERAL_DIGITS = 12
_DIGITS = frozenset("0123456789")
_OPERATORS = frozenset("+-*/()")


class ExpressionError(ValueError):
    """The text is not an expression this evaluator accepts (or divides by zero)."""


def tokenize(expression: str) -> list[int | str]:
    """ASCII integers and the characters `+ - * / ( )`; spaces are skipped."""
    if len(expression) > MAX_ANSWER_CHARS:
        raise ExpressionError(f"longer than {MAX_ANSWER_CHARS} characters")
    tokens: list[int | str] = []
    i, n = 0, len(expression)
    while i < n:
        char = expression[i]
        if char in _DIGITS:
            j = i
            while j < n and expression[j] in _DIGITS:
                j += 1
            digits = expression[i:j]
            if len(digits) > MAX_LITERAL_DIGITS or (len(digits) > 1 and digits[0] == "0"):
                raise ExpressionError(f"number {digits[:20]!r} is too long or has a leading zero")
            tokens.append(int(digits))
            i = j
        elif char in _OPERATORS:
            tokens.append(char)
            i += 1
        elif char in " \t\n":
            i += 1
        else:
            raise ExpressionError(f"character {char!r} is not allowed")
    return tokens


class _Parser:
    """Recursive descent, evaluating as it parses (exact Fractions).

    expr := term (('+'|'-') term)*;  term := atom (('*'|'/') atom)*;  atom := INT | '(' expr ')'
    """

    def __init__(self, tokens: list[int | str]):
        self.tokens, self.pos, self.depth = tokens, 0, 0

    def parse(self) -> Fraction:
        value = self.expr()
        if self.pos != len(self.tokens):
            raise ExpressionError(f"unexpected {self.tokens[self.pos]!r} after a full expression")
        return value

    def peek(self) -> int | str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.tokens[self.pos]
            self.pos += 1
            right = self.term()
            value = value + right if op == "+" else value - right
        return value

    def term(self) -> Fraction:
        value = self.atom()
        while self.peek() in ("*", "/"):
            op = self.tokens[self.pos]
            self.pos += 1
            right = self.atom()
            if op == "*":
                value = value * right
            elif right == 0:
                raise ExpressionError("division by zero")
            else:
                value = value / right
        return value

    def atom(self) -> Fraction:
        token = self.peek()
        self.pos += 1
        if isinstance(token, int):
            return Fraction(token)
        if token == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ExpressionError(f"more than {MAX_DEPTH} nested parentheses")
            value = self.expr()
            if self.peek() != ")":
                raise ExpressionError("unbalanced parentheses")
            self.pos += 1
            self.depth -= 1
            return value
        raise ExpressionError(f"expected a number or '(', got {token!r}")


def evaluate_expression(expression: str) -> Fraction:
    """The exact value of an arithmetic expression; raises ExpressionError when not accepted."""
    return _Parser(tokenize(expression)).parse()


def score_countdown(message: str, nums, target, allow_equals: bool = True) -> float:
    """1.0 when the message's answer uses each of `nums` once and equals `target`, else 0.0;
    `allow_equals`: a trailing `= target` is accepted."""
    nums, target = _as_ints(nums, "nums"), _as_int(target, "target")
    answer = extract_answer(message)
    if answer is None or len(answer) > MAX_ANSWER_CHARS:
        return 0.0
    expression, equals, claimed = answer.partition("=")
    try:
        if equals and (not allow_equals or tokenize(claimed) != [target]):
            return 0.0
        tokens = tokenize(expression)
        literals = [t for t in tokens if isinstance(t, int)]
        if sorted(literals) != sorted(nums):
            return 0.0
        value = _Parser(tokens).parse()
    except ExpressionError:
        return 0.0
    return 1.0 if value == target else 0.0


def score_numbers(message: str, nums) -> float:
    """Multiset overlap of the answer's numbers with `nums`, over the larger of the two counts:
    1.0 when the answer uses exactly the puzzle's numbers, 0.0 unless the answer (the part before
    an `=`) is a well-formed expression."""
    nums = _as_ints(nums, "nums")
    answer = extract_answer(message)
    if answer is None or len(answer) > MAX_ANSWER_CHARS:
        return 0.0
    try:
        tokens = tokenize(answer.partition("=")[0])
        _Parser(tokens).parse()
    except ExpressionError:
        return 0.0
    literals = [t for t in tokens if isinstance(t, int)]
    remaining, shared = list(nums), 0
    for literal in literals:
        if literal in remaining:
            remaining.remove(literal)
            shared += 1
    return shared / max(len(literals), len(nums))


def countdown_numbers_reward(completions: list[str], nums: list) -> list[float]:
    """Shaping: how much of each answer is built from its puzzle's numbers (`score_numbers`)."""
    _check_completions(completions, nums=nums)
    return [score_numbers(text, row_nums) for text, row_nums in zip(completions, nums)]


def countdown_reward(completions: list[str], nums: list, target: list) -> list[float]:
    """Exact Countdown accuracy per completion; `nums[i]` and `target[i]` belong to completion i."""
    _check_completions(completions, nums=nums, target=target)
    return [score_countdown(text, row_nums, row_target)
            for text, row_nums, row_target in zip(completions, nums, target)]


def countdown_strict_reward(completions: list[str], nums: list, target: list) -> list[float]:
    """`countdown_reward` without the trailing `= target`: the answer is the expression alone
    (Mini-R1's rule)."""
    _check_completions(completions, nums=nums, target=target)
    return [score_countdown(text, row_nums, row_target, allow_equals=False)
            for text, row_nums, row_target in zip(completions, nums, target)]


def _as_int(value, name: str) -> int:
    if isinstance(value, Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    raise ValueError(f"{name} must hold integers, got {value!r}")


def _as_ints(values, name: str) -> list[int]:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{name} must be a list of integers per row, got {values!r}")
    return [_as_int(v, name) for v in values]
