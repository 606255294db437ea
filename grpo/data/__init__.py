"""Prompts and data: Countdown puzzles (`countdown.py`), chat templates with an assistant prefill
(`templates.py`), and loading real data sets (`loading.py`)."""

from grpo.data.countdown import countdown_dataset, countdown_splits, solve_countdown
from grpo.data.loading import load_prompt_dataset
from grpo.data.templates import (R1_PREFILL, R1_SYSTEM, TEMPLATES, PromptTemplate, build_prompts,
                                 get_template, prefill, render_prompt)

__all__ = ["R1_PREFILL", "R1_SYSTEM", "TEMPLATES", "PromptTemplate", "build_prompts",
           "countdown_dataset", "countdown_splits", "get_template", "load_prompt_dataset",
           "prefill", "render_prompt", "solve_countdown"]
