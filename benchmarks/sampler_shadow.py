"""Do the two samplers draw alike on the weights a real run visits? A shadow sampler per step.

    .venv/bin/python benchmarks/sampler_shadow.py --seed 1 --steps 8 [--sampler vllm]

The GRPOTrainer loop of the CPU recipe runs as usual with `--sampler` (vllm or hf). Before each
training step the other sampler ("shadow") gets the step's weights through `load_weights` and
draws the same prompts with another seed; only the main sampler's rollouts are trained on. The
table gives both samplers' mean reward, length and truncated fraction per step, and the paired
mean difference over steps with its standard error. sampler_rewards.py does this on fixed
weights (the base model, a checkpoint); this one follows the weights training produces.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from grpo import components  # noqa: E402
from grpo.config import GRPOConfig  # noqa: E402
from grpo.trainer import GRPOTrainer, _repeat  # noqa: E402

SHADOW_SEED = 10**6  # added to the main call's seed


def summary(trainer, rollouts, columns) -> dict[str, float]:
    rewards = trainer.reward_set([trainer.prefill + t for t in rollouts.texts], **columns)
    return {"reward": rewards.total.mean().item(),
            "tokens": rollouts.completion_lengths.float().mean().item(),
            "truncated": rollouts.truncated.float().mean().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "recipes" / "countdown-cpu.yaml"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--sampler", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("--workdir")
    args = parser.parse_args()
    out = Path(args.workdir or tempfile.mkdtemp(prefix="sampler_shadow_"))
    shadow_kind = "hf" if args.sampler == "vllm" else "vllm"
    config = GRPOConfig.from_args([
        "--config", args.config, "--seed", str(args.seed), "--max_steps", str(args.steps),
        "--eval_steps", "0", "--save_steps", "0", "--log_completions_steps", "0",
        "--report_to", "none", "--output_dir", str(out), "--sampler", args.sampler])
    trainer = GRPOTrainer(config)
    shadow = components.sampler(GRPOConfig.from_dict({**config.to_dict(),
                                                      "sampler": shadow_kind}), trainer.model_path)
    position = {p: i for i, p in enumerate(trainer.train_dataset["prompt"])}
    sample, records = trainer.sampler.sample, []

    def sample_with_shadow(prompts, **kw):
        rollouts = sample(prompts, **kw)
        if kw.get("group_size") is None:  # a training call, not an evaluation
            shadow.load_weights(trainer.engine.named_weights())
            drawn = shadow.sample(prompts, seed=kw["seed"] + SHADOW_SEED)
            rows = trainer.train_dataset[[position[p] for p in prompts]]
            columns = _repeat(rows, config.num_generations, exclude=("prompt",))
            records.append({args.sampler: summary(trainer, rollouts, columns),
                            shadow_kind: summary(trainer, drawn, columns)})
            print(json.dumps({"step": len(records), **records[-1]}), flush=True)
        return rollouts

    trainer.sampler.sample = sample_with_shadow
    trainer.train()
    shadow.close()

    print(f"\ntraining on {args.sampler}, seed {args.seed}; shadow {shadow_kind} on the same weights")
    print(f"| step | {args.sampler} reward | {shadow_kind} reward | {args.sampler} tokens | "
          f"{shadow_kind} tokens | {args.sampler} truncated | {shadow_kind} truncated |")
    print("|---|---|---|---|---|---|---|")
    for step, r in enumerate(records, start=1):
        a, b = r[args.sampler], r[shadow_kind]
        print(f"| {step} | {a['reward']:.3f} | {b['reward']:.3f} | {a['tokens']:.1f} | "
              f"{b['tokens']:.1f} | {a['truncated']:.2f} | {b['truncated']:.2f} |")
    for key in ("reward", "tokens", "truncated"):
        diffs = [r[args.sampler][key] - r[shadow_kind][key] for r in records]
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
        print(f"{key}: {args.sampler} - {shadow_kind} = {statistics.mean(diffs):+.3f} +- {se:.3f}"
              " (mean over steps, standard error)")


if __name__ == "__main__":
    main()
