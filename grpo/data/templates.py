"""Chat prompts: a registry of templates (system message, user message, assistant prefill) and
`build_prompts`, which renders a data set's rows through the tokenizer's own chat template.

The prompt is three messages (system, user, and an assistant prefill such as Mini-R1's
"Let me solve this step by step.\\n<think>") rendered with `continue_final_message=True`, so the
model's text continues the prefill. Each template carries its prefill because the rewards score
the whole assistant message (the trainer prepends the prefill to each completion). A prompt
longer than `max_prompt_length` tokens is dropped and counted, never cut.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

from datasets import Dataset


R1_SYSTEM = ("You are a helpful assistant. You first thinks about the reasoning process in the "
             "mind and then provides the user with the answer.")  # Mini-R1's, grammar included
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
