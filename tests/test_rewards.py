"""Hand cases and properties for grpo.rewards: format, Countdown, choice, math, RewardSet."""

import math
import time
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from grpo.rewards import (
    ExpressionError, RewardError, RewardSet, choice_reward, countdown_reward,
    countdown_strict_reward, evaluate_expression, extract_answer, format_reward, math_reward,
    partial_format_reward,
)
from grpo.rewards.countdown import MAX_DEPTH

PREFILL = "Let me solve this step by step.\n<think>"


def answer(text: str) -> str:
    return f"{PREFILL} some thinking </think>\n<answer>{text}</answer>"


# --- format_reward -----------------------------------------------------------------------------

@pytest.mark.parametrize("message, expected", [
    (PREFILL + " 3 + 4 = 7 </think>\n<answer> 3 + 4 </answer>", 1.0),  # the seed's shape
    ("<think>x</think>\n<answer>y</answer>", 1.0),  # no lead-in
    ("<think>x</think>\n<answer>y</answer>\n  ", 1.0),  # trailing whitespace
    ("<think>x</think>\n<answer>y</answer> bye", 0.0),  # text after the answer
    ("<think>a<think>b</think></think>\n<answer>y</answer>", 0.0),  # nested think
    ("<think>x</think>\n<answer>1</answer><answer>2</answer>", 0.0),  # the seed accepts this
    ("<think>x</think><answer>y</answer>", 0.0),  # no newline
    ("<think>x</think>\n\n<answer>y</answer>", 0.0),  # two newlines (the seed's rule: one)
    ("<answer>y</answer><think>x</think>\n<answer>y</answer>", 0.0),  # answer in the lead-in
    ("<think>x</think>\n<answer>y", 0.0),  # unclosed answer
    ("</think><think>x\n<answer>y</answer>", 0.0),  # tags out of order
    ("no tags at all", 0.0),
])
def test_format_reward_hand_cases(message, expected):
    assert format_reward([message]) == [expected]


def test_format_reward_one_float_per_completion():
    assert format_reward([]) == []
    assert format_reward(["<think>a</think>\n<answer>b</answer>", "x", ""]) == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="completions must be a list of str"):
        format_reward("<think>a</think>\n<answer>b</answer>")


@pytest.mark.parametrize("message, expected", [
    (PREFILL + " 3 + 4 = 7 </think>\n<answer> 3 + 4 </answer>", 1.0),
    (PREFILL + " 1 + 2 = 3\n\n<answer>\n1 + 3 = 4\n</answer>", 0.6),  # think never closed
    (PREFILL + " x </think>\n\nSo the answer is 3 * 3 = 9", 0.2),  # closed think, no answer
    (PREFILL + " x <answer> 3", 0.2),  # an answer opened, nothing else
    (PREFILL + " x </think>\n<answer> 3", 0.6),  # joined, answer unclosed
    ("<think>x</think>\n<answer>y</answer> bye", 0.8),  # text after the answer
    ("<think>x</think><answer>y</answer>", 0.8),  # no newline between the blocks
    ("<think>a<think>b</think></think>\n<answer>y</answer>", 0.8),  # nested think
    ("<think>x</think>\n<answer>1</answer><answer>2</answer>", 0.6),  # two answers
    ("</answer> <answer>", 0.2),  # closed before opened: only "one <answer>" holds
    ("no tags at all", 0.0),
])
def test_partial_format_reward_hand_cases(message, expected):
    assert partial_format_reward([message]) == [expected]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "\n", " ", "x"]),
                max_size=10))
def test_partial_format_is_one_exactly_when_format_is(pieces):
    message = "".join(pieces)
    assert (partial_format_reward([message]) == [1.0]) == (format_reward([message]) == [1.0])


def test_extract_answer_needs_exactly_one_block():
    assert extract_answer("a <answer> 7 </answer>") == " 7 "
    assert extract_answer("<answer>1</answer> <answer>2</answer>") is None
    assert extract_answer("</answer> 7 <answer>") is None
    assert extract_answer("nothing") is None


# --- the evaluator -----------------------------------------------------------------------------

