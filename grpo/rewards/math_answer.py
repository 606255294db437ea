r"""Math accuracy: the whole final answer, read as mathematics, equals the reference.

The answer is read whole or not at all (math-verify's own `parse` picks a number-shaped span out
of the text, which gives `2**5` the credit of 2):

* The answer is the message's single `<answer>…</answer>` (two give 0.0), or the whole message
  when it has no answer tags; when that holds a `\boxed{}`, the last one's content.
* Dropped around the value: delimiters (`$…$`, `\(…\)`, `\[…\]`), a final full stop, a leading
  currency sign (`$5`) and one trailing unit: `%`, `\%`, `^\circ`, `°`, `\text{…}` of words, or
  one to three words of two or more letters after a space. So `2 cm` and `2\text{ cm}^2` equal 2,
  and `50%` equals 50 (how GSM8K and MATH write percentages) but not 0.5, so that one answer
  cannot match two references. One letter is a variable (`2 m` is 2·m; `2cm` is 2·c·m), and
  words that change the value (`2 million`, `3 squared`, `pi`) are not units.
* An equation equals the reference when every side does, bar a lone name on the left: `x = 2`
  equals 2, `2 + 3 = 5` equals 5, `2**5 = 2` does not equal 2. A reference equation
  (`y = 2x + 1`) is compared whole.
* `Reader` (grpo/rewards/math_reader.py) reads arithmetic and algebra in plain text as people and
  models write it (`**` and `^` are powers, right-associative: `3**2**2` is 81; `2*x`, `1/2`,
  `sqrt(2)`, `pi`, `2(3)` is 6) and in LaTeX (`\frac`, `^{}`, `\cdot`; `2\frac{1}{2}` is the mixed
  number 5/2; `x_{1}` and `x_1` are one variable), and lists as latex2sympy reads them: `1, 2` and
  `\{1, 2\}` are sets, `(1, 2]` an interval, `(2, 1)` and `(1, 2, 3)` tuples. The rest (functions,
  relations, `\cup`, `|x|`, `n!`) is read by math-verify's LaTeX grammar, which must reach the
  end of the input. Text either parser would have to skip gives 0.0, as do digits apart
  (`1 000`, `2 3`) and LaTeX commands outside `_COMMANDS`.
* Numbers are exact, decimals included: rationals are equal only when equal (`0.5` equals `1/2`;
  `0.333` is not `1/3`, `1.414` is not `\sqrt{2}`). Other values go to math-verify's `verify`
  (`\sqrt{2}/2` equals `1/\sqrt{2}`, `{1, 2}` equals `\{2, 1\}`, intervals, `x^2+2x+1` equals
  `(x+1)^2`) unless they differ numerically or the answer has a variable the reference lacks.

Cost is bounded without signals (math-verify's `signal.alarm` works only in the main thread):
`MAX_ANSWER_CHARS`, `MAX_DEPTH` and `MAX_DIGITS` before parsing, `MAX_LATEX_CHARS` for lists
(math-verify compares sets slowly) and for what the grammar reads; 0.0 for a power or factorial
whose exact value could exceed math_reader's `MAX_BITS` bits (towers, `10^{10^{10}}`, `10000!`),
and for integrals, sums, products, limits and derivatives. The grammar (ANTLR, in SLL mode) costs
about a millisecond a token on shapes it has met, but fills prediction tables the first time it
meets one, at 5-150 ms a table entry; grpo/rewards/math_grammar.py fills them once per process
from a fixed corpus (about 2 s) and charges each answer the closure steps of the entries it needs
beyond that corpus: past `MAX_GRAMMAR_STEPS` the answer scores 0.0. The charge depends on the
answer alone, not on the machine's speed nor on what the process met before, so scores are
reproducible; a right answer in a shape far from the corpus can score 0.0, every time. References
are never bounded. CPU per answer: benchmarks/math_reward_cost.py.
"""

from __future__ import annotations

import functools
import math
import re
import threading

from grpo.rewards.math_grammar import bound
from grpo.rewards.math_reader import MAX_BITS, Outside, Reader, bits
from grpo.rewards.tags import ANSWER_CLOSE, ANSWER_OPEN, _check_completions, extract_answer

MAX_ANSWER_CHARS = 300
MAX_LATEX_CHARS = 100
MAX_GRAMMAR_STEPS = 12_000  # closure steps beyond math_grammar.WARM_UP: ~10 us each here
MAX_DEPTH = 6
MAX_DIGITS = 40

