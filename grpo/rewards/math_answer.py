r"""Math accuracy: the whole final answer, read as mathematics, equals the reference.

Handing the message to math-verify's `parse` (as the seeds do) lets its regexes pick a
number-shaped span out of the text: `2**5` scored as 2 and `(9)**3` as 3. Here the answer is read
whole or not at all; math-verify is kept for its LaTeX grammar (latex2sympy2_extended) and its
`verify` (surds, decimals, sets, intervals, equations). What is read, and what counts as equal:

* The answer is the message's single `<answer>…</answer>` (two answers give 0.0), or the whole
  message when it has no answer tags; when that holds a `\boxed{}`, the last one's content.
* Dropped around the value: math delimiters (`$…$`, `\(…\)`, `\[…\]`), a final full stop, a leading
  currency sign (`$5`) and one trailing unit: `%`, `\%`, `^\circ`, `°`, `\text{…}` of words, or one
  to three bare words of two or more letters after a space. So `2 cm` and `2\text{ cm}^2` equal 2,
  and `50%` equals 50 (how GSM8K and MATH write percentages) but not 0.5: reading it as both would
  let one answer match two references. `2 m` is 2·m (one letter is a variable), `2cm` is 2·c·m,
  and words that change the value (`2 million`, `3 squared`, `pi`) are not units.
* An equation equals the reference when every side does, bar a lone name on the left: `x = 2`
  equals 2 and `2 + 3 = 5` equals 5, `2**5 = 2` does not equal 2. A reference that is an equation
  (`y = 2x + 1`) is compared whole by math-verify.
* Plain text reads the way people and models write it: `**` and `^` are powers, right-associative
  (`3**2**2` is 81), `2*x`, `1/2`, `sqrt(2)`, `pi`, `×`, `÷`. Digits apart (`1 000`, `2 3`) give 0.0.
* The grammar ends at end-of-input, so a parse consumes the whole text or fails (0.0): nothing is
  skipped. LaTeX commands outside `_COMMANDS` give 0.0.
* Values that are rational numbers are compared exactly. The rest goes to math-verify's `verify`
  (decimals agree to 6 places, `\sqrt{2}/2` = `1/\sqrt{2}`, `\{1, 2\}` = `{2, 1}`, intervals), but
  an answer with a variable the reference lacks is not equal.

Cost is bounded without signals (math-verify's `signal.alarm` works only in the main thread, where
it stays a 1 s backstop): before parsing, at most `MAX_ANSWER_CHARS` characters, `MAX_DEPTH`
nested brackets and `MAX_DIGITS` digits per number; after parsing (latex2sympy builds the tree
unevaluated) and before any evaluation, 0.0 when an exact value could exceed `MAX_BITS` bits (power
towers, `10^{10^{10}}`, `10000!`) or the tree holds an integral, sum, product, limit or derivative.
Per-answer CPU time on adversarial answers: benchmarks/math_reward_cost.py.
"""

from __future__ import annotations

import functools
import math
import re
import threading

from grpo.rewards.tags import ANSWER_CLOSE, ANSWER_OPEN, _check_completions, extract_answer

MAX_ANSWER_CHARS = 300
MAX_DEPTH = 10
MAX_DIGITS = 40
MAX_BITS = 1 << 15
SYMBOL_BITS = 256  # a variable weighs as much as a 256-bit number: powers of polynomials stay small

_COMMANDS = frozenset("""
    frac sqrt cdot times div pm mp pi infty circ text le leq ge geq lt gt ne neq cup cap setminus
    emptyset varnothing sin cos tan sec csc cot arcsin arccos arctan sinh cosh tanh ln log exp
    alpha beta delta epsilon varepsilon zeta eta theta vartheta kappa lambda mu nu xi rho sigma tau
    phi varphi chi psi omega Delta Theta Lambda Xi Pi Sigma Phi Psi Omega begin end quad qquad
""".split())  # what latex2sympy evaluates while parsing (\binom, \det, \gcd, \Gamma …) is left out
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_NOT_UNITS = frozenset("and or pi sqrt inf infty infinity hundred thousand million billion "
                       "trillion dozen squared cubed".split())
_UNIT = re.compile(r"(?:\\%|%|°|\^\s*\{?\s*\\circ\s*\}?"
                   r"|\\(?:text|mathrm|mbox)\s*\{(?P<text>[A-Za-z .]*)\}"
                   r"|(?<=\s)(?P<words>[A-Za-z]{2,}(?:\s+[A-Za-z]{2,}){0,2}))"
                   r"(?:\s*\^\s*\{?[23]\}?|[²³])?\s*$")
