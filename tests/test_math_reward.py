r"""math_reward reads the whole answer or nothing (issue 16): differential test, hand cases, costs.

The differential test renders random arithmetic with exact `Fraction` values in three styles —
Python (`**`, `*`, `/`), caret (`^`) and LaTeX (`\frac{}{}`, `^{}`, `\cdot`) — and scores each
against its value (must be 1.0) and against wrong values (must be 0.0). The wrong values include
the expression's first and last number and, for a power, its base: the answers math-verify's
extraction used to credit (`2**5` against 2 scored 1.0). Timing is in
benchmarks/math_reward_cost.py; here adversarial answers must only score right.
"""

from __future__ import annotations

import math
import random
import threading
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grpo.rewards import math_answer, math_reward
from grpo.rewards import math_grammar, math_reader
from grpo.rewards.math_answer import is_math_equal
from grpo.rewards.math_reader import MAX_BITS, Reader

ATOM, POWER, UNARY, PRODUCT, SUM = 5, 4, 3, 2, 1  # precedence of what a rendering is


def answer(text: str) -> str:
    return f"Let me solve this step by step.\n<think> ... </think>\n<answer>{text}</answer>"


@pytest.fixture
def unbounded_grammar(monkeypatch):
    """What is equal, cost apart: without MAX_GRAMMAR_STEPS, which gives 0.0 to some right answers
    in shapes far from math_grammar.WARM_UP."""
    monkeypatch.setattr(math_answer, "MAX_GRAMMAR_STEPS", math.inf)
    math_answer._read.cache_clear()
    yield
    math_answer._read.cache_clear()


# --- the differential test ---------------------------------------------------------------------

def random_tree(rng: random.Random, depth: int) -> tuple:
    """("num", value) | ("neg", x) | (op, left, right) for + - * / | ("pow", base, exponent)."""
    if depth == 0 or rng.random() < 0.25:
        if rng.random() < 0.15:
            return ("num", Fraction(rng.randint(1, 40), rng.choice([2, 4, 5, 10])))  # a decimal
        return ("num", Fraction(rng.randint(0, 12)))
    kind = rng.choice(["+", "-", "*", "/", "pow", "pow", "neg"])
    if kind == "neg":
        return ("neg", random_tree(rng, depth - 1))
    if kind == "pow":
        exponent = rng.choice([("num", Fraction(rng.randint(0, 3))),
                               ("neg", ("num", Fraction(rng.randint(1, 2)))),
                               ("pow", ("num", Fraction(rng.randint(1, 2))), ("num", Fraction(2)))])
        return ("pow", random_tree(rng, depth - 1), exponent)
    return (kind, random_tree(rng, depth - 1), random_tree(rng, depth - 1))


def value(tree: tuple) -> Fraction:
    """The exact value; ZeroDivisionError for 1/0 and 0**-1."""
    kind = tree[0]
    if kind == "num":
        return tree[1]
    if kind == "neg":
        return -value(tree[1])
    if kind == "pow":
        return value(tree[1]) ** int(value(tree[2]))
    left, right = value(tree[1]), value(tree[2])
    if kind == "/":
        return left / right
    return {"+": left + right, "-": left - right, "*": left * right}[kind]


