"""Do the samplers draw completions that score the same? Many draws, untrained or trained weights.

    .venv/bin/python benchmarks/sampler_rewards.py [--prompts 16] [--group 16] [--seeds 1 2]
        [--weights runs/x/checkpoint-8]

trl_compare.py's reward curves are 16 completions a step and noisy; this asks the question that
decides whether their trends can differ for a reason other than chance: before any update, does
VLLMSampler (dtype "auto": bf16 on a CPU with AVX-512 BF16, else fp32; and fp32 explicitly) draw
completions whose rewards, lengths and truncation match HFSampler's (transformers `generate` in
fp32, which is what TRL's GRPOTrainer runs here, token for token: see RESULTS.md)?

The CPU recipe's settings (prompt rendering, 128 tokens, temperature 0.7, the three rewards).
Every sampler gets the same prompts: the first `--prompts` puzzles of grpo's training order for
each seed. Differences to HF are paired by prompt; their standard error is over prompts (the
completions of one prompt are not independent draws of the whole population).
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grpo import components  # noqa: E402
from grpo.config import GRPOConfig  # noqa: E402
from grpo.trainer import prompt_indices  # noqa: E402


def draw(name: str, config: GRPOConfig, path: str, prompts: list[str], G: int, seed: int,
         weights: str | None = None):
    """Sampler `name` ("hf", "vllm-auto", "vllm-float32", ...) as the trainer builds it; with
    `weights` (a checkpoint directory) it then takes them through `load_weights`, as after a
    training step."""
    sampler_kind, _, dtype = name.partition("-")
    config = GRPOConfig.from_dict({
        **config.to_dict(), "sampler": sampler_kind, "vllm_dtype": dtype or "auto", "seed": seed,
        "num_generations": G, "per_device_train_batch_size": G,
        "gradient_accumulation_steps": 1})
    sampler = components.sampler(config, path)
    if weights:
        from safetensors.torch import load_file

        sampler.load_weights(load_file(str(Path(weights) / "model.safetensors")).items())
    start = time.perf_counter()
    # In chunks of the recipe's step size (2 prompts), as the trainer calls it.
    chunks = [sampler.sample(prompts[i:i + 2], seed=seed * 1000 + i)
              for i in range(0, len(prompts), 2)]
    seconds = time.perf_counter() - start
    sampler.close()
    del sampler
    gc.collect()
    texts = [t for r in chunks for t in r.texts]
    ids = [row[:n] for r in chunks
           for row, n in zip(r.completion_ids.tolist(), r.completion_lengths.tolist())]
    lengths = torch.cat([r.completion_lengths for r in chunks]).float()
    truncated = torch.cat([r.truncated for r in chunks]).float()
    return texts, ids, lengths, truncated, seconds


def per_prompt(values: torch.Tensor, G: int) -> torch.Tensor:
    return values.view(-1, G).mean(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "recipes" / "countdown-cpu.yaml"))
    parser.add_argument("--prompts", type=int, default=16, help="puzzles per seed")
    parser.add_argument("--group", type=int, default=16, help="completions per puzzle")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--samplers", nargs="+", default=["hf", "vllm-auto", "vllm-float32"])
    parser.add_argument("--weights", help="a checkpoint directory (e.g. runs/x/checkpoint-8): "
                        "compare the samplers on trained weights, pushed with load_weights")
    args = parser.parse_args()

    base = GRPOConfig.from_args(["--config", args.config])
    path = components.model_path(base)
    tok = components.tokenizer(path)
    G = args.group
    stats: dict[str, dict[str, list[torch.Tensor]]] = {}
    seconds: dict[str, float] = {}
    for seed in args.seeds:
        config = GRPOConfig.from_dict({**base.to_dict(), "seed": seed})
        train, _, prefill = components.datasets(config, tok)
        order = [i for step in range(math.ceil(args.prompts / config.prompts_per_step))
                 for i in prompt_indices(step, len(train), config.prompts_per_step, seed)]
        rows = train[order[:args.prompts]]
        reward_set = components.reward_set(config)
        for name in args.samplers:
            texts, ids, lengths, truncated, secs = draw(name, config, path, rows["prompt"], G,
                                                        seed, args.weights)
            # The sampler's own text against the tokenizer's decoding of its token ids.
            decoded = tok.batch_decode(ids, skip_special_tokens=True)
            differ = sum(a != b for a, b in zip(texts, decoded))
            if differ:
                first = next(i for i, (a, b) in enumerate(zip(texts, decoded)) if a != b)
                print(f"{name}: {differ} texts differ from the decoded ids, e.g. "
                      f"{texts[first][-80:]!r} vs {decoded[first][-80:]!r}")
            rewards = reward_set([prefill + t for t in texts],
                                 nums=[n for n in rows["nums"] for _ in range(G)],
                                 target=[t for t in rows["target"] for _ in range(G)])
            s = stats.setdefault(name, {})
            for key, values in [("reward", rewards.total), *rewards.per_function.items(),
                                ("length", lengths), ("truncated", truncated)]:
                s.setdefault(key, []).append(per_prompt(values.float().nan_to_num(0.0), G))
            seconds[name] = seconds.get(name, 0.0) + secs
            print(f"seed {seed} {name}: reward {rewards.total.mean():.4f} length "
                  f"{lengths.mean():.1f} truncated {truncated.mean():.3f} ({secs:.0f} s)",
                  flush=True)

    keys = list(next(iter(stats.values())))
    n = args.prompts * len(args.seeds)
    print(f"\n{n} prompts x {G} completions per sampler (seeds {args.seeds}); "
          "mean +- standard error over prompts; vs hf: paired difference by prompt\n")
    print("| sampler | " + " | ".join(keys) + " | seconds |")
    print("|---" * (len(keys) + 2) + "|")
    for name, s in stats.items():
        cells = []
        for key in keys:
            v = torch.cat(s[key])
            cell = f"{v.mean():.3f} +- {v.std() / math.sqrt(len(v)):.3f}"
            if name != "hf" and "hf" in stats:
                d = v - torch.cat(stats["hf"][key])
                cell += f" (vs hf {d.mean():+.3f} +- {d.std() / math.sqrt(len(d)):.3f})"
            cells.append(cell)
        print(f"| {name} | " + " | ".join(cells) + f" | {seconds[name]:.0f} |")


if __name__ == "__main__":
    main()
