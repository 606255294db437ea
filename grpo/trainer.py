"""GRPOTrainer: a step's five calls in a loop, with evaluation, logging and checkpoints around.

    for step in range(start, max_steps):
        rollouts   = sampler.sample(prompts, seed=derive_seed(seed, step, rank))
        rewards    = reward_set(prefill + completions, **columns)
        advantages = group_advantages(rewards.total, G)
        metrics    = engine.train_step(rollouts, advantages, loss_mask)
        sampler.load_weights(engine.named_weights())   # LoRA: or load_adapter(the adapter)

Everything the loop needs is derived from (config, step): the prompts of step s are a fixed slice
of a seeded permutation per epoch, and the sampler is seeded with derive_seed(seed, s, rank)
(grpo/seeds.py). So a checkpoint needs only the weights, the engine's optimizer state and step
count, the RNG states and the step, and a resumed run repeats exactly what an uninterrupted one
would have done (bit for bit on a CPU; vLLM's batched CUDA kernels are not bit-reproducible).

With several ranks (DeepSpeed), each rank samples and trains on its own share of the step's
prompts; only rank 0 logs, evaluates and writes checkpoint metadata.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from grpo import checkpoint as ckpt
from grpo import distributed
from grpo.advantages import group_advantages, zero_variance_groups
from grpo.config import GRPOConfig
from grpo.seeds import derive_seed
from grpo.tracking import NullTracker, Timer, Tracker


class GRPOTrainer:
    def __init__(self, config: GRPOConfig, *, train_dataset=None, eval_dataset=None,
                 reward_set=None, sampler=None, engine=None, prefill: str | None = None):
        """Any piece left None is built from the config; pass your own to customise it."""
        from grpo import from_config as build

        self.config = c = config
        if c.resume_from_checkpoint:  # fail before loading anything
            self.resume_dir = ckpt.resolve_checkpoint(c.resume_from_checkpoint, c.output_dir)
        else:
            self.resume_dir = None
        self.model_path = build.model_path(c)
        build.check_context(c, self.model_path)
        self.tokenizer = build.tokenizer(self.model_path)
        if train_dataset is None:
            train_dataset, eval_dataset, prefill = build.datasets(c, self.tokenizer)
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.prefill = prefill or ""
        self.reward_set = reward_set or build.reward_set(c)
        self.reward_set.check_columns(train_dataset.column_names)
        self.engine = engine or build.engine(c, self.model_path)
        self.rank, self.world_size = getattr(self.engine, "rank", 0), getattr(
            self.engine, "world_size", 1)
        self.sampler = sampler or build.sampler(c, self.model_path)
        self.tracker = NullTracker()

    # ---------------------------------------------------------------- the loop
    def train(self) -> list[dict]:
        c, G = self.config, self.config.num_generations
        start = self._resume() if self.resume_dir else 0
        if self.rank == 0:
            self.tracker = Tracker(c.output_dir, c.report_to == "tensorboard", resume_step=start)
            c.save(Path(c.output_dir) / "grpo_config.json")
        history = []
        if c.eval_steps and start == 0:
            self._evaluate(0)
        progress = _progress(start, c.max_steps, self.rank == 0)
        for step in range(start, c.max_steps):
            rows = self._prompt_rows(step)
            timer = Timer()
            with timer("time/sample"):
                # Ranks, steps and runs draw different noise; a resumed run redraws the same.
                rollouts = self.sampler.sample(
                    rows["prompt"], seed=derive_seed(c.seed, step, self.rank))
            with timer("time/reward"):
                rewards = self.reward_set([self.prefill + t for t in rollouts.texts],
                                          **_repeat(rows, G, exclude=("prompt",)))
            advantages = group_advantages(rewards.total, G, scale=c.scale_rewards)
            loss_mask = None  # the completions as sampled
            if c.mask_truncated_completions:  # DAPO's overlong filter: out of the loss only
                loss_mask = rollouts.completion_mask * ~rollouts.truncated[:, None]
            if c.vllm_enable_sleep_mode:  # GPU: give vLLM's memory to the train step
                self.sampler.sleep()
            with timer("time/train"):
                train_metrics = self.engine.train_step(rollouts, advantages, loss_mask)
            with timer("time/sync"):
                if c.vllm_enable_sleep_mode:
                    self.sampler.wake_up()
                self._sync_policy()

            metrics = self._step_metrics(rollouts, rewards, advantages, train_metrics, timer)
            history.append({"step": step + 1, **metrics})
            self._after_step(step + 1, metrics, rollouts, rewards, advantages, progress)
        progress.close()
        if c.eval_steps and c.max_steps % c.eval_steps:
            self._evaluate(c.max_steps)
        if start < c.max_steps and (not c.save_steps or c.max_steps % c.save_steps):
            self.save(c.max_steps)
        self.tracker.close()
        return history

    # ---------------------------------------------------------------- around the loop
    def _after_step(self, step, metrics, rollouts, rewards, advantages, progress) -> None:
        c = self.config
        if step % c.logging_steps == 0:
            self.tracker.log(step, metrics)
        if c.log_completions_steps and step % c.log_completions_steps == 0:
            self.tracker.log_completions(step, _completion_rows(rollouts, rewards, advantages))
        progress.update(1)
        progress.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics.get('kl', 0):.4f}")
        if c.eval_steps and step % c.eval_steps == 0:
            self._evaluate(step)
        if c.save_steps and step % c.save_steps == 0:
            self.save(step)

    def _prompt_rows(self, step: int) -> dict[str, list]:
        c = self.config
        return self.train_dataset[prompt_indices(step, len(self.train_dataset),
                                                 c.prompts_per_step, c.seed, self.rank,
                                                 self.world_size)]

    def _step_metrics(self, rollouts, rewards, advantages, train_metrics, timer) -> dict:
        lengths = rollouts.completion_lengths.float()
        seconds = sum(timer.seconds.values())
        metrics = {
            "reward": rewards.total.mean().item(),
            "reward_std": rewards.total.std().item() if len(rewards.total) > 1 else 0.0,
            **rewards.metrics,  # rewards/<name>/mean, /std, /errors, /timeouts
            "advantage/abs_mean": advantages.abs().mean().item(),
            "advantage/max": advantages.max().item(),
            "advantage/min": advantages.min().item(),
            "zero_variance_groups": zero_variance_groups(
                rewards.total, rollouts.group_size).float().mean().item(),
            "completion_length/mean": lengths.mean().item(),
            "completion_length/max": lengths.max().item(),
            "truncated_ratio": rollouts.truncated.float().mean().item(),
            **{k: float(v) for k, v in train_metrics.items()},
            **timer.seconds,
            "tokens_per_second": lengths.sum().item() / max(seconds, 1e-9),
        }
        return _mean_over_ranks(metrics, self.world_size, self.engine.device)

    def _evaluate(self, step: int) -> dict[str, float]:
        """Greedy decoding on the held-out split; the mean of each reward."""
        if self.eval_dataset is None or self.rank != 0:
            return {}
        rows = self.eval_dataset[:]
        rollouts = self.sampler.sample(rows["prompt"], group_size=1, temperature=0.0,
                                       seed=self.config.seed)
        rewards = self.reward_set([self.prefill + t for t in rollouts.texts],
                                  **_repeat(rows, 1, exclude=("prompt",)))
        metrics = {f"eval/{k}": v.float().nanmean().item()  # NaN = "not applicable"
                   for k, v in rewards.per_function.items()}
        metrics["eval/reward"] = rewards.total.mean().item()
        metrics["eval/completion_length"] = rollouts.completion_lengths.float().mean().item()
        self.tracker.log(step, metrics)
        return metrics

    def save(self, step: int) -> Path:
        c = self.config
        state = {"step": step, "config": c.to_dict()}

        def write(directory: Path):
            self.engine.save(str(directory))
            torch.save(ckpt.rng_state(), directory / f"rng_state_rank{self.rank}.pt")

        return ckpt.save_atomically(c.output_dir, step, write, state, keep=c.save_total_limit,
                                    is_main=self.rank == 0, barrier=distributed.barrier)

    def _resume(self) -> int:
        import json

        state = json.loads((self.resume_dir / ckpt.STATE_FILE).read_text())
        self.engine.load(str(self.resume_dir))
        ckpt.set_rng_state(torch.load(self.resume_dir / f"rng_state_rank{self.rank}.pt",
                                      weights_only=False))
        self._sync_policy()
        return int(state["step"])

    def _sync_policy(self) -> None:
        """The sampler gets the new policy: the LoRA adapter alone, or every (merged) weight."""
        if self.config.lora_r and self.config.lora_sync == "adapter":
            self.sampler.load_adapter(self.engine.adapter_weights().items(),
                                      self.engine.adapter_config())
        else:
            self.sampler.load_weights(self.engine.named_weights())


def prompt_indices(step: int, num_prompts: int, prompts_per_step: int, seed: int,
                   rank: int = 0, world_size: int = 1) -> list[int]:
    """Dataset rows that `rank` trains on at `step`: a fixed slice of a permutation of the
    dataset seeded with derive_seed(seed, epoch). The step's prompts over all ranks are the same
    for any world size (rank r takes the r-th slice): 1 and 2 processes see the same puzzles."""
    per_step = prompts_per_step * world_size
    first = step * per_step + rank * prompts_per_step
    indices = []
    for position in range(first, first + prompts_per_step):
        epoch, offset = divmod(position, num_prompts)
        generator = torch.Generator().manual_seed(derive_seed(seed, epoch))
        order = torch.randperm(num_prompts, generator=generator)
        indices.append(int(order[offset]))
    return indices


def _repeat(rows: dict[str, list], times: int, exclude=()) -> dict[str, list]:
    """Dataset columns repeated per completion (G consecutive completions share a prompt)."""
    return {k: [v for v in values for _ in range(times)]
            for k, values in rows.items() if k not in exclude}


def _completion_rows(rollouts, rewards, advantages) -> list[dict]:
    return [{"prompt": rollouts.prompts[i], "completion": rollouts.texts[i],
             "reward": rewards.total[i].item(),
             "rewards": {k: None if math.isnan(v[i]) else float(v[i])  # None: not applicable
                         for k, v in rewards.per_function.items()},
             "advantage": advantages[i].item(), "truncated": bool(rollouts.truncated[i])}
            for i in range(len(rollouts))]


def _mean_over_ranks(metrics: dict[str, float], world_size: int,
                     device: torch.device) -> dict[str, float]:
    if world_size == 1:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=device)
    return {k: v / world_size for k, v in zip(keys, distributed.all_reduce_sum(values).tolist())}


def _progress(start: int, total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(initial=start, total=total, disable=not enabled, desc="grpo", dynamic_ncols=True,
                postfix={"reward": math.nan})


def main(argv: list[str] | None = None) -> None:
    """`python -m grpo.trainer --config recipe.yaml [--key value ...]`; `--help` lists the keys."""
    from grpo.cli import parse_config

    GRPOTrainer(parse_config(argv, prog="python -m grpo.trainer")).train()


if __name__ == "__main__":
    main()