def render(tree: tuple, style: str, rng: random.Random) -> tuple[str, int]:
    """`tree` as text in "python", "caret" or "latex" style, and its precedence."""
    def wrap(child: tuple, least: int) -> str:
        text, precedence = render(child, style, rng)
        if precedence >= least and rng.random() > 0.08:  # sometimes redundant: ((6 - 2))**2
            return text
        if style == "latex" and rng.random() < 0.5:
            return f"\\left({text}\\right)"
        return f"({text})"

    space = rng.choice(["", " "])
    kind = tree[0]
    if kind == "num":
        number = tree[1]
        return (str(number.numerator) if number.denominator == 1 else str(float(number))), ATOM
    if kind == "neg":
        return "-" + wrap(tree[1], POWER), UNARY
    if kind == "pow":
        base = wrap(tree[1], ATOM)
        if style == "latex":
            return f"{base}^{{{render(tree[2], style, rng)[0]}}}", POWER
        return f"{base}{'**' if style == 'python' else '^'}{wrap(tree[2], UNARY)}", POWER
    if kind in "+-":
        right = wrap(tree[2], PRODUCT if kind == "-" else SUM)
        return f"{wrap(tree[1], SUM)}{space}{kind}{space}{right}", SUM
    if kind == "/" and style == "latex":
        top, bottom = render(tree[1], style, rng)[0], render(tree[2], style, rng)[0]
        return f"\\frac{{{top}}}{{{bottom}}}", ATOM
    if kind == "*" and style != "python" and rng.random() < 0.15:  # juxtaposition: 2(3 + 4)
        return f"{wrap(tree[1], ATOM)}({render(tree[2], style, rng)[0]})", PRODUCT
    operator = rng.choice(["\\cdot", "\\times"]) if style == "latex" and kind == "*" else kind
    return f"{wrap(tree[1], PRODUCT)}{space}{operator}{space}{wrap(tree[2], UNARY)}", PRODUCT