@pytest.mark.parametrize("expression, value", [
    ("6/(4-2)", Fraction(3)),  # 4-2 = 2, 6/2 = 3 exactly
    ("1/3", Fraction(1, 3)),
    ("2 + 3 * 4", Fraction(14)),  # precedence: 3*4 = 12, + 2
    ("(2 + 3) * 4", Fraction(20)),
    ("8 - 2 - 3", Fraction(3)),  # left-associative: (8-2)-3
    ("8 / 2 / 2", Fraction(2)),  # (8/2)/2
    ("(1 / 3) * 3 * 5", Fraction(5)),  # exact through a fraction
    ("1/10 + 2/10 - 3/10", Fraction(0)),  # floats give 5.55e-17
])
def test_evaluate_expression_exact(expression, value):
    assert evaluate_expression(expression) == value


@pytest.mark.parametrize("expression", [
    "", "(", "1 +", "()", "2(3)", "-2 + 3", "+2", "2 ** 3", "2 // 3", "2 ^ 3", "1.5 + 1",
    "07 + 1", "4 / (2 - 2)", "x + 1", "\u0663 + 1",
    "(" * (MAX_DEPTH + 1) + "1" + ")" * (MAX_DEPTH + 1),
])
def test_evaluate_expression_rejects(expression):
    with pytest.raises(ExpressionError):
        evaluate_expression(expression)


def test_evaluate_expression_allows_max_depth():
    assert evaluate_expression("(" * MAX_DEPTH + "7" + ")" * MAX_DEPTH) == 7


# --- countdown_reward --------------------------------------------------------------------------

@pytest.mark.parametrize("text, nums, target, expected", [
    ("6/(4-2)", [6, 4, 2], 3, 1.0),  # 6 / 2 = 3 exactly
    (" (2 + 4) / 6 ", [6, 4, 2], 1, 1.0),
    ("6/(4-2) = 3", [6, 4, 2], 3, 1.0),  # a trailing "= target" is fine
    ("6/(4-2) = 4", [6, 4, 2], 3, 0.0),  # ... when it is the target
    ("6/(4-2) =", [6, 4, 2], 3, 0.0),
    ("6/(4-2) = 3 = 3", [6, 4, 2], 3, 0.0),
    ("6*4-2", [6, 4, 2], 3, 0.0),  # 22, not 3
    ("6/2", [6, 4, 2], 3, 0.0),  # 4 unused
    ("6/(4-2) + 2 - 2", [6, 4, 2], 3, 0.0),  # 2 used three times
    ("-6 + 4 + 2", [6, 4, 2], 0, 0.0),  # unary minus is not allowed
    ("6 / (4 - 2 - 2)", [6, 4, 2, 2], 3, 0.0),  # division by zero
    ("6 ÷ (4 - 2)", [6, 4, 2], 3, 0.0),  # non-ASCII operator
    ("\u0666/(4-2)", [6, 4, 2], 3, 0.0),  # Arabic-Indic six
    ("06/(4-2)", [6, 4, 2], 3, 0.0),  # leading zero
    ("9**9**9**9", [9, 9, 9, 9], 1, 0.0),  # the seed's stall, answered at once
])
def test_countdown_reward_hand_cases(text, nums, target, expected):
    assert countdown_reward([answer(text)], nums=[nums], target=[target]) == [expected]


def test_countdown_strict_reward_refuses_any_equals():
    texts = [answer(t) for t in ("6/(4-2)", "6/(4-2) = 3", "6/(4-2) = 4", "(2 + 4) / 6")]
    assert countdown_strict_reward(texts, nums=[[6, 4, 2]] * 4, target=[3, 3, 3, 1]) == \
        [1.0, 0.0, 0.0, 1.0]
    assert countdown_reward(texts, nums=[[6, 4, 2]] * 4, target=[3, 3, 3, 1]) == \
        [1.0, 1.0, 0.0, 1.0]


