"""Step time split, colocated vLLM (sampler=vllm) against a separate `vllm serve`
(sampler=vllm_server), in one run of this script, one process each, the same recipe.

    .venv/bin/python benchmarks/server.py [--steps 4] [--threads 1]

Each layout trains `--steps` steps in a child process (the trainer's own time/sample,
time/reward, time/train, time/sync); the server is started by grpo.sampler.server on the same
machine and pinned to the same thread count. The first step is left out of the means (warm-up).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

RECIPE = dict(
    num_train=64, num_test=4, countdown_num_numbers=[3], countdown_number_range=[1, 10],
    countdown_target_range=[10, 30], max_prompt_length=256, max_completion_length=64,
    num_generations=4, per_device_train_batch_size=16, beta=0.0, learning_rate=1e-5,
    report_to="none", log_completions_steps=0, eval_steps=0, save_steps=0, seed=3,
    vllm_enforce_eager=True, vllm_kv_cache_gb=1.0, vllm_dtype="float32",
    rewards=["format", "countdown"])
PHASES = ("time/sample", "time/reward", "time/train", "time/sync")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(config: dict, out: Path, threads: int) -> list[dict]:
    recipe = out.with_suffix(".yaml")
    recipe.write_text(yaml.safe_dump({**config, "output_dir": str(out)}))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "VLLM_LOGGING_LEVEL": "WARNING"}
    subprocess.run([sys.executable, "-m", "grpo.trainer", "--config", str(recipe)], env=env,
                   check=True)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    from grpo.sampler.server import start_server, stop_server

    config = dict(RECIPE, max_steps=args.steps)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        rows["colocated"] = run(dict(config, sampler="vllm"), Path(tmp) / "colocated",
                                args.threads)
        port = _port()
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        server = start_server(None, port=port, dtype="float32", max_model_len=320,
                              kv_cache_gb=1, enforce_eager=True,
                              log_file=open(Path(tmp) / "server.log", "w"))
        try:
            rows["server"] = run(dict(config, sampler="vllm_server",
                                      vllm_server_urls=[f"http://127.0.0.1:{port}"]),
                                 Path(tmp) / "server", args.threads)
        finally:
            stop_server(server)
    print(f"| layout | {' | '.join(p.split('/')[1] + ' s' for p in PHASES)} | step s | "
          "tokens/s |")
    print("|---" * (len(PHASES) + 3) + "|")
    for name, metrics in rows.items():
        kept = metrics[1:] or metrics
        mean = {p: sum(r[p] for r in kept) / len(kept) for p in PHASES}
        step = sum(mean.values())
        tps = sum(r["tokens_per_second"] for r in kept) / len(kept)
        print(f"| {name} | {' | '.join(f'{mean[p]:.2f}' for p in PHASES)} | {step:.2f} | "
              f"{tps:.0f} |")


if __name__ == "__main__":
    main()