def reference(number: Fraction, rng: random.Random) -> str:
    """`number` as a dataset writes it: 7, -3/4, \\frac{3}{4}, 0.75."""
    p, q = number.numerator, number.denominator
    if q == 1:
        return str(p)
    sign = "-" if p < 0 else ""
    forms = [f"{p}/{q}", f"{sign}\\frac{{{abs(p)}}}{{{q}}}"]
    places = next((k for k in range(20) if 10 ** k % q == 0), None)
    if places is not None:  # a short terminating decimal, written out exactly
        digits = str(abs(p) * 10 ** places // q).rjust(places + 1, "0")
        forms.append(f"{sign}{digits[:-places]}.{digits[-places:]}")
    return rng.choice(forms)


def literals(tree: tuple) -> list[Fraction]:
    return [tree[1]] if tree[0] == "num" else [x for child in tree[1:] for x in literals(child)]


def wrong_values(tree: tuple, right: Fraction) -> set[Fraction]:
    """Near misses, the first and last number written, and a power's base."""
    wrong = {right + 1, right - 1, 2 * right, -right, right + Fraction(1, 7),
             literals(tree)[0], literals(tree)[-1]}
    if tree[0] == "pow":
        wrong.add(value(tree[1]))
    return wrong - {right}


def cases(seed: int, count: int) -> list[tuple]:
    """`count` random trees plus the N**k and N**a**b family, each with its exact value."""
    rng, trees = random.Random(seed), []
    while len(trees) < count:
        tree = random_tree(rng, rng.randint(1, 4))
        if rng.random() < 0.1:  # 2**5 against 2, 3**2**2 against 3, 7**0 against 7
            n = ("num", Fraction(rng.randint(2, 12)))
            tree = ("pow", n, rng.choice([("num", Fraction(rng.choice([0, 2, 3, 5]))),
                                          ("pow", ("num", Fraction(2)), ("num", Fraction(2)))]))
        try:
            number = value(tree)
        except ZeroDivisionError:
            continue
        if max(abs(number.numerator), number.denominator) < 10 ** 15:
            trees.append((tree, number))
    return trees


def differential(seed: int, count: int) -> None:
    rng = random.Random(seed + 1)
    for style in ("python", "caret", "latex"):
        completions, references, expected = [], [], []
        for tree, number in cases(seed, count):
            text = answer(render(tree, style, rng)[0])
            for ref, score in [(number, 1.0)] + [(w, 0.0) for w in wrong_values(tree, number)]:
                completions.append(text)
                references.append(reference(ref, rng))
                expected.append(score)
        rewards = math_reward(completions, answer=references)
        wrong = [(text.split("<answer>")[1], ref, want) for text, ref, want, got in
                 zip(completions, references, expected, rewards) if got != want]
        assert not wrong, f"{style}: {len(wrong)} of {len(rewards)} wrong, e.g. {wrong[:5]}"


def test_differential_three_styles():
    differential(seed=0, count=3000)


@pytest.mark.usefixtures("unbounded_grammar")
def test_reader_agrees_with_the_latex_grammar(monkeypatch):
    # the fast path against the naive one: LaTeX-style expressions read by math-verify's grammar
    # (which the reader spares them) must score the same
    def outside(self):
        raise math_reader.Outside("forced")

    rng, completions, references = random.Random(2), [], []
    for tree, number in cases(seed=2, count=150):
        text = render(tree, "latex", rng)[0]
        if len(text) <= math_answer.MAX_LATEX_CHARS:
            completions.append(answer(text))
            references.append(reference(number, rng))
    math_answer._read.cache_clear()
    monkeypatch.setattr(math_reader.Reader, "read", outside)
    try:
        rewards = math_reward(completions, answer=references)
    finally:
        math_answer._read.cache_clear()
    assert len(completions) > 100 and rewards == [1.0] * len(completions)


@pytest.mark.parametrize("text", [
    "x_{1}", "x_1", "X_{1}", "x_{12}", "x_12", "a_{n}", "x_{ab}", "x_{1}x_{2}", "2x_1 + x_{2}^{2}",
    "(1, 2)", "(2, 1)", "[1, 1]", "(2, 1]", "[1, 2)", "(x, y)", "(-\\infty, 2]", "(\\infty, 1)",
    "(1, 2, 3)", "[1, 2, 3]", "1, 2", "{1, 2}", "\\{1\\}", "\\{2, 1, 2\\}", "\\{\\{1, 2\\}\\}",
    "(1, (2, (3, (4))))", "\\{(1, 2), (3, 4)\\}", "\\{[1, 2), (x, y]\\}", "\\{1, 2\\}, 3",
    "( \\frac{\\sqrt{3}}{2}, \\frac{1}{2} )", "(x_{1}, x_{2})",
])
def test_reader_reads_subscripts_and_lists_as_the_latex_grammar(text):
    # the fast path against the naive one: latex2sympy in its default (LL) mode, which reads the
    # subscripts that SLL mode cannot, evaluated as _read evaluates it; the same variable names
    # and the same Interval, Tuple and FiniteSet
    from latex2sympy2_extended.latex2sympy2 import _Latex2Sympy

    assert Reader(text).read() == _Latex2Sympy(is_real=True).parse(text).doit()


def charged_steps(text: str) -> int:
    """The closure steps math_grammar charges for parsing `text` (budget: none)."""
    from latex2sympy2_extended.latex2sympy2 import _Latex2Sympy

    parser = math_grammar.bound(_Latex2Sympy(is_real=True).create_parser(text), math.inf)
    parser.math()
    return parser._interp.steps


def test_grammar_charge_depends_on_the_text_alone():
    # the warm-up's table entries are free; an entry filled later is charged to every parse that
    # uses it, so a new shape costs the same at its first parse, its second and after others
    assert [charged_steps(text) for text in math_grammar.WARM_UP] == [0] * len(math_grammar.WARM_UP)
    text = "\\cos(\\tan(|x|!))"
    first = charged_steps(text)
    for other in ["\\{\\tan(|y|!), 3\\}", "\\cos(\\tan(|z|!)) + 1", text]:
        charged_steps(other)
    assert first > 0 and charged_steps(text) == first


def test_grammar_budget_is_exact_and_every_time(monkeypatch):
    text = "\\cos(|\\frac{\\pi}{3}| \\cdot 1!)"  # cos(pi/3) = 1/2, a shape WARM_UP lacks
    cost = charged_steps(text)
    assert cost > 0
    for budget, expected in [(cost - 1, 0.0), (cost - 1, 0.0), (cost, 1.0), (cost - 1, 0.0)]:
        monkeypatch.setattr(math_answer, "MAX_GRAMMAR_STEPS", budget)
        math_answer._read.cache_clear()
        assert math_reward([answer(text)], answer=["1/2"]) == [expected]
    math_answer._read.cache_clear()


def _wrapped(inner):
    return st.one_of(*(st.builds(form.format, inner, inner) for form in [
        "\\sin({})", "\\log({}){}", "|{}|", "({})!", "\\frac{{{}}}{{{}}}", "{} + {}", "{}^{{{}}}",
        "{} \\cdot {}", "({}, {})", "\\{{{}, {}\\}}", "{} < {}", "{}_{{{}}}"]))


GRAMMAR_SHAPES = st.recursive(st.sampled_from(["x", "2", "\\pi", "x_{1}", "e"]), _wrapped,
                              max_leaves=10)


@settings(max_examples=25, deadline=None)
@given(st.lists(GRAMMAR_SHAPES, min_size=2, max_size=6))
def test_what_the_grammar_reads_does_not_depend_on_what_it_read_before(texts):
    # a budget that often bites: a text over it reads as None whatever the process parsed before
    reads = []
    for order in (texts, texts[::-1]):
        math_answer._read.cache_clear()
        reads.append({text: math_answer._read(text, 2_000) for text in order})
    math_answer._read.cache_clear()
    assert reads[0] == reads[1]


@pytest.mark.slow
def test_differential_three_styles_large():
    differential(seed=1, count=20_000)


# --- hand cases --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, reference, expected", [
    # the issue: N**anything no longer scores as N, and ** is read as a power
    ("2**5", "2", 0.0), ("2**2", "2", 0.0), ("3**2**2", "3", 0.0), ("7**0", "7", 0.0),
    ("10**3", "10", 0.0), ("2**5", "32", 1.0), ("3**2**2", "81", 1.0),  # 3**(2**2)
    ("7**0", "1", 1.0), ("10**3", "1000", 1.0), ("(9)**3", "729", 1.0), ("((6 - 2))**2", "16", 1.0),
    ("9^{9^{9^{9}}}", "9", 0.0), ("10^{10^{10}}", "10", 0.0),
    ("\\int_0^\\infty e^{-x^2} dx", "\\frac{\\sqrt{\\pi}}{2}", 0.0),  # integrals are not evaluated
    # plain text as written
    ("2^-1", "1/2", 1.0), ("2**-1", "0.5", 1.0), ("2^(1+2)", "8", 1.0), ("-2^2", "-4", 1.0),
    ("-2**2", "-4", 1.0), ("2(3)", "6", 1.0), ("(2)(3)", "6", 1.0), ("2*x", "2x", 1.0),
    ("sqrt(8)", "2\\sqrt{2}", 1.0), ("2 pi", "2\\pi", 1.0), ("2\\frac{1}{2}", "5/2", 1.0),
    ("\\frac12", "0.5", 1.0), ("1,000", "1000", 1.0), ("1 000", "1000", 0.0), ("2 3", "6", 0.0),
    ("1.2.3", "0.36", 0.0), ("3 × 4 ÷ 2", "6", 1.0),
    # the whole answer or nothing
    ("The answer is 12", "12", 0.0), ("12 or 13", "12", 0.0), ("12, 13", "12", 0.0),
    ("12 apples and 3 pears", "12", 0.0), ("2 +", "2", 0.0), ("12)", "12", 0.0),
    # x = 2 reads as its right side; every other side must equal the reference too
    ("x = 2", "2", 1.0), ("y=2", "2", 1.0), ("$x = 2$", "2", 1.0), ("x = 3", "2", 0.0),
    ("2 + 3 = 5", "5", 1.0), ("2**5 = 2", "2", 0.0), ("x = 2 = 3", "3", 0.0),
    ("y = 1 + 2x", "y = 2x + 1", 1.0), ("2x + 1", "y = 2x + 1", 1.0),
    # units: dropped when they are words; a single letter is a variable
    ("2 cm", "2", 1.0), ("2\\text{ cm}^2", "2", 1.0), ("3 square feet", "3", 1.0),
    ("2 m", "2", 0.0), ("2cm", "2", 0.0), ("2 million", "2", 0.0), ("3 squared", "3", 0.0),
    ("$5", "5", 1.0), ("\\$5.50", "5.5", 1.0), ("90^\\circ", "90", 1.0), ("12.", "12", 1.0),
    # percent: the number written
    ("50%", "50", 1.0), ("50\\%", "50", 1.0), ("50 percent", "50", 1.0), ("50%", "50\\%", 1.0),
    ("50%", "0.5", 0.0), ("0.5", "50\\%", 0.0),
    # \boxed{}: the last one, inside or without answer tags
    ("\\boxed{12}", "12", 1.0), ("so $\\boxed{12}$", "12", 1.0),
    ("\\boxed{1}, \\boxed{2}", "2", 1.0),
    ("\\boxed{12", "12", 0.0),
    # sets, intervals, tuples: a tuple is ordered, a set is not
    ("{1, 2}", "\\{2, 1\\}", 1.0), ("\\{1, 2\\}", "\\{1, 2, 3\\}", 0.0),
    ("3, 1, 2", "\\{1, 2, 3\\}", 1.0), ("\\{2, 1\\}", "(1, 2, 3)", 0.0), ("[1, 2)", "[1, 2)", 1.0),
    ("(1, 2)", "[1, 2]", 0.0), ("(-\\infty, 2]", "(-\\infty, 2]", 1.0),
    ("[1, \\infty)", "(1, \\infty)", 0.0), ("(1, 2, 3)", "(1, 2, 3)", 1.0),
    ("(3, 2, 1)", "(1, 2, 3)", 0.0), ("(2, 1)", "(2, 1)", 1.0), ("(2, 1)", "(1, 2)", 0.0),
    ("\\left( \\frac{\\sqrt{3}}{2}, \\frac{1}{2} \\right)", "(\\frac{\\sqrt3}{2}, 0.5)", 1.0),
    ("(\\frac{1}{2}, \\frac{\\sqrt{3}}{2})", "(\\frac{\\sqrt3}{2}, 0.5)", 0.0),
    ("(1, (2, 3))", "(1, (2, 3))", 1.0), ("(1, (2, 3))", "(1, 2, 3)", 0.0),
    ("1,000,000", "10^6", 1.0),
    # subscripts: one variable, named as latex2sympy names it
    ("x_{1}^{2} + x_{2}^{2}", "x_2^2 + x_1^2", 1.0), ("x_1", "x_{1}", 1.0), ("x_{12}", "x_12", 1.0),
    ("x_{1}", "x_{2}", 0.0), ("x_1", "x", 0.0), ("x_1 = 3", "3", 1.0),
    ("2x_1", "x_{1} + x_{1}", 1.0), ("(x_1, x_2)", "(x_{1}, x_{2})", 1.0),
    ("(x_2, x_1)", "(x_{1}, x_{2})", 0.0),
    # exact numbers: decimals are the numbers they write
    ("0.5", "1/2", 1.0), ("\\frac{1}{2}", "0.5", 1.0), ("0.333", "\\frac13", 0.0),
    ("1.414", "\\sqrt2", 0.0), ("$\\frac{\\sqrt{2}}{2}$", "\\frac{1}{\\sqrt{2}}", 1.0),
    ("\\sin(\\pi/6)", "1/2", 1.0), ("1/10^{20}", "0", 0.0),
    # algebra: math-verify decides, after a variable check and a numeric one
    ("x^2+2x+1", "(x+1)^2", 1.0), ("x^2+1", "(x+1)^2", 0.0), ("2y+1", "2x+1", 0.0),
    ("2^{x}", "2^x", 1.0), ("2**3**x", "2^{3^x}", 1.0),
])
def test_math_reward_hand_cases(text, reference, expected):
    assert math_reward([answer(text)], answer=[reference]) == [expected]