def test_countdown_reward_needs_one_answer_and_accepts_column_types():
    two = f"{PREFILL}</think>\n<answer>6/(4-2)</answer><answer>1</answer>"
    rewards = countdown_reward([two, "6/(4-2)", answer("6/(4-2)")],
                               nums=[[6, 4, 2], [6, 4, 2], ("6", "4", "2")],
                               target=[3, 3, 3.0])
    assert rewards == [0.0, 0.0, 1.0]  # two answers, no tags, strings and a float target


def test_countdown_reward_bad_columns():
    with pytest.raises(ValueError, match="nums has 1 rows but completions has 2"):
        countdown_reward(["a", "b"], nums=[[1, 2]], target=[3, 3])
    with pytest.raises(ValueError, match="nums must hold integers"):
        countdown_reward([answer("1+2")], nums=[[1, "two"]], target=[3])


_ADVERSARIAL = st.one_of(
    st.text(max_size=300),
    st.text(alphabet="0123456789+-*/() \u0660\u0966\uff11=<>", max_size=400),
    st.integers(1, 200_000).map(lambda k: "(" * k + "1" + ")" * k),
    st.integers(1, 500_000).map(lambda k: "9" * k),
    st.integers(1, 300_000).map(lambda k: "+".join(["9"] * k)),
    st.integers(2, 50).map(lambda k: "**".join(["9"] * k)),
    st.just("1+" * 500_000 + "1"),  # a megabyte answer
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=_ADVERSARIAL, wrapped=st.booleans())
def test_countdown_reward_is_safe_and_fast_on_adversarial_answers(body, wrapped):
    text = answer(body) if wrapped else body
    start = time.process_time()  # CPU time of this process: robust to other jobs on the machine
    rewards = countdown_reward([text], nums=[[9, 9, 9, 9]], target=[36])
    elapsed = time.process_time() - start
    assert rewards in ([0.0], [1.0])
    assert elapsed < 0.05, f"{elapsed * 1e3:.1f} ms on {body[:60]!r}"


# Random valid expressions, rendered, against a brute-force evaluation of the same tree.
_LEAF = st.integers(1, 99)
_TREE = st.recursive(_LEAF, lambda sub: st.tuples(st.sampled_from("+-*/"), sub, sub),
                     max_leaves=6)


def _value(tree):
    if isinstance(tree, int):
        return Fraction(tree)
    op, left, right = tree
    a, b = _value(left), _value(right)
    if a is None or b is None or (op == "/" and b == 0):
        return None
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]


def _render(tree, spaces):
    if isinstance(tree, int):
        return str(tree)
    op, left, right = tree
    sep = " " if spaces else ""
    return f"({_render(left, spaces)}{sep}{op}{sep}{_render(right, spaces)})"


def _leaves(tree):
    return [tree] if isinstance(tree, int) else _leaves(tree[1]) + _leaves(tree[2])


@settings(max_examples=300, deadline=None)
@given(tree=_TREE, spaces=st.booleans())
def test_evaluator_agrees_with_brute_force(tree, spaces):
    expression, expected = _render(tree, spaces), _value(tree)
    if expected is None:
        with pytest.raises(ExpressionError, match="division by zero"):
            evaluate_expression(expression)
        return
    assert evaluate_expression(expression) == expected
    if expected.denominator == 1:  # an integer target: the reward agrees too
        nums, target = _leaves(tree), int(expected)
        assert countdown_reward([answer(expression), answer(expression)], nums=[nums, nums],
                                target=[target, target + 1]) == [1.0, 0.0]


# --- choice_reward and math_reward -------------------------------------------------------------

@pytest.mark.parametrize("text, right, expected", [
    ("<answer> B </answer>", "B", 1.0),
    ("<answer>b</answer>", "B", 1.0),  # case-insensitive
    ("<answer>(B)</answer>", "B", 1.0),
    ("<answer>B.</answer>", "B", 1.0),
    ("<answer>C</answer>", "B", 0.0),
    ("<answer>B. Paris</answer>", "B", 0.0),  # the letter only
    ("<answer>B and C</answer>", "B", 0.0),
    ("<answer>B</answer><answer>C</answer>", "B", 0.0),  # two answers
    ("B", "B", 0.0),  # none
])
def test_choice_reward(text, right, expected):
    assert choice_reward([PREFILL + "</think>\n" + text], answer=[right]) == [expected]


