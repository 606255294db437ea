r"""An exact reader of arithmetic and algebra as people and models write it, with bounded cost.

`Reader(text).read()` turns plain text (`**` and `^` are powers, right-associative; `2*x`, `1/2`,
`sqrt(2)`, `pi`, `2(3)` is 6) and LaTeX (`\frac`, `^{}`, `\cdot`, `\sqrt`, `x_{1}`; `2\frac{1}{2}`
is the mixed number 5/2) into exact sympy values, built as latex2sympy builds them, and lists
into sets, intervals and tuples. Anything else raises `Outside`; nothing is skipped. A power is
computed only when `bits` bounds its exact value by `MAX_BITS` bits, so towers and huge exponents
cost microseconds. grpo.rewards.math_answer grades answers with it.
"""

from __future__ import annotations

import math
import re

MAX_BITS = 1 << 15
SYMBOL_BITS = 256  # a variable weighs as much as a 256-bit number: powers of polynomials stay small
_TOKEN = re.compile(r"(?![eEiI])[A-Za-z]_(?:\{\s*[A-Za-z0-9]+\s*\}|[0-9]+(?![.0-9])|[A-Za-z])"
                    r"|[0-9]+\.?[0-9]*|\.[0-9]+|\*\*|\\[A-Za-z]+|\\[{}]|sqrt|pi(?![A-Za-z])|\S")
_SYNONYMS = {"**": "^", "\\cdot": "*", "\\times": "*", "×": "*", "·": "*", "\\div": "/",
             "÷": "/", "−": "-", "sqrt": "\\sqrt", "pi": "\\pi", "π": "\\pi"}
_READER_TOKENS = frozenset({*"+-*/^()[]{},", "\\frac", "\\sqrt", "\\pi", "\\infty", "\\{", "\\}"})
_CLOSERS = {"(": ")", "[": "]", "{": "}"}
_BRACKETS = {**_CLOSERS, "\\{": "\\}"}


class Outside(Exception):
    """The text uses more than `Reader` reads (a function, a relation, `|x|` …)."""


class Reader:
    """Recursive descent over numbers, variables, `+ - * / ^` (`**`), brackets, `\\frac`, `\\sqrt`,
    `\\pi`, `\\infty`, juxtaposition and lists, to exact sympy values as latex2sympy builds them.
    Raises Outside on anything else, ValueError on a division by zero or a power too large to
    compute (`_power`).

    items := element (',' element)*      element := collection | expr
    collection := ('(' | '[' | '{' | '\\{') items (')' | ']' | '}' | '\\}'), when it holds a comma
    expr := product (('+'|'-') product)*    product := signed (('*'|'/')? signed)*
    signed := ('+'|'-') signed | atom ('^' signed)?
    """

    def __init__(self, text: str):
        self.tokens, self.i = [_SYNONYMS.get(token, token) for token in _TOKEN.findall(text)], 0
        for token in self.tokens:
            if not (token in _READER_TOKENS or token[0] in "0123456789." or "_" in token[1:]
                    or (len(token) == 1 and token.isalpha() and token not in "iI")):
                raise Outside(token)

    def read(self):
        from latex2sympy2_extended.sets import FiniteSet  # keeps the written order, as verify needs

        items = self.items()
        if self.peek() is not None:
            raise Outside(self.peek())
        return items[0] if len(items) == 1 else FiniteSet(*items)

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or expected not in (None, token):
            raise Outside(f"expected {expected!r}, got {token!r}")
        self.i += 1
        return token

    def items(self) -> list:
        items = []
        while not items or (self.peek() == "," and self.take()):
            items.append(self.collection() if self.opens_list() else self.expr())
        return items

    def opens_list(self) -> bool:
        """Whether the next token opens a set, or a bracket holding a comma at its own level."""
        depth = 0
        for token in self.tokens[self.i:]:
            depth += (token in _BRACKETS) - (token in _BRACKETS.values())
            if depth == 0 or (depth == 1 and token in (",", "\\{")):  # \{: 1st token
                return depth == 1
        return False

    def collection(self):
        """As latex2sympy's `convert_interval`, `convert_ordered_tuple`, `convert_finite_set`."""
        import sympy
        from latex2sympy2_extended.sets import FiniteSet

        opener, items, closer = self.take(), self.items(), self.take()
        if opener in ("{", "\\{") and closer == _BRACKETS[opener]:
            return FiniteSet(*items)
        if opener not in ("(", "[") or closer not in (")", "]"):
            raise Outside(closer)
        if len(items) != 2 or not all(isinstance(item, sympy.Expr) for item in items):
            return sympy.Tuple(*items)
        (left, right), left_open, right_open = items, opener == "(", closer == ")"
        try:  # what would be an empty interval is a pair
            if (left_open and right_open and right <= left
                    or not left_open and not right_open and right < left):
                return sympy.Tuple(left, right)
        except TypeError:  # a comparison with a variable has no truth value
            pass
        return sympy.Interval(left, right, left_open, right_open)

    def expr(self):
        import sympy

        terms = [self.product()]
        while self.peek() in ("+", "-"):
            terms.append(self.product() if self.take() == "+" else -self.product())
        return sympy.Add(*terms)  # all at once: one term at a time is quadratic

    def product(self):
        import sympy

        factors = [self.signed()]
        while self.peek() not in (None, "+", "-", ",", *_BRACKETS.values()):
            operator = self.take() if self.peek() in ("*", "/") else "*"
            factors.append(self.signed() if operator == "*" else _divide(1, self.signed()))
        return sympy.Mul(*factors)

    def signed(self):
        if self.peek() in ("+", "-"):
            return self.signed() if self.take() == "+" else -self.signed()
        base = self.atom()
        if self.peek() != "^":
            return base
        self.take()
        return _power(base, self.signed())

    def atom(self):
        import sympy

        token = self.take()
        if token in _CLOSERS:
            value = self.expr()
            self.take(_CLOSERS[token])
            return value
        if token == "\\frac":
            return _divide(self.atom(), self.atom())
        if token == "\\sqrt" and self.peek() != "[":
            return _power(self.atom(), sympy.Rational(1, 2))
        if token[0] in "0123456789.":
            number = sympy.Rational(token)
            if self.peek() == "\\frac" and "." not in token:  # 2\frac{1}{2} is 5/2
                part = self.atom()
                return number + part if part.is_Rational and part > 0 else number * part
            return number
        if token in ("\\pi", "\\infty", "e"):
            return {"\\pi": sympy.pi, "\\infty": sympy.oo, "e": sympy.E}[token]
        if "_" in token[1:]:  # x_1 and x_{1} are x_1, x_{12} is x_{12}, as latex2sympy names them
            base, index = token.split("_")
            index = index.strip("{ }")
            return sympy.Symbol(f"{base}_{index if len(index) == 1 else '{' + index + '}'}".lower(),
                                real=True)
        if token.isalpha():
            return sympy.Symbol(token.lower(), real=True)  # as latex2sympy names variables
        raise Outside(token)


