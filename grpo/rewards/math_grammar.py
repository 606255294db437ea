r"""latex2sympy's ANTLR grammar, as math-verify uses it, its cost bounded in steps, not seconds.

ANTLR predicts which way to parse with lookahead tables (a DFA per decision of the grammar) that
it fills lazily, entry by entry, as inputs are met. A known entry costs microseconds; a new one a
closure over the grammar's ATN, 5-150 ms in this grammar, and a shape met for the first time
needs tens of new entries. How many is combinatorial in the nesting (a function in a subscript in
a set is not a function in a fraction), so no warm-up corpus covers what a policy can write.

So the cost of a parse is counted in closure steps (`closure_` calls: deterministic, unlike CPU
time), on tables of our own: `WARM_UP` fills them once per process (about 2 s, at the first parse)
and its entries are free; every other entry is charged what computing it took, whether this parse
computes it or an earlier one did. A parse that would pass `budget` steps raises `OverBudget`. The
charge is a function of the text and `WARM_UP` alone: not of the machine's speed, nor of what the
process parsed before. Parses run in SLL mode (what SLL cannot parse raises, as a syntax error).
"""

from __future__ import annotations

import functools
import math

WARM_UP = (  # answer shapes only the grammar reads, as math_answer hands them over
    r"\sin(x)", r"\cos{x}", r"\tan x", r"\arcsin(\frac{1}{2})", r"\ln(2)", r"\log_{2}(8)",
    r"\exp(2)", r"\sin^{2}(x)", r"\tan^{-1}(x)", r"\sin(\frac{\pi}{6})", r"2\sin(x)\cos(x)",
    r"\frac{\sqrt{3}}{2}\sin(x)", r"\sqrt{\sin(x)}", r"e^{\sin(x)}", r"\sin(\cos(x))",
    r"|x-1|", r"\sqrt{|x|}", r"2|x|+1", r"|\frac{1}{2}|", r"5!", r"(n+1)!", r"\frac{10!}{5!}",
    r"\alpha", r"2\pi", r"\sqrt[3]{2}", r"1\pm\sqrt{2}", r"x\cdot\sin(x)", r"2\times\cos(x)",
    r"1<x\le 3", r"x\neq 0", r"y=\sin(x)", r"(-\infty,1)\cup(2,\infty)", r"(0,1)\cap(0,2)",
    r"\{\sin(x),1\}", r"(\ln(2),\pi)", r"[\sin(1),2)", r"\{|x|,5!\}",
)


class OverBudget(Exception):
    """The parse needs more closure steps, beyond what `WARM_UP` filled, than its budget."""


@functools.cache
def _tables():
    """This module's prediction tables, filled by `WARM_UP`, and the charge of each entry filled
    after it: {(id(source DFA state), token) or (decision, precedence): closure steps}."""
    from antlr4 import CommonTokenStream, InputStream
    from antlr4.dfa.DFA import DFA
    from antlr4.PredictionContext import PredictionContextCache
    from latex2sympy2_extended.gen.antlr4_13_2.PSLexer import PSLexer
    from latex2sympy2_extended.gen.antlr4_13_2.PSParser import PSParser

    tables = [DFA(state, i) for i, state in enumerate(PSParser.atn.decisionToState)]
    context_cache = PredictionContextCache()
    for text in WARM_UP:
        parser = PSParser(CommonTokenStream(PSLexer(InputStream(text))))
        parser.removeErrorListeners()  # a syntax error fills tables too; it need not print
        parser._interp = _charged_simulator()(parser, tables, context_cache, None, math.inf)
        parser.math()  # charges=None: the entries computed here are free
    return tables, context_cache, {}


def bound(parser, budget: float):
    """`parser` (latex2sympy's PSParser) predicting on this module's tables, raising OverBudget
    once its parse has been charged more than `budget` closure steps."""
    parser._interp = _charged_simulator()(parser, *_tables(), budget)
    return parser


@functools.cache
def _charged_simulator():
    from antlr4.atn.ParserATNSimulator import ParserATNSimulator
    from antlr4.atn.PredictionMode import PredictionMode

    class ChargedSimulator(ParserATNSimulator):
        """SLL prediction that charges closure steps against `budget` (module docstring)."""

        def __init__(self, parser, tables, context_cache, charges, budget):
            super().__init__(parser, parser.atn, tables, context_cache)
            self.predictionMode = PredictionMode.SLL
            self.charges, self.budget, self.steps = charges, budget, 0

        def charge(self, steps: int) -> None:
            self.steps += steps
            if self.steps > self.budget:
                raise OverBudget(f"LaTeX grammar: over {self.budget} closure steps")

        def closure_(self, *args):
            self.charge(1)
            return super().closure_(*args)

        def computed(self, key, compute, *args):
            before = self.steps
            result = compute(*args)
            if self.charges is not None:
                self.charges[key] = self.steps - before
            return result

        def adaptivePredict(self, input, decision, outerContext):
            dfa = self.decisionToDFA[decision]
            self.start = (decision, self.parser.getPrecedence() if dfa.precedenceDfa else -1)
            if self.charges:  # a start state an earlier parse computed
                self.charge(self.charges.get(self.start, 0))
            return super().adaptivePredict(input, decision, outerContext)

        def computeStartState(self, p, ctx, fullCtx):
            return self.computed(self.start, super().computeStartState, p, ctx, fullCtx)

        def getExistingTargetState(self, previousD, t):
            target = super().getExistingTargetState(previousD, t)
            if target is not None and self.charges:
                self.charge(self.charges.get((id(previousD), t), 0))
            return target

        def computeTargetState(self, dfa, previousD, t):
            return self.computed((id(previousD), t), super().computeTargetState, dfa, previousD, t)

    return ChargedSimulator