def test_choice_reward_bad_answer_column():
    with pytest.raises(ValueError, match="single option letters"):
        choice_reward(["<answer>B</answer>"], answer=["BC"])
    with pytest.raises(ValueError, match="answer has 2 rows but completions has 1"):
        choice_reward(["<answer>B</answer>"], answer=["B", "C"])


@pytest.mark.parametrize("text, reference, expected", [
    (answer("\\frac{1}{2}"), "0.5", 1.0),
    (answer("0.5"), "1/2", 1.0),
    (answer("$\\frac{\\sqrt{2}}{2}$"), "\\frac{1}{\\sqrt{2}}", 1.0),  # sqrt(2)/2 = 1/sqrt(2)
    ("So the total is \\boxed{12}.", "12", 1.0),  # no answer tags: the last boxed answer
    (answer("12"), "\\boxed{12}", 1.0),
    (answer("1/3"), "1/2", 0.0),
    (answer("13"), "12", 0.0),
    (f"{PREFILL}</think>\n<answer>12</answer><answer>13</answer>", "12", 0.0),  # two answers
])
def test_math_reward(text, reference, expected):
    assert math_reward([text], answer=[reference]) == [expected]


def test_math_reward_integer_reference_and_bad_column():
    assert math_reward([answer("7")], answer=[7]) == [1.0]
    with pytest.raises(ValueError, match="non-empty reference"):
        math_reward([answer("7")], answer=[""])


# --- RewardSet ---------------------------------------------------------------------------------

GOOD, WRONG = answer("6/(4-2)"), answer("6*4-2")


def test_reward_set_weights_sums_and_reports():
    rewards = RewardSet([format_reward, countdown_reward], weights=[0.5, 2.0])
    assert rewards.names == ["format_reward", "countdown_reward"]
    assert rewards.required_columns == {"nums": ["countdown_reward"],
                                        "target": ["countdown_reward"]}
    out = rewards([GOOD, WRONG, "junk"], nums=[[6, 4, 2]] * 3, target=[3] * 3,
                  prompt=["p"] * 3)  # an extra column is fine
    # format [1, 1, 0], countdown [1, 0, 0]: total = 0.5*f + 2*c = [2.5, 0.5, 0]
    torch.testing.assert_close(out.total, torch.tensor([2.5, 0.5, 0.0]))
    assert out.total.dtype == torch.float32
    torch.testing.assert_close(out.per_function["countdown_reward"], torch.tensor([1.0, 0.0, 0.0]))
    # format mean 2/3; population std sqrt(((1/3)^2 * 2 + (2/3)^2) / 3) = sqrt(2/9) = 0.4714
    assert out.metrics["rewards/format_reward/mean"] == pytest.approx(2 / 3)
    assert out.metrics["rewards/format_reward/std"] == pytest.approx(math.sqrt(2 / 9))
    assert out.metrics["rewards/total/mean"] == pytest.approx(1.0)  # (2.5 + 0.5 + 0) / 3
    assert out.metrics["rewards/countdown_reward/errors"] == 0.0


def _partly_applicable(completions):
    return [1.0, None, 0.5]


def _ones(completions):
    return [1.0] * len(completions)


def test_none_means_not_applicable():
    out = RewardSet([_partly_applicable, _ones])(["a", "b", "c"])
    torch.testing.assert_close(out.total, torch.tensor([2.0, 1.0, 1.5]))  # None left out
    assert math.isnan(out.per_function["_partly_applicable"][1].item())
    assert out.metrics["rewards/_partly_applicable/mean"] == pytest.approx(0.75)  # (1 + 0.5) / 2


def test_nan_and_exceptions_fail_the_step_by_default():
    with pytest.raises(RewardError,
                       match=r"'<lambda>' returned non-finite values at completions \[1\]"):
        RewardSet([lambda c: [1.0, math.nan]])(["a", "b"])

    def broken(completions):
        raise KeyError("nums")
    with pytest.raises(RewardError, match="reward 'broken' raised KeyError"):
        RewardSet([broken])(["a"])


