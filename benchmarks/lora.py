"""LoRA against full fine-tuning on the CPU recipe, side by side in one run.

    .venv/bin/python benchmarks/lora.py [--steps 4 --threads 1]

Three GRPOTrainer runs of recipes/countdown-cpu.yaml, one after another, each in its own process
(so peak memory is its own), the same seed, prompts and number of steps, beta = 0.04 (so the
full run loads its reference copy): full fine-tuning (lr 3e-5, the recipe's); LoRA r = 16,
alpha 32 (lr 1e-3) with the adapter synced into vLLM (`lora_sync=adapter`); and the same LoRA
run with the merged model pushed instead (`lora_sync=merged`). Per run: the median over steps of
the train step, the sync and the sampling (decode tokens/s = completion tokens / sampling
seconds), peak RSS (ru_maxrss: vLLM's engine and KV cache included), the bytes the engine holds
for training (weights + reference + gradients + AdamW states, counted from the tensors), and
the mean reward of the last step. Prints a markdown table.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = {  # name -> config overrides
    "full fine-tuning": dict(),
    "LoRA r=16, adapter sync": dict(lora_r=16, learning_rate=1e-3, lora_sync="adapter"),
    "LoRA r=16, merged sync": dict(lora_r=16, learning_rate=1e-3, lora_sync="merged"),
}


def engine_bytes(engine) -> int:
    """Weights (+ the reference copy, if any) + gradients + optimizer state, in bytes."""
    import torch

    seen, total = set(), 0
    modules = [engine.model]
    reference = getattr(engine, "reference", None)
    if isinstance(reference, torch.nn.Module):  # a second copy (full fine-tuning, beta > 0)
        modules.append(reference)
    for module in modules:
        for p in module.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel() * p.element_size()
                if p.requires_grad:  # its gradient exists at the step's peak
                    total += p.numel() * p.element_size()
    for state in engine.optimizer.state.values():
        total += sum(t.numel() * t.element_size() for t in state.values()
                     if isinstance(t, torch.Tensor))
    return total


def child(name: str, steps: int, out_dir: str) -> dict:
    from grpo.cli import parse_config
    from grpo.trainer import GRPOTrainer

    argv = ["--config", str(ROOT / "recipes/countdown-cpu.yaml"), "--max_steps", str(steps),
            "--beta", "0.04", "--eval_steps", "0", "--save_steps", "0", "--report_to", "none",
            "--log_completions_steps", "0", "--output_dir", out_dir]
    for key, value in RUNS[name].items():
        argv += [f"--{key}", str(value)]
    trainer = GRPOTrainer(parse_config(argv))
    history = trainer.train()
    n = trainer.config.completions_per_step
    lengths = [h["completion_length/mean"] * n for h in history]  # tokens sampled per step
    med = lambda key: statistics.median(h[key] for h in history)  # noqa: E731
    return {"train_s": med("time/train"), "sync_s": med("time/sync"),
            "decode_tok_s": statistics.median(n / h["time/sample"]
                                              for n, h in zip(lengths, history)),
            "engine_gib": engine_bytes(trainer.engine) / 2**30,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "reward_last": history[-1]["reward"],
            "rewards": [round(h["reward"], 3) for h in history]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.steps, args.out)), flush=True)
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "VLLM_LOGGING_LEVEL": "WARNING",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    results = {}
    for name in RUNS:
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run([sys.executable, __file__, "--child", name, "--steps",
                                   str(args.steps), "--out", tmp], env=env, cwd=ROOT,
                                  capture_output=True, text=True)
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"{name} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
        results[name] = json.loads(line[-1][len("RESULT "):])
        print(name, results[name], flush=True)
    full = results["full fine-tuning"]
    print(f"\n{args.steps} steps of recipes/countdown-cpu.yaml (16 completions x 128 tokens), "
          f"beta 0.04, {args.threads} thread(s)\n")
    print("| run | train step s | sync s | decode tok/s | engine GiB | peak RSS GiB | "
          "reward, last step |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['train_s']:.1f} ({r['train_s'] / full['train_s']:.2f}x) | "
              f"{r['sync_s']:.2f} | {r['decode_tok_s']:.0f} | {r['engine_gib']:.2f} | "
              f"{r['peak_rss_gib']:.2f} | {r['reward_last']:.3f} |")


if __name__ == "__main__":
    main()