_COMMANDS = frozenset("""
    frac sqrt cdot times div pm mp pi infty circ text le leq ge geq lt gt ne neq cup cap setminus
    emptyset varnothing sin cos tan sec csc cot arcsin arccos arctan sinh cosh tanh ln log exp
    alpha beta delta epsilon varepsilon zeta eta theta vartheta kappa lambda mu nu xi rho sigma tau
    phi varphi chi psi omega Delta Theta Lambda Xi Pi Sigma Phi Psi Omega begin end quad qquad
""".split())  # not what latex2sympy evaluates while parsing (\binom, \det, \gcd, \Gamma)
_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
_NOT_UNITS = frozenset("and or pi sqrt inf infty infinity hundred thousand million billion "
                       "trillion dozen squared cubed".split())
_UNIT = re.compile(r"(?:\\%|%|°|\^\s*\{?\s*\\circ\s*\}?"
                   r"|\\(?:text|mathrm|mbox)\s*\{(?P<text>[A-Za-z .]*)\}"
                   r"|(?<=\s)(?P<words>[A-Za-z]{2,}(?:\s+[A-Za-z]{2,}){0,2}))"
                   r"(?:\s*\^\s*\{?[23]\}?|[²³])?\s*$")
_CURRENCY = re.compile(r"^(?:\\\$|\$|€|£)\s*(?=[-\d.])")
_LONE_NAME = re.compile(r"\s*(?:[A-Za-z]\w*|\\[A-Za-z]+)(?:_\{?\w+\}?)?(?:\([A-Za-z]\))?\s*")
_SHORTHANDS = ((re.compile(r"\\frac\s*(\w)\s*(\w)"), r"\\frac{\1}{\2}"),  # \frac12, \sqrt2
               (re.compile(r"\\sqrt\s*(\w)"), r"\\sqrt{\1}"))
_JUXTAPOSED = re.compile(r"(?<=[\d)])\s*(?=[({])|(?<=\))\s*(?=\d|\\frac)")


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
    rest, depth = text[start + len("\\boxed"):].lstrip(), 0
    for end, char in enumerate(rest if rest.startswith("{") else ""):
        depth += (char == "{") - (char == "}")
        if depth == 0:
            return rest[1:end]
    return None


def _undress(text: str) -> str:
    """The value without delimiters, final full stop, currency sign or trailing unit."""
    text = text.strip()
    for opener, closer in _DELIMITERS:
        if len(text) > len(opener + closer) and text.startswith(opener) and text.endswith(closer):
            text = text[len(opener):-len(closer)].strip()
            break
    text = _CURRENCY.sub("", text.removesuffix(".").rstrip())
    unit = _UNIT.search(text)
    words = (unit["text"] or unit["words"] or "").lower().split() if unit else []
    if unit and unit.start() > 0 and not _NOT_UNITS.intersection(words):
        text = text[:unit.start()].rstrip()
    return text


def _too_costly_to_parse(text: str) -> bool:
    depth = 0
    for char in text:
        depth += (char in "({[") - (char in ")}]")
        if depth > MAX_DEPTH:
            return True
    return ("," in text and len(text) > MAX_LATEX_CHARS  # a long list: verify's set algebra
            or any(len(digits) > MAX_DIGITS for digits in re.findall(r"\d+", text))
            or any(name not in _COMMANDS for name in re.findall(r"\\([A-Za-z]+)", text))
            or re.search(r"\d\s+\.?\d|\.\d*\.", text) is not None)  # 1 000, 2 3, 1.2.3