_CURRENCY = re.compile(r"^(?:\\\$|\$|€|£)\s*(?=[-\d.])")
_LONE_NAME = re.compile(r"\s*(?:[A-Za-z]\w*|\\[A-Za-z]+)(?:_\{?\w+\}?)?(?:\([A-Za-z]\))?\s*")
_PLAIN = {"×": "\\times ", "÷": "\\div ", "·": "\\cdot ", "−": "-", "π": "\\pi ", "**": "^"}
_PLAIN_WORDS = re.compile(r"(?<![\\A-Za-z])(sqrt|pi)(?![A-Za-z])")
_ATOM = re.compile(r"\d*\.?\d+|\\[A-Za-z]+|.")


def graded_text(message: str) -> str | None:
    """The text that is graded: the single `<answer>` (or the whole message when it has no answer
    tags), narrowed to its last `\\boxed{}`; None when the message offers no single answer."""
    if ANSWER_OPEN in message or ANSWER_CLOSE in message:
        message = extract_answer(message)
    return None if message is None else _unbox(message)


def _unbox(text: str) -> str | None:
    start = text.rfind("\\boxed")
    if start < 0:
        return text
    brace = start + len("\\boxed")
    while brace < len(text) and text[brace] == " ":
        brace += 1
    end = _closing(text, brace)
    return text[brace + 1:end] if end > 0 else None


def _closing(text: str, i: int) -> int:
    """The index of the bracket closing the one at `text[i]`, or -1."""
    if i >= len(text) or text[i] not in "({[":
        return -1
    opener, closer, depth = text[i], ")}]"["({[".index(text[i])], 0
    for j in range(i, len(text)):
        depth += (text[j] == opener) - (text[j] == closer)
        if depth == 0:
            return j
    return -1


def _group_end(text: str, i: int) -> int:
    """The index after the bracket closing the one at `text[i]`; ValueError when there is none."""
    end = _closing(text, i)
    if end < 0:
        raise ValueError(f"no closing bracket for {text[i:i + 1]!r} at {i}")
    return end + 1


def _undress(text: str) -> str:
    """The value without delimiters, final full stop, currency sign or trailing unit."""
    text = text.strip()
    for opener, closer in _DELIMITERS:
        if len(text) > len(opener + closer) and text.startswith(opener) and text.endswith(closer):
            text = text[len(opener):-len(closer)].strip()
            break
    text = _CURRENCY.sub("", text.removesuffix(".").rstrip())
    unit = _UNIT.search(text)
    words = unit and (unit["text"] or unit["words"] or "").lower().split()
    if unit and unit.start() > 0 and not _NOT_UNITS.intersection(words or ()):
        text = text[:unit.start()].rstrip()
    return text


def _too_costly_to_parse(text: str) -> bool:
    depth = 0
    for char in text:
        depth += (char in "({[") - (char in ")}]")
        if depth > MAX_DEPTH:
            return True
    return (any(len(digits) > MAX_DIGITS for digits in re.findall(r"\d+", text))
            or any(name not in _COMMANDS for name in re.findall(r"\\([A-Za-z]+)", text))
            or re.search(r"\d\s+\.?\d", text) is not None)


def _latexify(text: str) -> str:
    """Plain text as the LaTeX that says the same (`3**2**2` → `3^{2^{2}}`, `2^-1` → `2^{-1}`,
    `sqrt(2)` → `\\sqrt{2}`); LaTeX passes through. Raises ValueError when it can't be."""
    for plain, latex in _PLAIN.items():
        text = text.replace(plain, latex)
    return _brace(_PLAIN_WORDS.sub(r"\\\1", text))


def _brace(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] == "^":
            operand, i = _exponent(text, i + 1)
            out.append("^{" + operand + "}")
        elif text.startswith("\\sqrt(", i):
            end = _group_end(text, i + 5)
            out.append("\\sqrt{" + _brace(text[i + 6:end - 1]) + "}")
            i = end
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _exponent(text: str, i: int) -> tuple[str, int]:
    """The operand of the `^` before `text[i]` (signs, an atom, any further `^`), and its end."""
    start = i
    while i < len(text) and text[i] in " +-":
        i += 1
    sign = text[start:i].replace(" ", "")
    if i == len(text):
        raise ValueError("nothing after ^")
    if text[i] in "({[":
        end = _group_end(text, i)
        atom, i = (text[i + 1:end - 1] if text[i] == "{" else text[i:end]), end
    else:
        match = _ATOM.match(text, i)
        atom, i = match[0], match.end()
        while atom.startswith("\\") and text.startswith("{", i):  # \frac{1}{2}
            end = _group_end(text, i)
            atom, i = atom + text[i:end], end
    operand = sign + _brace(atom)
    after = len(text) - len(text[i:].lstrip(" "))
    if text.startswith("^", after):  # right-associative: a^b^c = a^(b^c)
        power, i = _exponent(text, after + 1)
        operand += "^{" + power + "}"
    return operand, i


