"""GRPOTrainer: a step's five calls in a loop, with evaluation, logging and checkpoints around.

    for step in range(start, max_steps):
        rollouts   = sampler.sample(prompts, seed=derive_seed(seed, step, 0), first_row=...)
        rewards    = reward_set(prefill + completions, **columns)
        advantages = group_advantages(rewards.total, G)
        metrics    = engine.train_step(rollouts, advantages, loss_mask)
        sampler.load_weights(engine.named_weights())   # LoRA: or load_adapter(the adapter)

Everything the loop needs is derived from (config, step, prompts consumed): the prompts are read
in the order of a seeded permutation per epoch (grpo/seeds.py), and the sampler is seeded with
derive_seed(seed, step, round) (grpo/seeds.py) plus each completion's row in the step's batch over
all ranks (`first_row`: rank r's rows start at r * prompts_per_step * G), never the rank. So one
process and several ranks read the same prompts and, with VLLMSampler, draw the same completions;
the gradient does not depend on the split either (docs/architecture.md), so a run's trajectory
does not depend on how many processes ran it. A checkpoint needs only the weights, the engine's
optimizer state and step count, the RNG states, the step and the prompts consumed, and a resumed
run repeats exactly what an uninterrupted one would have done (bit for bit on a CPU; vLLM's
batched CUDA kernels are not bit-reproducible).

Under `dynamic_sampling` (DAPO) a step samples in rounds: groups whose rewards all tie are set
aside and the next prompts are sampled until each rank has its prompts_per_step groups with
signal, or the extra rounds run out and tied groups fill the batch. Every rank takes part in
every round (a rank that is full samples nothing), so the ranks agree on the number of rounds
through one all-reduce per round and reach the train step, and its collectives, together.
Each rank fills its own share, so which groups a step keeps depends on the split (the completions
drawn for a prompt in a round do not).

With several ranks (DeepSpeed), each rank samples and trains on its own share of the step's
prompts; only rank 0 logs, evaluates and writes checkpoint metadata.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from pathlib import Path

import torch

from grpo import checkpoint as ckpt
from grpo import distributed
from grpo.advantages import group_advantages, zero_variance_groups
from grpo.config import GRPOConfig
from grpo.rewards import RewardOutput, join_outputs
from grpo.rollouts import Rollouts
from grpo.seeds import data_order, derive_seed
from grpo.tracking import NullTracker, Timer, Tracker

log = logging.getLogger("grpo")
WARN_WINDOW = 5  # steps a warning looks back over (and the least steps between two of a kind)
LENGTH_COLUMN = "completion_length"  # what the trainer adds to the dataset's columns for rewards


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
        self.reward_set.check_columns([*train_dataset.column_names, LENGTH_COLUMN])
        self.engine = engine or build.engine(c, self.model_path)
        self.rank, self.world_size = getattr(self.engine, "rank", 0), getattr(
            self.engine, "world_size", 1)
        self.sampler = sampler or build.sampler(c, self.model_path)
        self.tracker = NullTracker()
        self.prompts_consumed = 0  # over all ranks: where the next step reads the data order
        self._recent: deque[dict] = deque(maxlen=WARN_WINDOW)  # metrics of the last steps
        self._warned_at: dict[str, int] = {}

    # ---------------------------------------------------------------- the loop
    def train(self) -> list[dict]:
        c, G = self.config, self.config.num_generations
        start = self._resume() if self.resume_dir else 0
        if not self.resume_dir and getattr(self.sampler, "outlives_the_run", False):
            self._sync_policy()  # a vLLM server may still hold another run's weights
        if self.rank == 0:
            self.tracker = Tracker(c.output_dir, c.report_to == "tensorboard", resume_step=start)
            c.save(Path(c.output_dir) / "grpo_config.json")
        history = []
        if c.eval_steps and start == 0:
            self._evaluate(0)
        progress = _progress(start, c.max_steps, self.rank == 0)
        for step in range(start, c.max_steps):
            timer = Timer()
            rollouts, rewards, sampled = self._sample_groups(step, timer)
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

            metrics = self._step_metrics(rollouts, rewards, advantages, train_metrics, timer,
                                         sampled)
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
        self._recent.append(metrics)
        if self.rank == 0:
            self._diagnose(step)
        progress.update(1)
        progress.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics.get('kl', 0):.4f}")
        if c.eval_steps and step % c.eval_steps == 0:
            self._evaluate(step)
        if c.save_steps and step % c.save_steps == 0:
            self.save(step)

    def _sample_groups(self, step: int, timer: Timer) -> tuple[Rollouts, RewardOutput, dict]:
        """The step's groups, their rewards, and what was sampled to get them.

        One round reads the next prompts_per_step * world_size prompts of the data order (rank r
        the r-th slice). Under dynamic_sampling, rounds go on while any rank has fewer than
        prompts_per_step groups whose rewards differ, up to dynamic_sampling_max_rounds extra;
        the batch is then the first groups with signal, filled with tied ones, in sampled order.
        """
        c, G, need = self.config, self.config.num_generations, self.config.prompts_per_step
        max_rounds = 1 + (c.dynamic_sampling_max_rounds if c.dynamic_sampling else 0)
        parts, outputs, signal, tied, rounds = [], [], [], [], 0
        while True:
            if len(signal) < need:  # a full rank samples nothing but keeps the rounds' pace
                first = self.prompts_consumed + rounds * need * self.world_size
                rows = self.train_dataset[data_order(first + self.rank * need, need,
                                                     len(self.train_dataset), c.seed)]
                # A completion's noise: (run seed, step, round) and its row in the round's batch
                # over all ranks, not the rank, so any world size draws the same completions
                # (VLLMSampler); a resumed run draws the same again.
                seed = derive_seed(c.seed, step, rounds)
                with timer("time/sample"):
                    rollouts = self.sampler.sample(rows["prompt"], seed=seed,
                                                   first_row=self.rank * need * G)
                with timer("time/reward"):
                    outputs.append(self._score(rollouts, rows, G))
                offset = sum(len(p) for p in parts) // G
                for g, tie in enumerate(zero_variance_groups(outputs[-1].total, G).tolist()):
                    (tied if tie else signal).append(offset + g)
                parts.append(rollouts)
            rounds += 1
            if rounds == max_rounds or not self._any_rank_short(len(signal) < need):
                break
        self.prompts_consumed += rounds * need * self.world_size
        if len(parts) == 1:
            everything, joined = parts[0], outputs[0]
        else:
            everything, joined = Rollouts.cat(parts), join_outputs(outputs)
        groups = sorted(signal[:need] + tied[:max(0, need - len(signal))])
        rows = [g * G + i for g in groups for i in range(G)]
        trained = everything if len(rows) == len(everything) else everything.select(rows)
        rewards = RewardOutput(joined.total[rows], {k: v[rows] for k, v in
                                                    joined.per_function.items()}, joined.metrics)
        lengths = everything.completion_lengths.float()
        sampled = {  # the policy's samples, all rounds: what it scores now
            "reward": joined.total.mean().item(),
            "reward_std": joined.total.std().item() if len(joined.total) > 1 else 0.0,
            **joined.metrics,  # rewards/<name>/mean, /std, /errors, /timeouts
            "completion_length/mean": lengths.mean().item(),
            "completion_length/max": lengths.max().item(),
            "truncated_ratio": everything.truncated.float().mean().item(),
            "tokens": lengths.sum().item()}
        if c.dynamic_sampling:
            sampled.update({"dynamic_sampling/rounds": rounds,
                            "dynamic_sampling/groups_kept": min(len(signal), need),
                            "dynamic_sampling/groups_dropped": len(signal) + len(tied) - need,
                            "dynamic_sampling/prompts": rounds * need * self.world_size})
        return trained, rewards, sampled

    def _any_rank_short(self, short: bool) -> bool:
        """Whether any rank wants another round (one all-reduce, so all ranks agree)."""
        if self.world_size == 1:
            return short
        flag = torch.tensor([float(short)], device=self.engine.device)
        return bool(distributed.all_reduce_max(flag).item())

    def _score(self, rollouts: Rollouts, rows: dict[str, list], times: int) -> RewardOutput:
        """Rewards of the completions, with their dataset rows and token counts as columns."""
        return self.reward_set([self.prefill + t for t in rollouts.texts],
                               **_repeat(rows, times, exclude=("prompt",)),
                               **{LENGTH_COLUMN: rollouts.completion_lengths.tolist()})

    def _diagnose(self, step: int) -> None:
        """Warn, at most every WARN_WINDOW steps per kind, when a run trains on little."""
        recent = self._recent
        if len(recent) < WARN_WINDOW:
            return
        c = self.config
        truncated = sum(r["truncated_ratio"] for r in recent) / len(recent)
        tied = sum(r["zero_variance_groups"] for r in recent) / len(recent)
        warnings = {
            "truncated": (truncated > 0.5, f"{truncated:.0%} of the completions of the last "
                          f"{WARN_WINDOW} steps were cut at max_completion_length="
                          f"{c.max_completion_length}: raise it, lower temperature="
                          f"{c.temperature}, or add the 'overlong' reward"),
            "tied": (tied > 0.5, f"{tied:.0%} of the groups trained in the last {WARN_WINDOW} "
                     "steps scored all alike and taught nothing: turn on dynamic_sampling (or "
                     "raise dynamic_sampling_max_rounds), raise temperature="
                     f"{c.temperature} or num_generations={c.num_generations}, or add a denser "
                     "reward")}
        for kind, (bad, message) in warnings.items():
            if bad and step - self._warned_at.get(kind, -WARN_WINDOW) >= WARN_WINDOW:
                self._warned_at[kind] = step
                log.warning("grpo step %d: %s", step, message)

    def _step_metrics(self, rollouts, rewards, advantages, train_metrics, timer,
                      sampled) -> dict:
        seconds = sum(timer.seconds.values())
        tokens = sampled.pop("tokens")
        metrics = {
            **sampled,
            "advantage/abs_mean": advantages.abs().mean().item(),
            "advantage/max": advantages.max().item(),
            "advantage/min": advantages.min().item(),
            "zero_variance_groups": zero_variance_groups(
                rewards.total, rollouts.group_size).float().mean().item(),
            **{k: float(v) for k, v in train_metrics.items()},
            **timer.seconds,
            "tokens_per_second": tokens / max(seconds, 1e-9),
        }
        return _mean_over_ranks(metrics, self.world_size, self.engine.device)

    def _evaluate(self, step: int) -> dict[str, float]:
        """Greedy decoding on the held-out split; the mean of each reward."""
        if self.eval_dataset is None or self.rank != 0:
            return {}
        rows = self.eval_dataset[:]
        rollouts = self.sampler.sample(rows["prompt"], group_size=1, temperature=0.0,
                                       seed=self.config.seed)
        rewards = self._score(rollouts, rows, 1)
        metrics = {f"eval/{k}": v.float().nanmean().item()  # NaN = "not applicable"
                   for k, v in rewards.per_function.items()}
        metrics["eval/reward"] = rewards.total.mean().item()
        metrics["eval/completion_length"] = rollouts.completion_lengths.float().mean().item()
        self.tracker.log(step, metrics)
        return metrics

    def save(self, step: int) -> Path:
        c = self.config
        state = {"step": step, "prompts_consumed": self.prompts_consumed, "config": c.to_dict()}

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
        self.prompts_consumed = int(state.get(  # checkpoints of runs that read one round a step
            "prompts_consumed", state["step"] * self.config.prompts_per_step * self.world_size))
        return int(state["step"])

    def _sync_policy(self) -> None:
        """The sampler gets the new policy: the LoRA adapter alone, or every (merged) weight."""
        if self.config.lora_r and self.config.lora_sync == "adapter":
            self.sampler.load_adapter(self.engine.adapter_weights().items(),
                                      self.engine.adapter_config())
        else:
            self.sampler.load_weights(self.engine.named_weights())


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
