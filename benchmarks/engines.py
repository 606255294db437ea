"""Step time, peak memory and achieved FLOP/s of the engines on one batch, side by side.

    .venv/bin/python benchmarks/engines.py [--rows 8 --prompt-len 16 --completion-len 32]

Runs, one after another on the same batch (8 rows = 4 prompts x G=2 by default, micro-batches
of 4, beta = 0.04 so the reference forward is included): TorchEngine in one process with
--threads threads, then DeepSpeed ZeRO-2, ZeRO-3 and ZeRO-3 with optimizer and parameter
offload to CPU, each as --ranks torchrun processes with one thread each (the same cores in
all). Prints a markdown table: median step time over --steps steps after one warm-up step,
peak RSS summed over all ranks (ru_maxrss, so model loading counts), and the step's FLOPs over
its time against an fp32 matmul peak measured at the start of the same run.

FLOPs per step, counted from the shapes (attention scores and element-wise work left out, a few
percent at these lengths): policy forward + backward = 6 x (non-embedding matmul parameters) x
(tokens the model reads, padding included) + 6 x V x H x (completion tokens, the log-prob head);
the reference forward is a third of that.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {  # name -> engine keywords (None: TorchEngine)
    "TorchEngine": None,
    "ZeRO-2": dict(zero_stage=2),
    "ZeRO-3": dict(zero_stage=3),
    "ZeRO-3 + CPU offload": dict(zero_stage=3, offload_optimizer="cpu", offload_param="cpu"),
}


def make_batch(rows: int, prompt_len: int, completion_len: int, group_size: int = 2):
    """Deterministic random token ids of the packaged vocabulary; completion lengths vary."""
    from grpo.rollouts import Rollouts

    g = torch.Generator().manual_seed(0)
    prompts, completions, logprobs = [], [], []
    for i in range(rows):
        prompt = torch.randint(10, 49000, (prompt_len - (i // group_size) % 4,), generator=g)
        length = completion_len - (7 * i) % (completion_len // 2)
        prompts.append(prompt.tolist())
        completions.append(torch.randint(10, 49000, (length,), generator=g).tolist())
        logprobs.append([-2.0] * length)
    rollouts = Rollouts.from_lists(prompts, completions, logprobs, [False] * rows,
                                   ["x"] * rows, ["p"] * rows, group_size, pad_id=2)
    advantages = torch.tensor([(-1.0) ** i for i in range(rows)])
    return rollouts, advantages


def step_flops(model, rollouts) -> float:
    """Matmul FLOPs of one step (policy forward + backward, reference forward)."""
    cfg = model.config
    embed = cfg.vocab_size * cfg.hidden_size
    # ZeRO-3 leaves empty placeholders in the module; ds_numel / ds_shape are the full sizes.
    body = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters()
               if len(getattr(p, "ds_shape", p.shape)) == 2) - embed
    tokens = rollouts.input_ids.numel()
    head_tokens = int(rollouts.completion_mask.sum())
    policy = 6 * (body * tokens + embed * head_tokens)
    return policy * (1 + 1 / 3)


def matmul_peak(threads: int, size: int = 1024, seconds: float = 2.0) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start)


def worker(args) -> None:
    """One rank (or the single TorchEngine process): build, warm up, time, report."""
    from grpo import distributed
    from grpo.engine import DeepSpeedEngine, StepSettings, TorchEngine, ZeroSettings

    torch.set_num_threads(args.threads)
    kw = json.loads(args.engine_kwargs)
    settings = StepSettings(learning_rate=1e-6, beta=0.04, micro_batch_size=args.micro_batch_size)
    rollouts, advantages = make_batch(args.rows, args.prompt_len, args.completion_len)
    if kw is None:
        engine = TorchEngine(None, settings, device="cpu")
    else:
        engine = DeepSpeedEngine(None, settings, ZeroSettings(**kw))
        rows = list(range(engine.rank * args.rows // engine.world_size,
                          (engine.rank + 1) * args.rows // engine.world_size))
        rollouts, advantages = rollouts.select(rows), advantages[rows]
    times = []
    for i in range(args.steps + 1):
        distributed.barrier()
        start = time.perf_counter()
        engine.train_step(rollouts, advantages)
        distributed.barrier()
        if i > 0:  # step 0 warms up (allocations, DeepSpeed's first gathers)
            times.append(time.perf_counter() - start)
    result = {"rank": engine.rank, "step_s": statistics.median(times),
              "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if engine.rank == 0:
        full, _ = make_batch(args.rows, args.prompt_len, args.completion_len)
        result["flops"] = step_flops(engine.model, full)
    Path(f"{args.out}.{engine.rank}").write_text(json.dumps(result))


def run_config(name: str, kw, args, tmp: Path) -> dict:
    out = tmp / name.replace(" ", "_").replace("+", "")
    common = ["--role", "worker", "--out", str(out), "--engine-kwargs", json.dumps(kw),
              "--rows", str(args.rows), "--prompt-len", str(args.prompt_len),
              "--completion-len", str(args.completion_len), "--steps", str(args.steps),
              "--micro-batch-size", str(args.micro_batch_size)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if kw is None:
        env["OMP_NUM_THREADS"] = str(args.ranks)
        cmd = [sys.executable, __file__, *common, "--threads", str(args.ranks)]
        ranks = 1
    else:
        env["OMP_NUM_THREADS"] = "1"
        cmd = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node",
               str(args.ranks), __file__, *common, "--threads", "1"]
        ranks = args.ranks
    subprocess.run(cmd, env=env, check=True, cwd=ROOT, capture_output=not args.verbose)
    results = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(ranks)]
    return {"name": name, "ranks": ranks, "step_s": max(r["step_s"] for r in results),
            "rss": sum(r["max_rss_bytes"] for r in results), "flops": results[0]["flops"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--role", default="driver", choices=["driver", "worker"])
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--completion-len", type=int, default=32)
    p.add_argument("--micro-batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--only", default=None, help="comma-separated config names")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--out", default=None)
    p.add_argument("--engine-kwargs", default="null")
    args = p.parse_args()
    if args.role == "worker":
        return worker(args)
    peak = matmul_peak(args.ranks)
    names = args.only.split(",") if args.only else list(CONFIGS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            rows.append(run_config(name, CONFIGS[name], args, Path(tmp)))
            print(f"done: {name}", file=sys.stderr, flush=True)
    base = rows[0]["step_s"]
    print(f"\nBatch: {args.rows} rows x ({args.prompt_len} prompt + <= {args.completion_len} "
          f"completion) tokens, micro-batches of {args.micro_batch_size}, beta 0.04, fp32, "
          f"{args.ranks} cores. fp32 matmul peak ({args.ranks} threads, 1024^3): "
          f"{peak / 1e9:.1f} GFLOP/s\n")
    print("| engine | processes | step (s) | vs TorchEngine | peak RSS, all ranks (GiB) "
          "| GFLOP/s | of matmul peak |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        achieved = r["flops"] / r["step_s"]
        print(f"| {r['name']} | {r['ranks']} | {r['step_s']:.2f} | {r['step_s'] / base:.2f}x "
              f"| {r['rss'] / 2**30:.2f} | {achieved / 1e9:.1f} | {achieved / peak:.0%} |")


if __name__ == "__main__":
    main()
