"""The Countdown generator, prompt templates and building, and loading real data."""

import json
from collections import Counter

import datasets
import huggingface_hub.constants
import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from grpo.data import (
    TEMPLATES, build_prompts, countdown_dataset, countdown_splits, get_template,
    load_prompt_dataset, prefill, render_prompt, solve_countdown,
)
from grpo.models import resolve_model
from grpo.rewards import countdown_reward, evaluate_expression
from grpo.rewards.countdown import tokenize

SEED_SYSTEM = ("You are a helpful assistant. You first thinks about the reasoning process in the "
               "mind and then provides the user with the answer.")


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model(None))


# --- the solver and the generator --------------------------------------------------------------

def test_solver_hand_cases():
    # 2, 3: 2+3 = 5, 2*3 = 6, 3-2 = 1; 2-3 < 0 is not allowed, 3/2 and 2/3 are not exact.
    assert set(solve_countdown((2, 3))) == {1, 5, 6}
    # 2, 4: 6, 8, 4-2 = 2 and 4/2 = 2 (one value, one expression).
    assert set(solve_countdown((2, 4))) == {2, 6, 8}
    # 1, 2, 3 reach 0 = (1+2)-3 and 9 = (1+2)*3, and nothing above (2+1)*3 = 9.
    reach = solve_countdown((1, 2, 3))
    assert {0, 9} <= set(reach) and max(reach) == 9
    for value, expression in reach.items():
        assert evaluate_expression(expression) == value
        assert sorted(t for t in tokenize(expression) if isinstance(t, int)) == [1, 2, 3]


@pytest.mark.parametrize("difficulty", [
    {},  # Countdown-Tasks-3to4's shape: 3 or 4 numbers in 1..99, target in 10..100
    {"num_numbers": 3, "number_range": (1, 20), "target_range": (10, 40)},  # easy, for CPU
])
def test_every_stored_solution_reaches_its_target(difficulty):
    puzzles = countdown_dataset(300, seed=1, **difficulty)
    counts = [difficulty.get("num_numbers", 3)] if difficulty else [3, 4]
    lo, hi = difficulty.get("number_range", (1, 99))
    tlo, thi = difficulty.get("target_range", (10, 100))
    assert puzzles.column_names == ["nums", "target", "solution"] and len(puzzles) == 300
    for row in puzzles:
        assert len(row["nums"]) in counts and all(lo <= x <= hi for x in row["nums"])
        assert tlo <= row["target"] <= thi
        assert evaluate_expression(row["solution"]) == row["target"]
        used = [t for t in tokenize(row["solution"]) if isinstance(t, int)]
        assert sorted(used) == sorted(row["nums"])  # each number exactly once
    answers = [f"<think>…</think>\n<answer>{s}</answer>" for s in puzzles["solution"]]
    assert countdown_reward(answers, puzzles["nums"], puzzles["target"]) == [1.0] * 300
    if not difficulty:  # both sizes occur
        assert set(Counter(len(n) for n in puzzles["nums"])) == {3, 4}


def test_same_seed_same_puzzles_and_all_distinct():
    a, b = countdown_dataset(100, seed=7), countdown_dataset(100, seed=7)
    assert a.to_dict() == b.to_dict()
    assert countdown_dataset(100, seed=8)["nums"] != a["nums"]
    keys = {(tuple(sorted(n)), t) for n, t in zip(a["nums"], a["target"])}
    assert len(keys) == 100


def test_splits_do_not_overlap_and_test_is_stable():
    splits = countdown_splits(200, 50, seed=3, num_numbers=3, number_range=(1, 10))
    key = lambda ds: {(tuple(sorted(n)), t) for n, t in zip(ds["nums"], ds["target"])}  # noqa: E731
    assert len(splits["train"]) == 200 and len(splits["test"]) == 50
    assert not key(splits["train"]) & key(splits["test"])
    bigger = countdown_splits(400, 50, seed=3, num_numbers=3, number_range=(1, 10))
    assert bigger["test"].to_dict() == splits["test"].to_dict()


def test_generator_bad_knobs():
    with pytest.raises(ValueError, match="number_range must be"):
        countdown_dataset(5, number_range=(10, 1))
    with pytest.raises(ValueError, match="num_numbers must be"):
        countdown_dataset(5, num_numbers=(1, 7))
    # two numbers in 1..2 reach at most 2*2 = 4 < 50: no puzzle exists
    with pytest.raises(ValueError, match="found only 0 of n=1 distinct puzzles"):
        countdown_dataset(1, num_numbers=2, number_range=(1, 2), target_range=(50, 60))