def test_messages_without_answer_tags():
    assert math_reward(["So the total is \\boxed{12}."], answer=["12"]) == [1.0]
    assert math_reward(["12"], answer=["12"]) == [1.0]  # the whole message is the answer
    assert math_reward(["So the total is 12."], answer=["12"]) == [0.0]
    assert math_reward(["<answer>12</answer><answer>13</answer>"], answer=["12"]) == [0.0]


def test_references_numbers_and_bad_rows():
    assert math_reward([answer("7"), answer("0.5")], answer=[7, 0.5]) == [1.0, 1.0]
    for bad in ["", "  ", None, "2 +", "9^{9^{9}}", "\\int x dx"]:
        with pytest.raises(ValueError, match="reference"):
            math_reward([answer("7")], answer=[bad])
    with pytest.raises(ValueError, match="answer has 2 rows but completions has 1"):
        math_reward([answer("7")], answer=["7", "8"])


def test_off_the_main_thread():
    # math-verify's timeout is signal.alarm, which raises off the main thread; ours must not
    results = []
    thread = threading.Thread(target=lambda: results.append(math_reward(
        [answer("\\frac{\\sqrt{2}}{2}"), answer("x^2+2x+1"), answer("2**5")],
        answer=["\\frac{1}{\\sqrt{2}}", "(x+1)^2", "2"])))
    thread.start()
    thread.join()
    assert results == [[1.0, 1.0, 0.0]]