@functools.lru_cache(maxsize=4096)  # a group's completions often repeat an answer
def _read(text: str, steps: float):
    """`text` as an exact sympy value; None when it does not read whole as math or could be
    costly (it reads model output), the LaTeX grammar's cost included: `steps` (math_grammar)."""
    import sympy
    from latex2sympy2_extended.latex2sympy2 import (NormalizationConfig, comma_number_regex,
                                                    normalize_latex)
    from math_verify.grader import should_treat_as_complex

    if len(text) > MAX_ANSWER_CHARS:
        return None
    text = normalize_latex(_undress(text), NormalizationConfig(basic_latex=True, boxed="none"))
    for pattern, replacement in _SHORTHANDS:
        text = pattern.sub(replacement, text)
    if comma_number_regex.match(text):  # 1,000 is a number, as latex2sympy reads it
        text = text.replace(",", "")
    if not text.strip() or _too_costly_to_parse(text):
        return None
    try:
        return Reader(text).read()
    except Outside:
        pass  # functions, relations, |x|, n!: the LaTeX grammar reads those
    except Exception:  # a power too large, a division by zero, recursion
        return None
    if len(text) > MAX_LATEX_CHARS:
        return None
    text = _JUXTAPOSED.sub(r"\\cdot ", text.replace("**", "^"))  # latex2sympy reads 2(3) as 2+3
    converter = _latex2sympy()(is_real=not should_treat_as_complex(text))  # outside: fail loudly
    converter.steps = steps
    try:
        expr = converter.parse(text)
        if not isinstance(expr, (sympy.Basic, sympy.MatrixBase)) or bits(expr) > MAX_BITS:
            return None
        expr = expr.xreplace({f: sympy.Rational(str(f)) for f in expr.atoms(sympy.Float)})
        return expr.doit() if isinstance(expr, sympy.Expr) else expr  # cheap: its size is bounded
    except Exception:  # OverBudget; the grammar's error listener raises Exception on bad syntax
        return None


@functools.cache
def _latex2sympy():
    """latex2sympy's converter, its parser bounded by math_grammar (SLL mode, a step budget)."""
    from latex2sympy2_extended.latex2sympy2 import _Latex2Sympy

    class BoundedLatex2Sympy(_Latex2Sympy):
        steps = math.inf

        def create_parser(self, latex_str):
            return bound(super().create_parser(latex_str), self.steps)

    return BoundedLatex2Sympy


@functools.lru_cache(maxsize=1024)
def _read_reference(reference: str):
    expr = _read(_unbox(reference) or reference, math.inf)
    if expr is None:
        raise ValueError(f"reference {reference!r} does not read as math, or is too large (see "
                         "grpo.rewards.math_answer for what is read)")
    return expr


def is_math_equal(prediction: str, reference: str) -> bool:
    """True when the whole of `prediction` reads as math equal to `reference` (module docstring).
    Raises ValueError only when the reference is not a non-empty string that reads as math."""
    if not isinstance(reference, str) or not reference.strip():
        raise ValueError(f"answer must hold non-empty reference strings, got {reference!r}")
    gold = _read_reference(reference)
    if len(prediction) > MAX_ANSWER_CHARS:
        return False
    sides = [prediction] if "=" in reference else _undress(prediction).split("=")
    if len(sides) > 1 and _LONE_NAME.fullmatch(sides[0]):
        sides = sides[1:]  # `x = 2`: the value is the right side
    return all(_equal(gold, _read(side, MAX_GRAMMAR_STEPS)) for side in sides)


def _equal(gold, pred) -> bool:
    import sympy
    from math_verify import verify

    if pred is None:
        return False
    if isinstance(gold, sympy.Rational) and isinstance(pred, sympy.Rational):
        return gold == pred
    names = [{symbol.name for symbol in getattr(e, "free_symbols", ())} for e in (gold, pred)]
    if names[1] - names[0] or _differ(gold, pred):  # a variable the reference lacks; a number off
        return False
    timeout = 1 if threading.current_thread() is threading.main_thread() else None
    return bool(verify(gold, pred, timeout_seconds=timeout))


def _differ(gold, pred) -> bool:
    """True when `gold - pred` is clearly nonzero at a rational point: math-verify's `simplify`
    then only sees answers that may be right."""
    import sympy

    if not (isinstance(gold, sympy.Expr) and isinstance(pred, sympy.Expr)):
        return False
    symbols = sorted(gold.free_symbols | pred.free_symbols, key=str)
    point = {s: sympy.Rational(7 + k, 13 + 2 * k) for k, s in enumerate(symbols)}
    try:
        return bool(abs((gold - pred).evalf(30, subs=point)) > 1e-20)
    except Exception:  # TypeError when the difference is not a number (nan, zoo)
        return False


def math_reward(completions: list[str], answer: list) -> list[float]:
    """1.0 when the message's final answer, read whole, equals `answer[i]` as mathematics, else 0.0
    (what is read and what is equal: the module docstring). Raises only on a bad `answer` row."""
    _check_completions(completions, answer=answer)
    references = [str(r) if isinstance(r, (int, float)) and not isinstance(r, bool) else r
                  for r in answer]
    for reference in references:  # every reference is checked, whatever the completions say
        is_math_equal("", reference)
    return [1.0 if (given := graded_text(text)) is not None and is_math_equal(given, reference)
            else 0.0 for text, reference in zip(completions, references)]
