"""The DeepSeek-R1 "aha moment" recipe on Countdown, top to bottom.

    python examples/countdown.py                       # CPU default: recipes/countdown-cpu.yaml
    python examples/countdown.py --max_steps 10        # any GRPOConfig key overrides the recipe
    torchrun --nproc_per_node 4 examples/countdown.py --config recipes/qwen2.5-3b-gpu.yaml

Countdown: reach a target with + - * / using each given number once. The model is prompted to
think inside <think>…</think> and answer inside <answer>…</answer>; two rule-based rewards score
it (the format, and whether the equation is right). GRPO samples G answers per puzzle, rewards
each against its group, and moves the policy toward the better ones. What to watch: the format
reward rises first, then the equation reward, and on larger models the thinking gets longer.

How the CPU default differs from Mini-R1's GPU recipe (Qwen2.5-3B, 450 steps): a 135M model,
easy puzzles (2-3 numbers in 1..10), 128-token completions at temperature 0.7, no KL penalty
(beta = 0 loads no reference model), lr 3e-5, 50 steps, dynamic sampling, and two shaping
rewards beside Mini-R1's two: partial_format, because the base model almost never writes the
whole format and GRPO cannot learn from groups that all score 0, and countdown_numbers, because
it almost never uses the puzzle's numbers. Over seeds 1-8 the format is learned on every seed
and the answers start to use the numbers, but equation accuracy stays near 0: the 135M model
collapses onto one answer per puzzle first (benchmarks/RESULTS.md). A run takes 10-15 minutes
on 2 cores. Everything below is the library's public API: replace any piece with your own.
"""

import sys
from pathlib import Path

from grpo import from_config
from grpo.cli import parse_config
from grpo.data import TEMPLATES, build_prompts, countdown_splits
from grpo.rewards import (OverlongPenalty, RewardSet, countdown_numbers_reward, countdown_reward,
                          countdown_strict_reward, format_reward, partial_format_reward)
from grpo.tracking import read_metrics
from grpo.trainer import GRPOTrainer

CPU_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "countdown-cpu.yaml"


def main(argv: list[str]) -> None:
    # 1. Configuration: a recipe (YAML) with command-line overrides.
    if "--config" not in argv and not any(a.startswith("--config=") for a in argv):
        argv = ["--config", str(CPU_RECIPE), *argv]
    config = parse_config(argv, prog="examples/countdown.py")
    model = from_config.model_path(config)  # the packaged SmolLM2-135M-Instruct by default
    tokenizer = from_config.tokenizer(model)

    # 2. Data: puzzles generated locally (seeded), split so no puzzle is in both.
    splits = countdown_splits(config.num_train, config.num_test, seed=config.seed,
                              num_numbers=tuple(config.countdown_num_numbers),
                              number_range=tuple(config.countdown_number_range),
                              target_range=tuple(config.countdown_target_range))

    # 3. Prompts: system message, the puzzle, and the assistant prefill
    #    "Let me solve this step by step.\n<think>", through the model's own chat template.
    train, dropped = build_prompts(splits["train"], tokenizer, template="countdown",
                                   max_prompt_length=config.max_prompt_length)
    test, _ = build_prompts(splits["test"], tokenizer, template="countdown",
                            max_prompt_length=config.max_prompt_length)
    print(f"{len(train)} training puzzles ({dropped} dropped as too long), {len(test)} held out")
    print("example prompt:\n" + train[0]["prompt"])

    # 4. Rewards: each sees the whole assistant message (prefill + completion) and the puzzle.
    #    The CPU default adds partial_format (0.2 per rule of the format kept): a 135M model
    #    almost never writes the whole format at first, and GRPO learns nothing from a group
    #    whose rewards are all equal.
    #    countdown_numbers is shaping (credit for building the answer from the puzzle's
    #    numbers); overlong is DAPO's length penalty near max_completion_length.
    available = {"format": format_reward, "partial_format": partial_format_reward,
                 "countdown": countdown_reward, "countdown_strict": countdown_strict_reward,
                 "countdown_numbers": countdown_numbers_reward,
                 "overlong": OverlongPenalty(config.max_completion_length,
                                             config.overlong_buffer
                                             or max(1, config.max_completion_length // 4))}
    if unknown := sorted(set(config.rewards) - set(available)):
        print(f"error: rewards {unknown} do not apply to Countdown; use {sorted(available)}",
              file=sys.stderr)
        raise SystemExit(2)
    rewards = RewardSet([available[name] for name in config.rewards], weights=config.reward_weights)

    # 5. The trainer (engine.train_step) and the sampler (vLLM) hold a copy of the policy each;
    #    after every step the new weights are pushed into the running vLLM engine.
    engine = from_config.engine(config, model)
    sampler = from_config.sampler(config, model)

    # 6. The loop: sample G completions per puzzle -> rewards -> group advantages ->
    #    one GRPO step -> weight sync; with greedy evaluation on held-out puzzles before, every
    #    eval_steps, and after, and checkpoints to resume from.
    trainer = GRPOTrainer(config, train_dataset=train, eval_dataset=test, reward_set=rewards,
                          sampler=sampler, engine=engine,
                          prefill=TEMPLATES["countdown"].prefill)
    trainer.train()
    if trainer.rank == 0:
        report(config.output_dir)


def report(output_dir: str) -> None:
    """Before/after evaluation, the reward curves as a PNG, and where everything went."""
    rows = read_metrics(output_dir)
    evals = [r for r in rows if "eval/reward" in r]
    train = [r for r in rows if "reward" in r]
    if evals:
        first, last = evals[0], evals[-1]
        for key in sorted(k for k in first if k.startswith("eval/")):
            print(f"{key:28s} step {first['step']:>4}: {first[key]:.3f}   "
                  f"step {last['step']:>4}: {last[key]:.3f}")
    png = Path(output_dir) / "curves.png"
    plot(train, png)
    print(f"\nmetrics:     {Path(output_dir) / 'metrics.jsonl'}\n"
          f"completions: {Path(output_dir) / 'completions.jsonl'}\n"
          f"tensorboard: tensorboard --logdir {Path(output_dir) / 'tensorboard'}\n"
          f"curves:      {png}\n"
          f"checkpoints: {output_dir}/checkpoint-*  (python examples/chat.py --model <one>)")


def plot(rows: list[dict], path: Path, window: int = 5) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def smooth(values):
        return [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                for i in range(len(values))]

    steps = [r["step"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key in sorted(k for k in rows[0] if k.startswith("rewards/") and k.endswith("/mean")):
        values = [r[key] for r in rows]
        ax1.plot(steps, values, alpha=0.25)
        ax1.plot(steps, smooth(values), label=f"{key} ({window}-step mean)",
                 color=ax1.lines[-1].get_color())
    ax1.set(xlabel="step", ylabel="mean reward", title="Rewards")
    ax1.legend()
    lengths = [r["completion_length/mean"] for r in rows]
    ax2.plot(steps, lengths, alpha=0.25)
    ax2.plot(steps, smooth(lengths), color=ax2.lines[-1].get_color())
    ax2.set(xlabel="step", ylabel="tokens", title="Mean completion length")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main(sys.argv[1:])
