"""What a model writes on Countdown, before or after training: where the recipe stands.

    .venv/bin/python benchmarks/countdown_probe.py                      # the packaged base model
    .venv/bin/python benchmarks/countdown_probe.py --model runs/countdown-cpu/checkpoint-30

For each puzzle size, G samples of each of `--puzzles` generated puzzles (seeded, the recipe's
ranges, prompt and temperature; recipes/countdown-cpu.yaml unless --config), then the share of
completions that keep the strict format, whose answer is a well-formed expression using some /
all of the puzzle's numbers (the `countdown_numbers` shaping reward > 0 / = 1), that solve the
puzzle (`countdown`, `expression = target` accepted) and that are cut at the length limit; how
many groups have any signal (not all G alike) for each reward; the most common answers.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from grpo import from_config
from grpo.cli import parse_config
from grpo.data import TEMPLATES, build_prompts, countdown_splits
from grpo.rewards import (countdown_numbers_reward, countdown_reward, extract_answer,
                          format_reward)

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "countdown-cpu.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(RECIPE))
    parser.add_argument("--model", default=None, help="a checkpoint (default: the recipe's)")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--puzzles", type=int, default=64, help="per puzzle size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 3])
    args = parser.parse_args()
    overrides = ["--config", args.config, "--vllm_kv_cache_gb", "2"]
    if args.model:
        overrides += ["--model", args.model]
    if args.temperature is not None:
        overrides += ["--temperature", str(args.temperature)]
    config = parse_config(overrides)
    path = from_config.model_path(config)
    tok = from_config.tokenizer(path)
    sampler = from_config.sampler(config, path)
    g, prefill = config.num_generations, TEMPLATES["countdown"].prefill
    for size in args.sizes:
        split = countdown_splits(args.puzzles, 1, seed=7, num_numbers=(size,),
                                 number_range=tuple(config.countdown_number_range),
                                 target_range=tuple(config.countdown_target_range))["train"]
        rows, _ = build_prompts(split, tok, template="countdown",
                                max_prompt_length=config.max_prompt_length)
        out = sampler.sample([r["prompt"] for r in rows], seed=5)
        texts = [prefill + t for t in out.texts]
        nums = [rows[i // g]["nums"] for i in range(len(texts))]
        target = [rows[i // g]["target"] for i in range(len(texts))]
        scores = {"format": format_reward(texts),
                  "numbers": countdown_numbers_reward(texts, nums=nums),
                  "solved": countdown_reward(texts, nums=nums, target=target)}
        n = len(texts)

        def share(values) -> str:
            return f"{sum(values) / n:.3f}"

        print(f"== {size} numbers: {len(rows)} puzzles x G = {g}, temperature "
              f"{config.temperature}, {path}")
        print(f"strict format {share(scores['format'])}  numbers > 0 "
              f"{share([s > 0 for s in scores['numbers']])}  numbers = 1 "
              f"{share([s == 1 for s in scores['numbers']])}  solved {share(scores['solved'])}  "
              f"truncated {share(out.truncated.tolist())}")
        signal = {k: sum(len(set(v[i * g:(i + 1) * g])) > 1 for i in range(len(rows)))
                  for k, v in scores.items()}
        print("groups with signal: " + "  ".join(f"{k} {v}" for k, v in signal.items()))
        answers = Counter(str(extract_answer(t))[:40] for t in texts)
        print("most common answers:", answers.most_common(8))


if __name__ == "__main__":
    main()
