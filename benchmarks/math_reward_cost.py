"""CPU seconds per completion of `math_reward` on adversarial answers (grpo/rewards/math_answer.py).

    .venv/bin/python benchmarks/math_reward_cost.py [--reference 1] [--passes 2]

Each answer is scored alone, `<answer>…</answer>`-wrapped, against `--reference`, with the
reward's caches cleared and a full garbage collection first (else the collection the process owes,
~0.1 s here, lands on whichever answer triggers it), timed with `time.process_time` (this process's
CPU, so other load on the machine does not count). First it times the LaTeX grammar's warm-up
(math_grammar.WARM_UP, paid once per process at the grammar's first use), then warms the process
on ordinary answers, as in training; pass 1 then meets every adversarial shape for the first time
(none is in WARM_UP: ANTLR's prediction tables are cold for it), later passes see the same shapes
again. "random shapes" are answers only the LaTeX grammar reads, in shapes the process has most
likely not met. Prints a table per category (max and median) and the slowest answers; the target
is at most 0.2 s per completion.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time

ADVERSARIAL = {
    "towers": ["9^{9^{9^{9}}}", "9**9**9**9", "10^{10^{10}}", "2^2^2^2^2^2", "x^{9^{9^{9}}}",
               "(9^9)^(9^9)", "1^{10^{100}}", "2^{2^{2^{2^{2}}}}", "e^{e^{e^{e^{10}}}}",
               "\\sqrt{2}^{\\sqrt{2}^{\\sqrt{2}^{100}}}"],
    "huge exponents": ["2^{100000}", "10**99999", "(10^{30})^{10^{3}}", "\\sqrt{2}^{100000}",
                       "e^{10^{10}}", "x^{1000000}", "2^{-100000}", "(1/3)^{99999}",
                       "\\frac{1}{2^{99999}}", "2^{32767}", "3^{20000}*5^{20000}"],
    "long numbers": ["9" * 40, "9" * 41, "9" * 10_000, "1" * 300, "0." + "3" * 297,
                     "1" + "0" * 39 + "." + "0" * 39 + "1", ",".join(["999"] * 70)],
    "nesting": ["(" * 10 + "1" + ")" * 10, "(" * 11 + "1" + ")" * 11, "(" * 150 + "1" + ")" * 150,
                "\\sqrt{" * 10 + "2" + "}" * 10, "\\frac{1}{" * 10 + "2" + "}" * 10,
                "(" * 10 + "i" + ")" * 10, "[" * 10 + "x, y" + "]" * 10,
                "\\{" * 5 + "1, 2" + "\\}" * 5, "-" * 299 + "1", "2" + "^2" * 140,
                "\\sin(" * 10 + "x" + ")" * 10, "(" * 300, "{" * 300, "}" * 150 + "{" * 150],
    "factorials": ["1000!", "10000!", "(10^{10})!", "100!!", "5!!!!!", "((5!)!)!", "(3!)!^{3!}",
                   "1000! - 1000!", "\\frac{1000!}{999!}"],
    "calculus": ["\\int_0^\\infty e^{-x^2} dx", "\\sum_{n=1}^{\\infty} \\frac{1}{n^2}",
                 "\\lim_{x \\to 0} \\frac{\\sin x}{x}", "\\frac{d}{dx} x^{100}",
                 "\\prod_{k=1}^{1000} k", "\\binom{100000}{50000}", "\\gcd(9^{9^9}, 2)",
                 "\\det\\begin{pmatrix}1&2\\\\3&4\\end{pmatrix}", "\\Gamma(100000)"],
    "symbolic": ["(x+1)^{100}", "(x+y+z)^{30}", "\\sin(x)^{20}+\\cos(x)^{20}",
                 "(x+1)^{100}-(x-1)^{100}", "x^{2^{10}}+1", "\\frac{(x+1)^{64}}{(x-1)^{64}}",
                 "(x+1)^{40}(x+2)^{40}(x+3)^{40}", "\\sqrt{x^{2}}", "e^{x}e^{-x}",
                 "\\log(e^{x})", "((x^2)^2)^2-x^8+1"],
    "sets": ["\\{" + ", ".join(str(k) for k in range(60)) + "\\}",
             "(" + ", ".join(f"{k}/7" for k in range(50)) + ")",
             ", ".join(f"\\sqrt{{{k}}}" for k in range(2, 40)), "[1, 2) \\cup (3, 4]",
             "\\{" + ", ".join(f"\\sqrt{{{k}}}+\\pi" for k in range(20)) + "\\}"],
    "text": ["The answer is 12 " * 17, "a" * 300, "i" * 300, "x" * 300, "12 " + "cm " * 90,
             "\\text{" + "ab " * 90 + "}", "the final answer is $\\boxed{1}$ " * 9],
    "junk": ["\\\\" * 150, "$" * 300, "^" * 300, "*" * 300, "/" * 300, "." * 300, "=" * 300,
             "\\frac" * 60, "\\sqrt" * 60, "٣" * 100, "😀" * 100, "\x00" * 300, "1/0",
             "0^{-1}", "(-8)^{1/3}", "\\sqrt{-1}", "i^i", "e^{i\\pi}", "1e999999", "x = " * 70],
    "latex shapes": ["x_{1}^{2} + x_{2}^{2}", "|x|^{|y|}", "\\text{a}_{b}^{c}!", "(((i)))",
                     "\\cos(\\tan(\\log(x!)))", "x_{3}^{x_{4}}", "\\{[1, 2), (x, y]\\}",
                     "(1, (2, (3, (4))))", "\\{0^{9^{9^{9}}}, 1\\}", "|(9^{9})!|",
                     "\\left( \\frac{\\sqrt{3}}{2}, \\frac{1}{2} \\right)", "1 < x \\le 3",
                     "(\\sin(2^{|2|}), \\{(-i, x_{k}^{a_n}), x^{3 \\cdot x}\\})", "((4)!, x^{3})",
                     "\\frac{\\arcsin(\\pi)}{x^{x_{2}^{\\pi}}}", "x_{n}^{|x_{1}|}",
                     "\\{2^{x_{1}}, (3)!\\}"],
    "irrational": [" + ".join(f"\\sqrt{{{k}}}" for k in range(2, 30)),
                   "\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{2}}}}}}", "\\pi^{\\pi^{\\pi}}",
                   "\\sin(10^{300})", "\\frac{\\sqrt{2}+\\sqrt{3}}{\\sqrt{5}-\\sqrt{7}}"],
}


def random_shapes(count: int, seed: int = 0) -> list[str]:
    """Functions, |x| and n! around random terms: shapes only the LaTeX grammar reads."""
    rng = random.Random(seed)

    def term(depth: int) -> str:
        if depth == 0 or rng.random() < 0.3:
            return rng.choice(["2", "10", "x", "y_{1}", "a_n", "e", "i", "\\pi", "\\infty"])
        a, b = term(depth - 1), term(depth - 1)
        return rng.choice([f"({a}, {b})", f"\\{{{a}, {b}\\}}", f"\\frac{{{a}}}{{{b}}}",
                           f"{a}^{{{b}}}", f"{a} \\cdot {b}", f"{a} + {b}", f"\\sqrt{{{a}}}",
                           wrap(a)])

    def wrap(text: str) -> str:
        function = rng.choice(["sin", "cos", "tan", "log", "ln", "exp", "arcsin"])
        return rng.choice([f"\\{function}({text})", f"|{text}|", f"({text})!"])

    shapes = set()
    while len(shapes) < count:
        if len(text := wrap(term(rng.randint(1, 3)))) <= 100:
            shapes.add(text)
    return sorted(shapes)


ADVERSARIAL["random shapes"] = random_shapes(60)
ORDINARY = ["12", "\\frac{1}{2}", "3**2", "2^{10}", "(1, 2)", "\\{1, 2\\}", "x = 3", "2x+1",
            "\\sqrt{2}", "5!", "\\sin(\\pi/6)", "[0, 1)", "1,000", "50\\%", "\\boxed{7}"]


def measure(answers: list[str], reference: str) -> list[float]:
    from grpo.rewards.math_answer import _read, _read_reference, math_reward

    seconds = []
    for text in answers:
        _read.cache_clear()
        _read_reference.cache_clear()
        gc.collect()
        start = time.process_time()
        reward = math_reward([f"<answer>{text}</answer>"], [reference])
        seconds.append(time.process_time() - start)
        assert reward in ([0.0], [1.0]), reward
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default="1")
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    import latex2sympy2_extended.latex2sympy2  # noqa: F401  (imports sympy: not the warm-up)

    from grpo.rewards.math_grammar import WARM_UP, _tables

    assert not set(WARM_UP) & {text for answers in ADVERSARIAL.values() for text in answers}
    start = time.process_time()
    _tables()
    print(f"grammar warm-up: {time.process_time() - start:.2f} s CPU ({len(WARM_UP)} texts, "
          "once per process)")
    measure(ORDINARY, args.reference)  # imports, and the caches a training run has warm
    measure(["x^2+2x+1"], "(x+1)^2")  # sympy's first simplify imports sympy.physics: 0.25 s
    every = []
    for run in range(1, args.passes + 1):
        print(f"\npass {run}: CPU seconds per completion, reference {args.reference!r}")
        print(f"{'category':16} {'answers':>7} {'max':>8} {'median':>8}")
        for category, answers in ADVERSARIAL.items():
            seconds = measure(answers, args.reference)
            every += [(s, run, text) for s, text in zip(seconds, answers)]
            print(f"{category:16} {len(answers):7d} {max(seconds):8.4f} "
                  f"{statistics.median(seconds):8.4f}")
        this = [s for s, r, _ in every if r == run]
        print(f"{'all':16} {len(this):7d} {max(this):8.4f} {statistics.median(this):8.4f}")
    print("\nslowest answers (seconds, pass, answer):")
    for seconds, run, text in sorted(every, reverse=True)[:8]:
        print(f"  {seconds:.4f}  {run}  {text[:70]!r}")


if __name__ == "__main__":
    main()
