"""The Countdown recipe over several seeds, as a user runs it: `make countdown ARGS="--seed S"`.

    .venv/bin/python benchmarks/countdown_seeds.py --seeds 1-8            # the CPU recipe
    .venv/bin/python benchmarks/countdown_seeds.py --seeds 1-8 --name v2 -- --max_steps 60

Each seed runs `examples/countdown.py --seed S --output_dir runs/seeds/<name>/seed-S [extra]`
alone (two trainings at once on 2 cores slow each other down several-fold), one after another;
a seed whose run ended (its report printed) is read back, not rerun, so a stopped sweep resumes
where it stopped. Prints a per-seed table (held-out strict format and equation accuracy at step 0
and at the end, wall minutes) with the mean and spread, and draws the mean training curves with
their min-max band to runs/seeds/<name>/curves.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CURVES = ("rewards/format_reward/mean", "rewards/countdown_reward/mean",
          "rewards/countdown_numbers_reward/mean", "completion_length/mean")
# Training rewards whose early rise tests/test_countdown.py checks (`--window`).
RISES = ("rewards/partial_format_reward/mean", "rewards/format_reward/mean",
         "rewards/countdown_numbers_reward/mean", "rewards/countdown_reward/mean")


def parse_seeds(items: list[str]) -> list[int]:
    seeds = []
    for item in items:
        first, _, last = item.partition("-")
        seeds += list(range(int(first), int(last or first) + 1))
    return seeds


def run_seed(seed: int, out: Path, extra: list[str]) -> dict:
    done = out / "sweep.json"
    if done.exists():
        return json.loads(done.read_text())
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "examples" / "countdown.py"), "--seed", str(seed),
           "--output_dir", str(out), *extra]
    start = time.time()
    with open(out / "run.log", "w") as log:
        code = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"seed {seed} failed (exit {code}); see {out / 'run.log'}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/reward" in r]
    result = {"seed": seed, "minutes": (time.time() - start) / 60, "first": evals[0],
              "last": evals[-1], "train": [r for r in rows if "reward" in r]}
    done.write_text(json.dumps(result))
    return result


def table(results: list[dict]) -> str:
    keys = (("eval/format_reward", "format"), ("eval/countdown_reward", "equation"),
            ("eval/countdown_numbers_reward", "numbers"))
    keys = tuple(k for k in keys if all(k[0] in r["first"] for r in results))
    head = ["seed"] + [f"{n} {when}" for _, n in keys for when in ("step 0", "end")] + ["minutes"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results:
        cells = [str(r["seed"])] + [f"{r[when][k]:.3f}" for k, _ in keys
                                    for when in ("first", "last")] + [f"{r['minutes']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")

    def spread(values):
        return (f"{statistics.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"
                if values else "")

    cells = ["mean (min-max)"] + [spread([r[when][k] for r in results]) for k, _ in keys
                                  for when in ("first", "last")]
    lines.append("| " + " | ".join(cells + [spread([r["minutes"] for r in results])]) + " |")
    return "\n".join(lines)


def rises(results: list[dict], steps: int, window: int) -> str:
    """Per seed, each of RISES averaged over steps 1..window and steps-window+1..steps: what the
    slow example test (its first `steps` steps) can assert, and with what margin."""
    head = ["seed"] + [k.split("/")[1].removesuffix("_reward") for k in RISES]
    lines = [f"training rewards, mean of steps 1-{window} -> mean of steps "
             f"{steps - window + 1}-{steps}", "| " + " | ".join(head) + " |",
             "|" + " --- |" * len(head)]
    gains = {k: [] for k in RISES}
    for r in results:
        rows = {row["step"]: row for row in r["train"]}
        cells = [str(r["seed"])]
        for k in RISES:
            first = statistics.mean(rows[s].get(k, 0.0) for s in range(1, window + 1))
            last = statistics.mean(rows[s].get(k, 0.0) for s in range(steps - window + 1,
                                                                         steps + 1))
            gains[k].append(last - first)
            cells.append(f"{first:.2f} -> {last:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| rise: min (mean) | " + " | ".join(
        f"{min(g):+.2f} ({statistics.mean(g):+.2f})" for g in gains.values()) + " |")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.5 * len(CURVES), 4))
    for ax, key in zip(axes, CURVES):
        steps = sorted({r["step"] for res in results for r in res["train"]})
        per_step = [[row[key] for res in results for row in res["train"]
                     if row["step"] == s and key in row] for s in steps]
        ax.plot(steps, [statistics.mean(v) for v in per_step], label=f"mean of {len(results)}")
        ax.fill_between(steps, [min(v) for v in per_step], [max(v) for v in per_step],
                        alpha=0.25, label="min-max over seeds")
        ax.set(xlabel="step", title=key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", default=["1-8"])
    parser.add_argument("--name", default="recipe", help="runs/seeds/<name>/seed-S")
    parser.add_argument("--window", nargs=2, type=int, metavar=("STEPS", "WINDOW"),
                        default=(20, 4), help="the early-rise table: tests/test_countdown.py's")
    parser.add_argument("extra", nargs="*", help="examples/countdown.py options, after --")
    args = parser.parse_args()
    root = ROOT / "runs" / "seeds" / args.name
    results = []
    for seed in parse_seeds(args.seeds):
        results.append(run_seed(seed, root / f"seed-{seed}", args.extra))
        print(f"seed {seed}: {results[-1]['minutes']:.1f} min", flush=True)
    print(table(results))
    print(rises(results, *args.window))
    plot(results, root / "curves.png")
    print(f"curves: {root / 'curves.png'}")


if __name__ == "__main__":
    main()
