"""grpo against TRL's GRPOTrainer on the same Countdown work, in one run, with one table.

    .venv/bin/python benchmarks/trl_compare.py --steps 8            # all three runs
    .venv/bin/python benchmarks/trl_compare.py --steps 8 --runs trl grpo

Runs, one after the other on the same machine, with the settings of recipes/countdown-cpu.yaml
(the packaged SmolLM2-135M-Instruct, G, prompts per step, completion length, learning rate, beta,
loss type, temperature, seed; --set KEY=VALUE overrides any of them for all runs):

    trl             TRL's GRPOTrainer, transformers generation, one process (benchmarks/trl_env.sh
                    builds its venv; TRL's vLLM colocate mode does not run on CPU, see RESULTS.md)
    grpo            `python -m grpo.trainer`: VLLMSampler + TorchEngine, one process
    grpo-deepspeed  the same with DeepSpeedEngine (ZeRO-3) on two processes (torchrun, gloo), each
                    with its own vLLM sampler and half the prompts of a step

Both sides get the same rendered prompt strings (chat template + the R1 prefill), the same
puzzles at each step (grpo's order; TRL's dataset is handed over in that order and not shuffled,
which the script checks) and the same reward functions (grpo's, which TRL calls through a thin
wrapper). What still differs between the runs is the sampling noise. Per step: wall seconds split
into sampling / rewards / log-probs (no-grad reference and old-policy passes) / update (forward,
backward, optimizer step) / weight sync; completions per second; the peak memory of the whole
process tree (sum of PSS, sampled every second: vLLM's engine process and every rank included);
and the mean reward of the first and last steps. The first step (warm-up) is left out of the
time means.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from grpo import from_config  # noqa: E402
from grpo.config import GRPOConfig  # noqa: E402
from grpo.seeds import prompt_indices  # noqa: E402

TRL_PYTHON = ROOT / "benchmarks" / ".venv-trl" / "bin" / "python"
PHASES = ("sample", "reward", "logprobs", "update", "sync")


def tree_memory(pid: int) -> float:
    """Bytes held by a process and all its descendants: PSS (shared pages counted once) from
    /proc/<pid>/smaps_rollup, which the kernel sums (reading the full smaps, as psutil's
    memory_full_info does, cost the poller most of a core and slowed the runs it measured)."""
    try:
        root = psutil.Process(pid)
        pids = [pid] + [c.pid for c in root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            try:
                total += psutil.Process(p).memory_info().rss
            except psutil.NoSuchProcess:
                pass
    return total


def run(cmd: list[str], log: Path, env: dict | None = None) -> float:
    """Runs cmd to the end; returns the peak memory of its process tree in bytes."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, **(env or {})})
        peak = [0.0]

        def poll():
            while proc.poll() is None:
                peak[0] = max(peak[0], tree_memory(proc.pid))
                time.sleep(1.0)
        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        code = proc.wait()
        watcher.join()
    if code != 0:
        raise SystemExit(f"{cmd[0]} ... failed with exit code {code}; see {log}")
    return peak[0]


def grpo_args(recipe: list[str], out: Path, steps: int) -> list[str]:
    return [*recipe, "--max_steps", str(steps), "--eval_steps", "0", "--save_steps", "0",
            "--log_completions_steps", "0", "--report_to", "none", "--output_dir", str(out)]


def grpo_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r["time/step"] = sum(r[f"time/{k}"] for k in ("sample", "reward", "train", "sync"))
    return rows