# --- templates and prompts ---------------------------------------------------------------------

def test_template_registry():
    assert prefill("countdown") == "Let me solve this step by step.\n<think>"
    assert TEMPLATES["choice"].prefill == prefill("countdown")
    with pytest.raises(ValueError, match=r"unknown template 'gsm8k'; known templates: "
                                         r"\['choice', 'countdown', 'math'\]"):
        get_template("gsm8k")


def test_countdown_prompt_is_the_seed_recipe(tokenizer):
    row = {"nums": [44, 19, 35], "target": 98}
    assert render_prompt(row, tokenizer) == (
        f"<|im_start|>system\n{SEED_SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nUsing the numbers [44, 19, 35], create an equation that equals 98. "
        "You can use basic arithmetic operations (+, -, *, /) one or multiple times but each "
        "number can only be used once. Show your work in <think> </think> tags. And return the "
        "final equation in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>. "
        "Think step by step inside <think> tags.<|im_end|>\n"
        "<|im_start|>assistant\nLet me solve this step by step.\n<think>")


def test_build_prompts_drops_and_counts_long_prompts(tokenizer):
    rows = Dataset.from_dict({"nums": [[1, 2, 3], [44, 19, 35, 77], [4, 5, 6]],
                              "target": [6, 98, 15], "solution": ["1+2+3", "x", "4+5+6"],
                              "prompt": ["old", "old", "old"]})
    built, dropped = build_prompts(rows, tokenizer)
    assert dropped == 0 and built["prompt"][0] == render_prompt(rows[0], tokenizer)
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in built["prompt"]]
    short = max(lengths[0], lengths[2])
    assert lengths[1] > short  # four two-digit numbers take more tokens
    kept, dropped = build_prompts(rows, tokenizer, max_prompt_length=short)
    assert dropped == 1 and kept["target"] == [6, 15]  # the long one is gone, not cut
    assert all(p.endswith(prefill("countdown")) for p in kept["prompt"])
    assert kept["solution"] == ["1+2+3", "4+5+6"]  # other columns ride along


def test_choice_template_language_and_letters(tokenizer):
    rows = Dataset.from_dict({"question": ["Capital of France?"], "choices": [["Rome", "Paris"]],
                              "answer": ["B"]})
    built, _ = build_prompts(rows, tokenizer, template="choice", language="French")
    prompt = built["prompt"][0]
    assert "Capital of France?\n\nA. Rome\nB. Paris\n" in prompt and "writing in French" in prompt
    assert prompt.endswith("<|im_start|>assistant\n" + prefill("choice"))


def test_build_prompts_bad_input(tokenizer):
    rows = Dataset.from_dict({"nums": [[1, 2]], "goal": [3]})
    with pytest.raises(ValueError, match=r"template 'countdown' needs column\(s\) \['target'\]"):
        build_prompts(rows, tokenizer)
    with pytest.raises(ValueError, match="unknown template 'nope'"):
        build_prompts(rows, tokenizer, template="nope")
    rows = rows.rename_column("goal", "target")
    with pytest.raises(ValueError, match="has no option"):
        build_prompts(rows, tokenizer, language="French")  # countdown has no language option
    with pytest.raises(ValueError, match="max_prompt_length must be a positive integer"):
        build_prompts(rows, tokenizer, max_prompt_length=0)


# --- real data ---------------------------------------------------------------------------------

def test_load_local_jsonl_and_parquet_with_column_map(tmp_path):
    path = tmp_path / "puzzles.jsonl"
    path.write_text("\n".join(json.dumps({"numbers": [1, 2, 3], "goal": g}) for g in (6, 5)))
    loaded = load_prompt_dataset(path, column_map={"numbers": "nums", "goal": "target"})
    assert loaded.column_names == ["nums", "target"] and loaded["target"] == [6, 5]
    countdown_dataset(4).to_parquet(tmp_path / "p.parquet")
    assert len(load_prompt_dataset(str(tmp_path / "p.parquet"), split="train[:3]")) == 3
    with pytest.raises(ValueError, match=r"column_map names column\(s\) \['nope'\]"):
        load_prompt_dataset(path, column_map={"nope": "nums"})
    with pytest.raises(ValueError, match="looks like a local file but does not exist"):
        load_prompt_dataset(tmp_path / "missing.jsonl")


def test_hub_name_offline_says_to_pass_a_local_path(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="pass a local JSON/JSONL/parquet path"):
        load_prompt_dataset("no-such-org/no-such-dataset")
