"""Prompts and data: the Countdown generator, chat templates with a prefill, real data sets.

How we differ from the seed (mini-deepseek-r1), which loads Jiayi-Pan/Countdown-Tasks-3to4 from
the hub and maps a prompt function over it:

* Countdown puzzles are generated here, seeded and offline, shaped like Countdown-Tasks-3to4
  (3 or 4 numbers in 1..99, a target in 10..100), each with one stored solution that a solver
  found with +, *, non-negative - and exact / (every intermediate value a non-negative integer),
  using every number once. Knobs (`num_numbers`, `number_range`, `target_range`) make easy
  puzzles for small models. Puzzles are distinct ((sorted nums, target) never repeats), so
  `countdown_splits` has no puzzle in both train and test.
* The prompt is the seed's three messages (system, user, and the assistant prefill
  "Let me solve this step by step.\\n<think>") rendered with the tokenizer's own chat template and
  `continue_final_message=True`; templates live in a registry with their prefill, because the
  rewards score the whole assistant message (the trainer prepends the prefill to each completion).
* A prompt longer than `max_prompt_length` tokens is dropped and counted, never cut.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from datasets import Dataset, DatasetDict

# ---------------------------------------------------------------------------------------------
# Countdown puzzles


@lru_cache(maxsize=4096)  # ~14 KB each for 4 numbers: bounded memory
def solve_countdown(nums: tuple[int, ...]) -> dict[int, str]:
    """Every value reachable using each number exactly once, with one expression for each.

    Dynamic programming over subsets (bit masks): a subset's values combine two complementary
    sub-subsets' values with +, *, - (only when the result is >= 0) and / (only when exact), so
    every intermediate value is a non-negative integer, as in the game. Composite operands are
    parenthesised, so each expression reads unambiguously and evaluates exactly to its value.
    """
    k = len(nums)
    table: dict[int, dict[int, str]] = {1 << i: {n: str(n)} for i, n in enumerate(nums)}
    for mask in range(1, 1 << k):
        if mask in table:
            continue
        low = mask & -mask  # the split always puts the lowest number left: each pair once
        out: dict[int, str] = {}
        sub = (mask - 1) & mask
        while sub:
            if sub & low:
                for va, ea in table[sub].items():
                    for vb, eb in table[mask ^ sub].items():
                        _combine(out, va, _wrap(ea), vb, _wrap(eb))
            sub = (sub - 1) & mask
        table[mask] = out
    return table[(1 << k) - 1]


def _wrap(expression: str) -> str:
    return expression if expression.isdigit() else f"({expression})"


def _combine(out: dict[int, str], va: int, ea: str, vb: int, eb: str) -> None:
    out.setdefault(va + vb, f"{ea} + {eb}")
    out.setdefault(va * vb, f"{ea} * {eb}")
    if va >= vb:
        out.setdefault(va - vb, f"{ea} - {eb}")
    if vb >= va:
        out.setdefault(vb - va, f"{eb} - {ea}")
    if vb and va % vb == 0:
        out.setdefault(va // vb, f"{ea} / {eb}")
    if va and vb % va == 0:
        out.setdefault(vb // va, f"{eb} / {ea}")


def _check_range(name: str, value, low: int) -> tuple[int, int]:
    if (not isinstance(value, Sequence) or len(value) != 2
            or not all(isinstance(v, int) for v in value) or value[0] > value[1] or value[0] < low):
        raise ValueError(f"{name} must be (low, high) integers with {low} <= low <= high, "
                         f"got {value!r}")
    return value[0], value[1]


def countdown_dataset(
    n: int,
    seed: int = 0,
    num_numbers: int | Sequence[int] = (3, 4),
    number_range: tuple[int, int] = (1, 99),
    target_range: tuple[int, int] = (10, 100),
) -> Dataset:
    """`n` distinct solvable puzzles: columns nums (list[int]), target (int), solution (str).

    Each puzzle draws how many numbers (uniformly from `num_numbers`), the numbers (uniformly in
    `number_range`, inclusive, repeats allowed) and then a target uniformly among the values in
    `target_range` (inclusive) that the solver reaches; numbers with no such value are redrawn.
    Same arguments, same puzzles. Easy settings for a 135M model on CPU, for example:
    `num_numbers=3, number_range=(1, 20), target_range=(10, 40)`.
    """
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    counts = [num_numbers] if isinstance(num_numbers, int) else list(num_numbers)
    if not counts or not all(isinstance(c, int) and 2 <= c <= 6 for c in counts):
        raise ValueError(f"num_numbers must be an int or ints in 2..6, got {num_numbers!r}")
    lo, hi = _check_range("number_range", number_range, 1)
    tlo, thi = _check_range("target_range", target_range, 0)
    rng = random.Random(seed)
    rows: dict[str, list] = {"nums": [], "target": [], "solution": []}
    seen: set[tuple] = set()
    attempts, max_attempts = 0, 100 * n + 1000
    while len(seen) < n:
        attempts += 1
        if attempts > max_attempts:
            raise ValueError(f"found only {len(seen)} of n={n} distinct puzzles in {max_attempts} "
                             f"draws with num_numbers={num_numbers}, number_range={number_range}, "
                             f"target_range={target_range}: widen the ranges or ask for fewer")
        nums = [rng.randint(lo, hi) for _ in range(rng.choice(counts))]
        reachable = solve_countdown(tuple(sorted(nums)))
        targets = sorted(v for v in reachable if tlo <= v <= thi)
        if not targets:
            continue
        target = rng.choice(targets)
        key = (tuple(sorted(nums)), target)
        if key in seen:
            continue
        seen.add(key)
        rows["nums"].append(nums)
        rows["target"].append(target)
        rows["solution"].append(reachable[target])
    return Dataset.from_dict(rows)


def countdown_splits(num_train: int, num_test: int, seed: int = 0, **difficulty) -> DatasetDict:
    """"train" and "test" Countdown sets with no puzzle in both (all puzzles are distinct).

    The test set is drawn first, so it stays the same when only `num_train` changes.
    """
    for name, value in (("num_train", num_train), ("num_test", num_test)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    puzzles = countdown_dataset(num_test + num_train, seed=seed, **difficulty)
    return DatasetDict(test=puzzles.select(range(num_test)),
                       train=puzzles.select(range(num_test, num_test + num_train)))


# ---------------------------------------------------------------------------------------------
# Prompt templates

R1_SYSTEM = ("You are a helpful assistant. You first thinks about the reasoning process in the "
             "mind and then provides the user with the answer.")  # the seed's, grammar included
R1_PREFILL = "Let me solve this step by step.\n<think>"


def _countdown_user(row: Mapping, **_options) -> str:
    nums = [int(x) for x in row["nums"]]
    return (f"Using the numbers {nums}, create an equation that equals {int(row['target'])}. "
            "You can use basic arithmetic operations (+, -, *, /) one or multiple times but each "
            "number can only be used once. Show your work in <think> </think> tags. And return "
            "the final equation in <answer> </answer> tags, for example <answer> (1 + 2) / 3 "
            "</answer>. Think step by step inside <think> tags.")


def _choice_user(row: Mapping, language: str = "English", **_options) -> str:
    question = str(row["question"]).strip()
    choices = row.get("choices")
    if choices:
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        question += "\n\n" + "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(choices))
    return (f"{question}\n\nThink about the question in <think> </think> tags, writing in "
            f"{language}. Then return only the letter of the correct option in <answer> </answer> "
            "tags, for example <answer> B </answer>.")


def _math_user(row: Mapping, **_options) -> str:
    return (f"{str(row['question']).strip()}\n\nShow your work in <think> </think> tags. And "
            "return only the final answer in <answer> </answer> tags, for example "
            "<answer> \\frac{1}{2} </answer>.")


@dataclass(frozen=True)
class PromptTemplate:
    """A chat prompt: system message, a user message rendered from a row, an assistant prefill."""

    name: str
    system: str
    user: Callable[..., str]  # (row, **options) -> the user message
    prefill: str  # starts the assistant message; rewards see prefill + completion
    columns: tuple[str, ...]  # dataset columns `user` reads
    options: Mapping[str, object] = field(default_factory=dict)  # defaults of the options

    def messages(self, row: Mapping, **options) -> list[dict[str, str]]:
        unknown = set(options) - set(self.options)
        if unknown:
            raise ValueError(f"template {self.name!r} has no option(s) {sorted(unknown)}; "
                             f"its options are {sorted(self.options)}")
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": self.user(row, **{**self.options, **options})},
                {"role": "assistant", "content": self.prefill}]


TEMPLATES: dict[str, PromptTemplate] = {
    "countdown": PromptTemplate("countdown", R1_SYSTEM, _countdown_user, R1_PREFILL,
                                ("nums", "target")),
    "choice": PromptTemplate("choice", R1_SYSTEM, _choice_user, R1_PREFILL, ("question",),
                             {"language": "English"}),
    "math": PromptTemplate("math", R1_SYSTEM, _math_user, R1_PREFILL, ("question",)),
}


def get_template(template: str | PromptTemplate) -> PromptTemplate:
    if isinstance(template, PromptTemplate):
        return template
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; known templates: {sorted(TEMPLATES)}")
    return TEMPLATES[template]


def prefill(template: str | PromptTemplate = "countdown") -> str:
    """The assistant prefill of a template: prepend it to each completion before rewarding."""
    return get_template(template).prefill


def render_prompt(row: Mapping, tokenizer, template: str | PromptTemplate = "countdown",
                  **options) -> str:
    """One row as the chat template renders it, ending in the open assistant prefill."""
    tpl = get_template(template)
    text = tokenizer.apply_chat_template(tpl.messages(row, **options), tokenize=False,
                                         continue_final_message=True)
    if not text.endswith(tpl.prefill.rstrip()):
        raise ValueError(f"the tokenizer's chat template does not end the prompt with template "
                         f"{tpl.name!r}'s prefill {tpl.prefill!r} (it ends {text[-40:]!r})")
    return text


def build_prompts(
    dataset: Dataset,
    tokenizer,
    template: str | PromptTemplate = "countdown",
    max_prompt_length: int | None = None,
    **options,
) -> tuple[Dataset, int]:
    """Add a "prompt" column (replacing one that exists); drop rows over `max_prompt_length`.

    Returns (the dataset, how many rows were dropped). Lengths are counted in tokens of the
    rendered text without adding special tokens again (the chat template already holds them),
    which is how the sampler tokenises a prompt string. `options` go to the template (e.g.
    `language="French"` for "choice").
    """
    tpl = get_template(template)
    missing = [c for c in tpl.columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"template {tpl.name!r} needs column(s) {missing}; the dataset has "
                         f"{dataset.column_names}")
    if max_prompt_length is not None and (not isinstance(max_prompt_length, int)
                                          or max_prompt_length < 1):
        raise ValueError(f"max_prompt_length must be a positive integer or None, "
                         f"got {max_prompt_length!r}")
    readable = [c for c in dataset.column_names if c in tpl.columns or c == "choices"]
    prompts = [render_prompt(row, tokenizer, tpl, **options)
               for row in dataset.select_columns(readable)]
    if "prompt" in dataset.column_names:
        dataset = dataset.remove_columns("prompt")
    dataset = dataset.add_column("prompt", prompts)
    if max_prompt_length is None:
        return dataset, 0
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    keep = [i for i, length in enumerate(lengths) if length <= max_prompt_length]
    dropped = len(prompts) - len(keep)
    return (dataset.select(keep) if dropped else dataset), dropped


# ---------------------------------------------------------------------------------------------
# Real data

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


def load_prompt_dataset(
    path_or_name: str | Path,
    split: str = "train",
    column_map: Mapping[str, str] | None = None,
) -> Dataset:
    """A data set from a local JSON/JSONL/parquet/CSV file or folder, or a hub name (online).

    `column_map` renames columns, {"numbers": "nums"}, so any source fits a template and the
    rewards. A local file is one split named "train" (slices such as "train[:100]" work).
    """
    from datasets import load_dataset

    path = Path(path_or_name)
    if path.exists():
        if path.is_dir():
            dataset = load_dataset(str(path), split=split)
        elif path.suffix.lower() in _FILE_BUILDERS:
            dataset = load_dataset(_FILE_BUILDERS[path.suffix.lower()],
                                   data_files={"train": str(path)}, split=split)
        else:
            raise ValueError(f"path_or_name {str(path)!r} has suffix {path.suffix!r}; "
                             f"local files must be one of {sorted(_FILE_BUILDERS)}")
    elif path.suffix.lower() in _FILE_BUILDERS or str(path_or_name).startswith((".", "/", "~")):
        raise ValueError(f"path_or_name {str(path_or_name)!r} looks like a local file but does "
                         "not exist")
    else:
        try:
            dataset = load_dataset(str(path_or_name), split=split)
        except Exception as exc:  # noqa: BLE001 - offline, unknown name, gated: one clear message
            raise ValueError(
                f"could not load {str(path_or_name)!r} (split {split!r}) from the Hugging Face "
                f"hub: {type(exc).__name__}: {exc}. Offline, pass a local JSON/JSONL/parquet "
                "path instead") from exc
    return _rename(dataset, column_map)


def _rename(dataset: Dataset, column_map: Mapping[str, str] | None) -> Dataset:
    if not column_map:
        return dataset
    missing = [c for c in column_map if c not in dataset.column_names]
    if missing:
        raise ValueError(f"column_map names column(s) {missing} that the dataset lacks; it has "
                         f"{dataset.column_names}")
    clash = [new for old, new in column_map.items()
             if new in dataset.column_names and new not in column_map and new != old]
    if clash:
        raise ValueError(f"column_map would overwrite existing column(s) {clash}")
    return dataset.rename_columns(dict(column_map))