@functools.lru_cache(maxsize=4096)  # a group's completions often repeat an answer
def _read(text: str):
    """`text` as an unevaluated sympy expression; None when it does not read whole as math or
    could be costly to evaluate."""
    from latex2sympy2_extended.latex2sympy2 import NormalizationConfig, latex2sympy, normalize_latex
    from math_verify.grader import should_treat_as_complex

    if len(text) > MAX_ANSWER_CHARS:
        return None
    text = normalize_latex(_undress(text), NormalizationConfig(basic_latex=True, boxed="none"))
    if not text.strip() or _too_costly_to_parse(text):
        return None
    try:
        text = _latexify(text)
        expr = latex2sympy(text, is_real=not should_treat_as_complex(text),
                           normalization_config=None)
    except Exception:  # the grammar's error listener raises plain Exception on a syntax error
        return None
    return expr if _bits(expr) <= MAX_BITS else None


def _bits(expr) -> float:
    """An upper bound on the bits of the exact value of `expr` (a variable counts `SYMBOL_BITS`);
    inf when no cheap bound exists."""
    import sympy

    if isinstance(expr, (sympy.Integral, sympy.Sum, sympy.Product, sympy.Limit, sympy.Derivative)):
        return math.inf
    if isinstance(expr, sympy.Rational):
        return max(abs(expr.p).bit_length(), expr.q.bit_length())
    if isinstance(expr, sympy.Float):
        return 64 + abs(int(expr)).bit_length()
    if isinstance(expr, sympy.Symbol):
        return SYMBOL_BITS
    if isinstance(expr, sympy.Pow) and not expr.exp.free_symbols:
        exponent = _bits(expr.exp)  # |exponent| < 2**exponent
        return _bits(expr.base) * 2.0 ** exponent if exponent < 64 else math.inf
    if isinstance(expr, sympy.factorial):
        n = _bits(expr.args[0])  # n! <= n**n
        return n * 2.0 ** n if n < 64 else math.inf
    parts = list(expr) if isinstance(expr, sympy.MatrixBase) else getattr(expr, "args", ())
    return 1 + sum(_bits(part) for part in parts)


@functools.lru_cache(maxsize=1024)
def _read_reference(reference: str):
    expr = _read(_unbox(reference) or reference)
    if expr is None:
        raise ValueError(f"reference {reference!r} does not read as math (or is too large): see "
                         "grpo.rewards.math_answer for what is read")
    return expr


def is_math_equal(prediction: str, reference: str) -> bool:
    """True when the whole of `prediction` reads as math equal to `reference` (module docstring).

    Raises ValueError only for a reference that is not a non-empty string that reads as math."""
    if not isinstance(reference, str) or not reference.strip():
        raise ValueError(f"answer must hold non-empty reference strings, got {reference!r}")
    gold = _read_reference(reference)
    if len(prediction) > MAX_ANSWER_CHARS:
        return False
    sides = [prediction] if "=" in reference else _undress(prediction).split("=")
    if len(sides) > 1 and _LONE_NAME.fullmatch(sides[0]):
        sides = sides[1:]  # `x = 2`: the value is the right side
    return all(_equal(gold, _read(side)) for side in sides)


def _equal(gold, pred) -> bool:
    import sympy
    from math_verify import verify

    if pred is None:
        return False
    gold_value, pred_value = _value(gold), _value(pred)
    if isinstance(gold_value, sympy.Rational) and isinstance(pred_value, sympy.Rational):
        return gold_value == pred_value
    if _names(pred) - _names(gold):
        return False
    timeout = 1 if threading.current_thread() is threading.main_thread() else None
    return bool(verify(gold_value, pred_value, timeout_seconds=timeout))


def _value(expr):
    """`expr` evaluated (cheap: `_read` bounded its size), when it is a plain expression."""
    import sympy

    try:
        return expr.doit() if isinstance(expr, sympy.Expr) else expr
    except Exception:  # sympy raises various errors on odd inputs (0**-1 in a matrix, …)
        return expr


def _names(expr) -> set[str]:
    return {symbol.name for symbol in getattr(expr, "free_symbols", ())}


def math_reward(completions: list[str], answer: list) -> list[float]:
    """1.0 when the message's final answer, read whole, equals `answer[i]` as mathematics, else 0.0
    (what is read and what is equal: the module docstring). Raises only on a bad `answer` row."""
    _check_completions(completions)
    if len(answer) != len(completions):
        raise ValueError(f"answer has {len(answer)} rows but completions has {len(completions)}: "
                         "pass one row per completion")
    references = [str(r) if isinstance(r, (int, float)) and not isinstance(r, bool) else r
                  for r in answer]
    for reference in references:  # every reference is checked, whatever the completions say
        is_math_equal("", reference)
    return [1.0 if (given := graded_text(text)) is not None and is_math_equal(given, reference)
            else 0.0 for text, reference in zip(completions, references)]