def test_on_error_zero_scores_and_counts():
    def broken(completions):
        raise KeyError("nums")
    out = RewardSet([lambda c: [math.inf, 2.0], broken, _ones], on_error="zero")(["a", "b"])
    torch.testing.assert_close(out.total, torch.tensor([1.0, 3.0]))  # inf -> 0, broken -> 0
    assert out.metrics["rewards/<lambda>/errors"] == 1.0
    assert out.metrics["rewards/broken/errors"] == 2.0
    assert torch.isfinite(out.total).all()


def test_reward_set_bad_input():
    rewards = RewardSet([countdown_reward])
    with pytest.raises(ValueError, match="column 'nums' \\(needed by 'countdown_reward'\\)"):
        rewards([GOOD], target=[3])
    with pytest.raises(ValueError, match="column 'nums' has 1 rows but there are 2 completions"):
        rewards([GOOD, GOOD], nums=[[6, 4, 2]], target=[3, 3])
    with pytest.raises(ValueError, match="returned 2 values for 3 completions"):
        RewardSet([lambda c: [1.0, 0.0]])(["a", "b", "c"])
    with pytest.raises(ValueError, match="weights has 1 entries but there are 2"):
        RewardSet([format_reward, countdown_reward], weights=[1.0])
    with pytest.raises(ValueError, match="at least one"):
        RewardSet([])
    with pytest.raises(ValueError, match="needs num_workers > 0"):
        RewardSet([format_reward], timeout=1.0)


def test_columns_follow_signatures():
    seen = {}

    def wants_all(completions, **columns):
        seen["all"] = sorted(columns)
        return [0.0] * len(completions)

    def optional(completions, target, scale=(2.0,)):
        seen["scale"] = scale
        return [float(t) * k for t, k in zip(target, scale)]

    rewards = RewardSet([wants_all, optional, optional])
    assert rewards.names == ["wants_all", "optional", "optional_2"]
    assert rewards.required_columns == {"target": ["optional", "optional_2"]}
    out = rewards(["a"], target=[3], scale=[5.0], other=["x"])
    assert seen == {"all": ["other", "scale", "target"], "scale": [5.0]}
    torch.testing.assert_close(out.total, torch.tensor([30.0]))  # 0 + 3*5 + 3*5


# --- the process pool --------------------------------------------------------------------------

# "fork" starts workers in milliseconds; the default "spawn" re-imports torch in each worker
# (about 10 s here), so its run of the same test is marked slow.
@pytest.mark.parametrize("mp_context", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_pool_times_out_a_stalled_call_and_keeps_going(mp_context):
    from reward_helpers import seed_eval_reward

    # "9**9**9**9" stalls in C; the pool kills its worker after 2 s and scores it 0.0.
    with RewardSet([seed_eval_reward], num_workers=2, timeout=2.0,
                   mp_context=mp_context) as rewards:
        start = time.monotonic()
        out = rewards(["1+1", "9**9**9**9", "2*3"])
        elapsed = time.monotonic() - start
    torch.testing.assert_close(out.total, torch.tensor([2.0, 0.0, 6.0]))
    assert out.metrics["rewards/seed_eval_reward/timeouts"] == 1.0
    assert elapsed < 60  # not forever; includes starting two pools of workers


def test_pool_reports_errors_by_name_and_needs_picklable_functions():
    from reward_helpers import failing_on_marker

    with RewardSet([failing_on_marker], num_workers=1, on_error="zero",
                   mp_context="fork") as rewards:
        out = rewards(["ok", "FAIL", "ok"])
        # only the failing call scores 0.0
        torch.testing.assert_close(out.total, torch.tensor([1.0, 0.0, 1.0]))
        assert out.metrics["rewards/failing_on_marker/errors"] == 1.0
    with RewardSet([failing_on_marker], num_workers=1, mp_context="fork") as rewards:
        with pytest.raises(RewardError, match="'failing_on_marker' raised KeyError"):
            rewards(["FAIL"])
    with pytest.raises(ValueError, match="must be picklable"):
        RewardSet([lambda c: [0.0]], num_workers=1)