# --- adversarial answers: scored 0 (or right), cheaply (timing: benchmarks/math_reward_cost.py) -

ADVERSARIAL = [
    "9^{9^{9^{9}}}", "9**9**9**9", "2^2^2^2^2^2", "x^{9^{9^{9}}}", "(9^9)^(9^9)", "1^{10^{100}}",
    "e^{e^{e^{e^{10}}}}", "2^{100000}", "10**99999", "\\sqrt{2}^{100000}", "x^{1000000}",
    "9" * 41, "9" * 10_000, "1" * 300, "(" * 150 + "1" + ")" * 150, "(" * 7 + "i" + ")" * 7,
    "\\sin(" * 10 + "x" + ")" * 10, "-" * 299 + "1", "2" + "^2" * 140, "10000!", "(10^{10})!",
    "((5!)!)!", "\\sum_{n=1}^{\\infty} \\frac{1}{n^2}", "\\lim_{x \\to 0} \\frac{\\sin x}{x}",
    "\\frac{d}{dx} x^{2}", "\\prod_{k=1}^{1000} k", "\\binom{100000}{50000}", "\\gcd(9^{9^9}, 2)",
    "\\Gamma(100000)", "The answer is 1 " * 17, "i" * 300, "\\\\" * 150, "^" * 300, "\\frac" * 60,
    "٣" * 100, "1/0", "0^{-1}", "1e999999", "x = " * 70, "(x+1)^{200}", "0^{9^{9^{9}}}",
    "\\{0^{9^{9^{9}}}, 1\\}", "|0^{9^{9^{9}}}|", "|(9^{9})!|", "\\{1^{(9^{9})!}\\}",
    "x_{1}^{2} + x_{2}^{2}", "(1, (2, (3, (4))))", "\\text{a}_{b}^{c}!", "\\cos(\\tan(\\log(x!)))",
    ", ".join(str(k) for k in range(100)),
]


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_adversarial_answers_score_zero(text):
    assert math_reward([answer(text)], answer=["1"]) == [0.0]


