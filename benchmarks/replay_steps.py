"""Does an in-process vLLM engine change the training step? The real loop, then a replay.

    .venv/bin/python benchmarks/replay_steps.py [--steps 4] [--set KEY=VALUE ...]

First the GRPOTrainer loop of the CPU recipe runs as `make countdown` does (VLLMSampler and
TorchEngine in one process) and records each step's rollouts, advantages and the weights after
the step. Then a fresh process, which never imports vLLM, feeds the same rollouts and advantages
to a fresh TorchEngine and compares its weights after every step with the recorded ones (in units
of the learning rate; 0 means bit-identical). Anything vLLM changes in the process it shares with
the trainer (thread pools, matmul precision, RNG, aliased weights) would show here.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def config_of(args, out: Path):
    from grpo.config import GRPOConfig

    return GRPOConfig.from_args([
        "--config", args.config, "--max_steps", str(args.steps), "--eval_steps", "0",
        "--save_steps", "0", "--log_completions_steps", "0", "--report_to", "none",
        "--output_dir", str(out / "run"), *("--" + kv for kv in args.set)])  # --key=value


def record(args, out: Path) -> None:
    from grpo.trainer import GRPOTrainer

    trainer = GRPOTrainer(config_of(args, out))
    train_step, log = trainer.engine.train_step, []

    def recording(rollouts, advantages):
        metrics = train_step(rollouts, advantages)
        log.append({"rollouts": rollouts, "advantages": advantages.clone(),
                    "weights": {k: v.detach().clone() for k, v in trainer.engine.named_weights()}})
        return metrics

    trainer.engine.train_step = recording
    trainer.train()
    torch.save(log, out / "steps.pt")


def replay(args, out: Path) -> None:
    from grpo import components

    assert "vllm" not in sys.modules
    config = config_of(args, out)
    engine = components.engine(config, components.model_path(config))
    for step, entry in enumerate(torch.load(out / "steps.pt", weights_only=False), start=1):
        engine.train_step(entry["rollouts"], entry["advantages"])
        weights = dict(engine.named_weights())
        worst = max((weights[k] - entry["weights"][k]).abs().max().item() for k in weights)
        print(f"step {step}: max |replayed - recorded| = {worst / config.learning_rate:.3g} lr"
              f"{' (bit-identical)' if worst == 0 else ''}", flush=True)
    assert "vllm" not in sys.modules


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "recipes" / "countdown-cpu.yaml"))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. seed=1 vllm_dtype=float32")
    parser.add_argument("--phase", choices=["both", "record", "replay"], default="both")
    parser.add_argument("--workdir")
    args = parser.parse_args()
    out = Path(args.workdir or tempfile.mkdtemp(prefix="replay_steps_"))
    out.mkdir(parents=True, exist_ok=True)
    if args.phase == "both":  # each phase in its own process: the replay must never see vLLM
        for phase in ("record", "replay"):
            cmd = [sys.executable, __file__, "--phase", phase, "--workdir", str(out),
                   "--config", args.config, "--steps", str(args.steps)]
            if args.set:
                cmd += ["--set", *args.set]
            subprocess.run(cmd, check=True)
    else:
        (record if args.phase == "record" else replay)(args, out)


if __name__ == "__main__":
    main()
