"""Does a setting change the reward trend? Short training runs over many seeds, per arm.

    .venv/bin/python benchmarks/trend_seeds.py --seeds 1 2 3 4 --arms vllm:sampler=vllm hf:sampler=hf
    .venv/bin/python benchmarks/trend_seeds.py --seeds 1-8 --arms vllm:vllm_dtype=bfloat16 \
        tis:vllm_dtype=bfloat16,tis_cap=2 --steps 8

Each arm is `name:KEY=VALUE,...` (GRPOConfig overrides on top of the CPU recipe). Every (arm, seed)
runs `python -m grpo.trainer` alone (two trainings at once on 2 cores run ~8x slower each),
interleaved seed by seed so that machine drift hits all arms alike. A run whose metrics.jsonl
already holds every step is reused, so the sweep can be stopped and restarted. The table gives
each arm's reward per step (mean over seeds), the per-seed score (mean reward of the last half of
the steps: less noisy than the last step alone) and, for every arm against the first, the exact
Mann-Whitney test on those scores and the paired sign test over seeds (same seed = same puzzles in
every arm), one-sided in the direction seen and two-sided (the one to quote when no direction was
named before the sweep).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_seeds(items: list[str]) -> list[int]:
    seeds = []
    for item in items:
        first, _, last = item.partition("-")
        seeds += list(range(int(first), int(last or first) + 1))
    return seeds


def parse_arm(text: str) -> tuple[str, list[str]]:
    name, _, settings = text.partition(":")
    if not name or not settings:
        raise SystemExit(f"--arms: expected name:KEY=VALUE[,KEY=VALUE], got {text!r}")
    return name, [f"--{kv}" for kv in settings.split(",")]


def read_steps(out: Path) -> list[dict]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if "reward" in r]


def train(args, arm: str, overrides: list[str], seed: int) -> list[dict]:
    out = Path(args.workdir) / arm / f"seed{seed}"
    steps = read_steps(out)
    if len(steps) >= args.steps:
        return steps[:args.steps]
    cmd = [sys.executable, "-m", "grpo.trainer", "--config", args.config, "--seed", str(seed),
           "--max_steps", str(args.steps), "--eval_steps", "0", "--save_steps", "0",
           "--log_completions_steps", "1", "--report_to", "none", "--output_dir", str(out),
           *overrides, *args.set]
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with (out / "log.txt").open("w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    steps = read_steps(out)
    print(f"{arm} seed {seed}: rc {rc}, {len(steps)} steps, {time.time() - start:.0f} s, "
          f"last reward {steps[-1]['reward'] if steps else float('nan'):.3f}", flush=True)
    if rc != 0 or len(steps) < args.steps:
        raise SystemExit(f"{arm} seed {seed} failed (rc {rc}); see {out / 'log.txt'}")
    return steps


def mann_whitney_p(better: list[float], worse: list[float]) -> tuple[float, float]:
    """U / (n m) and the exact one-sided p of U >= observed (all splits of the pooled values)."""
    def u(a, b):
        return sum((x > y) + 0.5 * (x == y) for x in a for y in b)

    observed = u(better, worse)
    pooled, n = better + worse, len(better)
    count = total = 0
    for picked in itertools.combinations(range(len(pooled)), n):
        chosen = set(picked)
        a = [pooled[i] for i in picked]
        b = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        total += 1
        count += u(a, b) >= observed - 1e-9
    return observed / (n * len(worse)), count / total


def sign_test_p(wins: int, losses: int) -> float:
    """One-sided: P(at least `wins` of wins + losses fair coin flips)."""
    n = wins + losses
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2 ** n if n else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "recipes" / "countdown-cpu.yaml"))
    parser.add_argument("--arms", nargs="+", required=True, help="name:KEY=VALUE,...")
    parser.add_argument("--seeds", nargs="+", default=["1-4"], help="e.g. 1 2 3 or 1-8")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--set", nargs="*", default=[], help="--KEY=VALUE for every arm")
    parser.add_argument("--workdir", default=str(ROOT / "runs" / "trend_seeds"))
    args = parser.parse_args()
    args.set = [s if s.startswith("--") else f"--{s}" for s in args.set]
    arms = [parse_arm(a) for a in args.arms]
    seeds = parse_seeds(args.seeds)

    results = {name: {} for name, _ in arms}
    for seed in seeds:
        for name, overrides in arms:
            results[name][seed] = train(args, name, overrides, seed)

    half = args.steps // 2
    score = {name: {s: statistics.mean(r["reward"] for r in runs[s][half:]) for s in seeds}
             for name, runs in results.items()}
    print(f"\nreward per step, mean over seeds {seeds} (completion tokens at first -> last step)")
    print("| step | " + " | ".join(name for name, _ in arms) + " |")
    print("|---|" + "---|" * len(arms))
    for step in range(args.steps):
        cells = [f"{statistics.mean(results[n][s][step]['reward'] for s in seeds):.3f}"
                 for n, _ in arms]
        print(f"| {step + 1} | " + " | ".join(cells) + " |")
    for name, _ in arms:
        first = statistics.mean(results[name][s][0]["completion_length/mean"] for s in seeds)
        last = statistics.mean(results[name][s][-1]["completion_length/mean"] for s in seeds)
        print(f"{name}: tokens {first:.0f} -> {last:.0f}; step-{args.steps} reward per seed "
              + " ".join(f"{results[name][s][-1]['reward']:.2f}" for s in seeds)
              + f"; score (mean of steps {half + 1}-{args.steps}) per seed "
              + " ".join(f"{score[name][s]:.2f}" for s in seeds)
              + f", mean {statistics.mean(score[name].values()):.3f}")
    base = arms[0][0]
    for name, _ in arms[1:]:
        a, b = [score[base][s] for s in seeds], [score[name][s] for s in seeds]
        hi, lo = (a, b) if statistics.mean(a) >= statistics.mean(b) else (b, a)
        ahead = base if hi is a else name
        u, p = mann_whitney_p(hi, lo)
        wins = sum(x > y for x, y in zip(hi, lo))
        losses = sum(x < y for x, y in zip(hi, lo))
        sign_p = sign_test_p(wins, losses)
        print(f"{ahead} ahead of {name if ahead == base else base}: Mann-Whitney U/nm = {u:.2f}, "
              f"exact one-sided p = {p:.3f} (two-sided {min(1.0, 2 * p):.3f}); paired by seed "
              f"{wins} wins / {losses} losses, sign test one-sided p = {sign_p:.3f} "
              f"(two-sided {min(1.0, 2 * sign_p):.3f})")


if __name__ == "__main__":
    main()