@pytest.mark.parametrize("text, reference", [
    ("2^{10000}", "2^{10000}"), ("3**2**3", "6561"), ("1000!", "1000!"), ("5!", "120"),
    ("(10^{30})^{10}", "10^{300}"), ("9" * 40, "9" * 40), ("-" * 10 + "1", "1"),
])
def test_large_but_bounded_answers_score_right(text, reference):
    assert math_reward([answer(text)], answer=[reference]) == [1.0]


def test_power_bound_is_the_documented_one():
    # a power is computed when bit_length(base) * |exponent| <= MAX_BITS: 3 is 2 bits
    assert is_math_equal(f"3^{{{MAX_BITS // 2}}}", f"3^{{{MAX_BITS // 2}}}")
    assert not is_math_equal(f"3^{{{MAX_BITS // 2 + 1}}}", "3")


PIECES = ["9", "1", "0", "x", "i", "e", "^", "**", "*", "/", "-", "+", "!", ",", "=", "(", ")",
          "{", "}", "[", "]", "\\{", "\\}", "\\frac", "\\sqrt", "\\pi", "\\int", "\\sin", " ", "%",
          "\\cdot", "\\infty", ".", "|", "$", "\\boxed{", "cm", "_"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40))
def test_any_answer_scores_zero_or_one(pieces):
    text = "".join(pieces)
    assert math_reward([answer(text), text], answer=["1", "x+1"]) in (
        [a, b] for a in (0.0, 1.0) for b in (0.0, 1.0))