def run_grpo(config, recipe, work: Path, steps: int, world: int) -> tuple[list[dict], float]:
    out = work / f"grpo-{world}-seed{config.seed}"
    recipe = [*recipe, "--seed", str(config.seed)]
    if world == 1:
        cmd = [sys.executable, "-m", "grpo.trainer", *grpo_args(recipe, out, steps)]
        env = None
    else:  # same global batch: each rank takes 1/world of the step's completions
        accum = config.gradient_accumulation_steps // world
        cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(world),
               "-m", "grpo.trainer", *grpo_args(recipe, out, steps), "--engine", "deepspeed",
               "--gradient_accumulation_steps", str(accum)]
        env = {"OMP_NUM_THREADS": str(max(1, os.cpu_count() // world))}
    peak = run(cmd, work / f"grpo-{world}-seed{config.seed}.log", env)
    return grpo_rows(out), peak


def run_trl(config, work: Path, steps: int) -> tuple[list[dict], float]:
    from grpo.engine import StepSettings

    if not TRL_PYTHON.exists():
        subprocess.run(["bash", str(ROOT / "benchmarks" / "trl_env.sh")], check=True)
    tok = from_config.tokenizer(from_config.model_path(config))
    train, _, prefill = from_config.datasets(config, tok)
    # The puzzles grpo's trainer takes at each step, in that order (TRL keeps it: no shuffle)
    order = [i for step in range(steps)
             for i in prompt_indices(step, len(train), config.prompts_per_step, config.seed)]
    rows = train[order]
    name = f"trl-seed{config.seed}"
    settings = {
        "model": from_config.model_path(config), "output_dir": str(work / name),
        "metrics": str(work / f"{name}.jsonl"), "prefill": prefill,
        "rewards": list(config.rewards), "prompts": list(rows["prompt"]),
        "nums": list(rows["nums"]), "target": list(rows["target"]),
        "prompts_per_step": (config.per_device_train_batch_size
                             * config.gradient_accumulation_steps // config.num_generations),
        # grpo's AdamW betas (TRL's default beta2 is 0.999): the same optimizer on both sides
        "adam_betas": list(StepSettings().adam_betas),
        "max_steps": steps, **{k: getattr(config, k) for k in (
            "seed", "num_generations", "per_device_train_batch_size",
            "gradient_accumulation_steps", "max_completion_length", "learning_rate",
            "lr_scheduler_type", "warmup_ratio", "weight_decay", "max_grad_norm", "beta",
            "loss_type", "eps_low", "eps_high", "temperature", "top_p", "num_iterations",
            "scale_rewards", "mask_truncated_completions")},
    }
    path = work / f"{name}_settings.json"
    path.write_text(json.dumps(settings))
    metrics = Path(settings["metrics"])
    metrics.unlink(missing_ok=True)
    peak = run([str(TRL_PYTHON), str(ROOT / "benchmarks" / "trl_worker.py"), str(path)],
               work / f"{name}.log")
    out = [json.loads(line) for line in metrics.read_text().splitlines()]
    per_step = config.prompts_per_step
    for step, r in enumerate(out):
        r["time/train"] = r["time/logprobs"] + r["time/update"]
        want = [t for t in settings["target"][step * per_step:(step + 1) * per_step]
                for _ in range(config.num_generations)]
        if r.get("targets") is not None and sorted(r["targets"]) != sorted(want):
            raise SystemExit(f"TRL's step {step + 1} trained on targets {sorted(set(r['targets']))}"
                             f", grpo's on {sorted(set(want))}: not the same puzzles")
    return out, peak


def _length(row: dict) -> float:
    """Mean completion tokens of a step (grpo's and TRL's metric names)."""
    return row.get("completion_length/mean", row.get("completions/mean_length", float("nan")))


def summary(name: str, runs: list[list[dict]], peaks: list[float], completions: int) -> dict:
    """Time means over every seed's steps but the first (it warms up caches and allocators);
    the reward of each step averaged over seeds."""
    timed = [r for rows in runs for r in (rows[1:] or rows)]
    mean = {k: statistics.mean(r.get(f"time/{k}", 0.0) for r in timed) for k in (*PHASES, "step")}
    steps = min(len(rows) for rows in runs)
    reward = [statistics.mean(rows[i]["reward"] for rows in runs) for i in range(steps)]
    length = [statistics.mean(_length(rows[i]) for rows in runs) for i in range(steps)]
    k = max(1, steps // 3)
    return {"run": name, **mean, "completions/s": completions / mean["step"],
            "peak_gib": max(peaks) / 2**30, "reward_first": statistics.mean(reward[:k]),
            "reward_last": statistics.mean(reward[-k:]), "steps": steps, "seeds": len(runs),
            "reward_per_step": reward, "length_per_step": length,
            "reward_per_seed": [[r["reward"] for r in rows[:steps]] for rows in runs]}


def table(results: list[dict]) -> str:
    base = next((r for r in results if r["run"] == "trl"), results[0])
    k = max(1, base["steps"] // 3)
    lines = ["| run | s/step | sample | reward | log-probs | update | sync | completions/s | "
             f"vs {base['run']} | peak memory GiB | reward first {k} -> last {k} steps |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['run']} | {r['step']:.1f} | {r['sample']:.1f} | {r['reward']:.2f} | "
            f"{r['logprobs']:.1f} | {r['update']:.1f} | {r['sync']:.1f} | "
            f"{r['completions/s']:.2f} | {r['completions/s'] / base['completions/s']:.2f}x | "
            f"{r['peak_gib']:.2f} | {r['reward_first']:.3f} -> {r['reward_last']:.3f} |")
    lines += ["", "Mean total reward per step over seeds (each seed's in brackets), and mean "
              "completion tokens:", "",
              "| step | " + " | ".join(f"{r['run']} reward | tokens" for r in results) + " |",
              "|---|" + "---|---|" * len(results)]
    for i in range(min(r["steps"] for r in results)):
        cells = [f"{r['reward_per_step'][i]:.3f} ("
                 + ", ".join(f"{seed[i]:.2f}" for seed in r["reward_per_seed"])
                 + f") | {r['length_per_step'][i]:.0f}" for r in results]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--runs", nargs="+", default=["trl", "grpo", "grpo-deepspeed"],
                        choices=["trl", "grpo", "grpo-deepspeed"])
    parser.add_argument("--config", default=str(ROOT / "recipes" / "countdown-cpu.yaml"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="GRPOConfig overrides for every run, e.g. --set beta=0.04")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="run each library once per seed (default: the recipe's seed); "
                             "times are pooled, rewards averaged per step")
    parser.add_argument("--workdir", default=None, help="keep logs here (default: a temp dir)")
    args = parser.parse_args()

    overrides = [x for kv in args.set for x in (f"--{kv.split('=', 1)[0]}", kv.split("=", 1)[1])]
    recipe = ["--config", args.config, *overrides]
    config = GRPOConfig.from_args(recipe)
    completions = config.per_device_train_batch_size * config.gradient_accumulation_steps
    work = Path(args.workdir or tempfile.mkdtemp(prefix="trl_compare_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{args.steps} steps of {completions} completions "
          f"({completions // config.num_generations} prompts x G={config.num_generations}, "
          f"{config.max_completion_length} tokens, lr {config.learning_rate}, beta {config.beta},"
          f" loss {config.loss_type}, temperature {config.temperature}); logs in {work}")

    seeds = args.seeds or [config.seed]
    results = []
    for name in args.runs:
        start = time.perf_counter()
        runs, peaks = [], []
        for seed in seeds:
            seeded = GRPOConfig.from_args([*recipe, "--seed", str(seed)])
            if name == "trl":
                rows, peak = run_trl(seeded, work, args.steps)
            else:
                rows, peak = run_grpo(seeded, recipe, work, args.steps,
                                      1 if name == "grpo" else 2)
            runs.append(rows)
            peaks.append(peak)
            print(f"{name} seed {seed}: rewards {[round(r['reward'], 3) for r in rows]}",
                  flush=True)
        results.append(summary(name, runs, peaks, completions))
        print(f"{name}: done in {time.perf_counter() - start:.0f} s", flush=True)
        (work / "results.json").write_text(json.dumps(results, indent=1))
    print()
    print(table(results))


if __name__ == "__main__":
    main()
