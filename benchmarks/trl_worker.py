"""TRL's GRPOTrainer on the benchmark's Countdown settings, timed per step (run by trl_compare.py).

Runs under benchmarks/.venv-trl/bin/python (TRL is not a dependency of grpo). Reads the settings
JSON that trl_compare.py writes (the same prompts, rewards and hyper-parameters grpo runs with;
the prompts in the order grpo's trainer visits them, which TRL keeps with shuffle_dataset=False)
and writes one JSON line per optimizer step: wall seconds split into sampling / rewards /
log-probs / update, the step's completions and puzzle targets, and TRL's logged rewards.

What is timed, by wrapping TRL 1.16's own methods (names checked at start):
    sampling  `_generate`                       (transformers `generate`, no vLLM on CPU)
    rewards   `_calculate_rewards`
    log-probs `_get_per_token_logps_and_entropies` under no_grad (reference / old policy)
    update    the rest of the step: the training forward, backward, and the optimizer step
"""

import functools
import json
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # grpo's rewards, pure Python
from grpo.rewards import countdown_reward, format_reward, partial_format_reward  # noqa: E402

LOSS_TYPES = {"grpo": "grpo", "token_mean": "dapo", "dr_grpo": "dr_grpo"}  # ours -> TRL's
REWARDS = {"format": format_reward, "partial_format": partial_format_reward,
           "countdown": countdown_reward}


def trl_reward(name: str, prefill: str, seen_targets: list | None = None):
    """grpo's reward as a TRL reward function: TRL passes the generated text only, grpo's
    rewards read the whole assistant message (prefill + completion). `seen_targets` collects
    each call's puzzle targets (one per completion), to check which puzzles TRL trained on."""
    func = REWARDS[name]

    def reward(completions, nums, target, **_):
        if seen_targets is not None:
            seen_targets.append(list(target))
        messages = [prefill + c for c in completions]
        if name == "countdown":
            return func(messages, nums=nums, target=target)
        return func(messages)

    reward.__name__ = f"{name}_reward"
    return reward


class StepTimes(TrainerCallback):
    """Wall time between optimizer steps, with the phase seconds accumulated in between."""

    def __init__(self, out: Path, completions_per_step: int, seen_targets: list):
        self.out, self.per_step, self.seen_targets = out, completions_per_step, seen_targets
        self.phases = dict.fromkeys(("sample", "reward", "logprobs"), 0.0)
        self.logged: dict = {}
        self.start = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logged.update({k: v for k, v in (logs or {}).items()
                            if k == "reward" or k.startswith("rewards/")
                            or k == "completions/mean_length"})

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        total = now - self.start
        row = {"step": state.global_step, "time/step": total, "completions": self.per_step,
               "targets": self.seen_targets[-1] if self.seen_targets else None,
               **{f"time/{k}": v for k, v in self.phases.items()},
               "time/update": total - sum(self.phases.values())}
        self.pending = row
        self.phases = dict.fromkeys(self.phases, 0.0)
        self.start = now

    def flush(self):
        """TRL logs a step's rewards after on_step_end; write the step once they are known."""
        if getattr(self, "pending", None) is not None:
            with self.out.open("a") as f:
                f.write(json.dumps({**self.pending, **self.logged}) + "\n")
            self.pending, self.logged = None, {}


def main(settings_path: str) -> None:
    s = json.loads(Path(settings_path).read_text())
    torch.manual_seed(s["seed"])
    dataset = Dataset.from_dict({"prompt": s["prompts"], "nums": s["nums"], "target": s["target"]})
    completions_per_step = s["prompts_per_step"] * s["num_generations"]
    args = GRPOConfig(
        output_dir=s["output_dir"], report_to="none", use_cpu=True, bf16=False, fp16=False,
        gradient_checkpointing=False, save_strategy="no", logging_steps=1, seed=s["seed"],
        num_generations=s["num_generations"],
        per_device_train_batch_size=s["per_device_train_batch_size"],
        gradient_accumulation_steps=s["gradient_accumulation_steps"],
        max_completion_length=s["max_completion_length"], max_steps=s["max_steps"],
        learning_rate=s["learning_rate"], lr_scheduler_type=s["lr_scheduler_type"],
        warmup_steps=round(s["warmup_ratio"] * s["max_steps"]), weight_decay=s["weight_decay"],
        max_grad_norm=s["max_grad_norm"], beta=s["beta"], loss_type=LOSS_TYPES[s["loss_type"]],
        epsilon=s["eps_low"], epsilon_high=s["eps_high"], temperature=s["temperature"],
        top_p=s["top_p"], num_iterations=s["num_iterations"], scale_rewards=s["scale_rewards"],
        mask_truncated_completions=s["mask_truncated_completions"], use_vllm=False,
        shuffle_dataset=False,  # the prompts come in grpo's order: the same puzzles each step
        use_bias_correction_kl=False,  # DeepSeekMath's k3, as grpo (see loss_agreement.py)
        adam_beta1=s["adam_betas"][0], adam_beta2=s["adam_betas"][1],  # grpo's AdamW
    )
    assert args.generation_batch_size == completions_per_step, args.generation_batch_size
    seen_targets: list = []
    trainer = GRPOTrainer(model=s["model"], args=args, train_dataset=dataset,
                          reward_funcs=[trl_reward(n, s["prefill"], seen_targets if i == 0 else None)
                                        for i, n in enumerate(s["rewards"])])
    timer = StepTimes(Path(s["metrics"]), completions_per_step, seen_targets)
    trainer.add_callback(timer)

    def timed(name: str, phase, when=lambda: True):
        method = getattr(trainer, name)  # AttributeError here: TRL renamed what we time

        @functools.wraps(method)
        def wrapper(*a, **k):
            if not when():
                return method(*a, **k)
            start = time.perf_counter()
            try:
                return method(*a, **k)
            finally:
                timer.phases[phase] += time.perf_counter() - start
        setattr(trainer, name, wrapper)

    timed("_generate", "sample")
    timed("_calculate_rewards", "reward")
    timed("_get_per_token_logps_and_entropies", "logprobs", when=lambda: not torch.is_grad_enabled())
    original_log = trainer.log

    def log_then_flush(logs, *a, **k):
        original_log(logs, *a, **k)
        timer.flush()
    trainer.log = log_then_flush
    trainer.train()
    timer.flush()


if __name__ == "__main__":
    main(sys.argv[1])