def _divide(numerator, denominator):
    if denominator == 0:
        raise ValueError("division by zero")
    return numerator / denominator


def _power(base, exponent):
    """`base ** exponent`; ValueError when its exact value could exceed `MAX_BITS` bits."""
    if not exponent.free_symbols and (bits(base) * _scale(exponent) > MAX_BITS
                                      or (base == 0 and exponent.is_negative)):
        raise ValueError("power too large to compute (or 0 to a negative power)")
    return base ** exponent


def _scale(exponent) -> float:
    """A bound on bits(base ** exponent) / bits(base) for a number `exponent`: |p| or q when it
    is p/q; inf when it could exceed 2**64."""
    size = bits(exponent)
    if size > 64:
        return math.inf
    exponent = exponent.doit()  # cheap: every number in it has at most 64 bits
    return max(abs(exponent.p), exponent.q) if exponent.is_Rational else 2.0 ** size


def bits(expr) -> float:
    """An upper bound on the bits of the exact value of `expr` (a variable counts `SYMBOL_BITS`);
    inf when no cheap bound exists."""
    import sympy

    if isinstance(expr, (sympy.Integral, sympy.Sum, sympy.Product, sympy.Limit, sympy.Derivative)):
        return math.inf
    if isinstance(expr, sympy.Rational):
        return max(abs(expr.p).bit_length(), expr.q.bit_length(), 1)  # 1: 0 * inf is nan
    if isinstance(expr, sympy.Float):
        return 64 + abs(int(expr)).bit_length()
    if isinstance(expr, sympy.Symbol):
        return SYMBOL_BITS
    if isinstance(expr, (sympy.Pow, sympy.exp)) and not expr.as_base_exp()[1].free_symbols:
        base, exponent = expr.as_base_exp()  # exp(x) is e**x
        return bits(base) * _scale(exponent)
    if isinstance(expr, sympy.factorial):
        n = bits(expr.args[0])  # n! <= n**n
        return n * 2.0 ** n if n < 64 else math.inf
    parts = list(expr) if isinstance(expr, sympy.MatrixBase) else getattr(expr, "args", ())
    return 1 + sum(bits(part) for part in parts)
