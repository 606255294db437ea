"""The GRPO step, written once for both engines.

`StepEngine.train_step` is the algorithm; a subclass supplies five small pieces (policy forward,
reference forward, backward, optimizer step, learning rate). The step:

1. The whole step's loss normaliser, from every rank's full mask (all-reduce SUM), divided by the
   world size because data parallelism averages gradients (docs/architecture.md). Every
   micro-batch's loss uses it, so the gradient does not depend on the split.
2. Reference log-probs (no grad) when beta > 0; old log-probs (no grad) once before the first
   update when num_iterations > 1 (with one update, old = None: ratio 1, exact gradient).
3. `num_iterations` updates over all micro-batches, each: forward, GRPO loss, backward; then one
   optimizer step with clipping. The learning rate is that of `self.step` for all of them: the
   schedule counts `train_step` calls, so `max_steps` means trainer steps.
4. A step is skipped (no optimizer update, weights untouched) when any rank's loss or the global
   gradient norm is not finite (`skipped_nonfinite`), and no backward runs at all when every
   advantage on every rank is 0 (`skipped_zero_advantage`: no signal; with beta > 0 such a step
   would only pull toward the reference, and AdamW's momentum would still move the weights).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from grpo import distributed
from grpo.engine.common import check_batch, learning_rate_at, micro_batch_slices
from grpo.loss import GRPOLoss
from grpo.rollouts import Rollouts

# Sums reduced over ranks in one all-reduce at the end of a step (order matters).
_SUMS = ("loss", "kl", "clip", "tokens", "tokens_all", "entropy", "gap", "tokens0", "nonfinite",
         "tis_weight", "tis_capped")


@dataclass
class _Prepared:
    rollouts: Rollouts
    advantages: Tensor  # [N]
    normalizer: Tensor  # scalar: the whole step's divisor / world size
    ref: Tensor | None  # [N, T]
    old: Tensor | None  # [N, T]
    slices: list[slice]
    skip_backward: bool


class StepEngine:
    """Shared state and `train_step`; see TorchEngine and DeepSpeedEngine for the pieces."""

    rank: int = 0
    world_size: int = 1
    step: int = 0

    def _init_hparams(self, *, learning_rate, lr_scheduler_type, warmup_steps, max_steps,
                      micro_batch_size, num_iterations, eps_low, eps_high, beta, loss_type,
                      max_completion_length, temperature, max_grad_norm, logprob_chunk_size,
                      share_prompt_forward, tis_cap=None):
        self.loss_fn = GRPOLoss(eps_low=eps_low, eps_high=eps_high, beta=beta,
                                loss_type=loss_type, max_completion_length=max_completion_length,
                                tis_cap=tis_cap)
        self.learning_rate, self.lr_scheduler_type = learning_rate, lr_scheduler_type
        self.warmup_steps, self.max_steps = warmup_steps, max_steps
        self.micro_batch_size, self.num_iterations = micro_batch_size, num_iterations
        self.beta, self.temperature = beta, temperature
        self.max_grad_norm = max_grad_norm or 0.0
        self.logprob_chunk_size = logprob_chunk_size
        self.share_prompt_forward = share_prompt_forward  # grpo.logprobs.completion_hidden
        self.step = 0

    # ---- the pieces a subclass supplies -------------------------------------------------
    def _policy_logprobs(self, batch: Rollouts, with_entropy: bool) -> tuple[Tensor, Tensor]:
        raise NotImplementedError  # -> logprobs [n, T] (grad when enabled), entropy [n, T]

    def _ref_logprobs(self, batch: Rollouts) -> Tensor:  # [n, T]
        raise NotImplementedError

    def _backward(self, loss: Tensor, last: bool) -> None:
        """Accumulate this micro-batch's gradient; `last` marks the update's final one."""
        raise NotImplementedError

    def _optimizer_step(self, skip: bool) -> float:
        """Clip and step (or, with skip, drop the gradients); returns the pre-clip grad norm."""
        raise NotImplementedError

    def _set_lr(self, lr: float) -> None:
        raise NotImplementedError

    def _sum(self, tensor: Tensor) -> Tensor:
        """Sum over this engine's ranks (TorchEngine: itself, even inside a launched job)."""
        return distributed.all_reduce_sum(tensor) if self.world_size > 1 else tensor.clone()

    def _max(self, tensor: Tensor) -> Tensor:
        return distributed.all_reduce_max(tensor) if self.world_size > 1 else tensor.clone()

    def _check_ranks(self, num_rows: int) -> None:
        """Every rank must run the same number of micro-batches (ZeRO's gathers are collective)."""

    # ---- the step ----------------------------------------------------------------------
    def current_lr(self) -> float:
        return learning_rate_at(self.step, self.learning_rate, self.lr_scheduler_type,
                                self.warmup_steps, self.max_steps)

    def ref_logprobs(self, rollouts: Rollouts) -> Tensor | None:  # -> [N, T] or None (beta 0)
        """The frozen reference's log-probs of the completions (None when beta == 0)."""
        if self.beta == 0:
            return None
        rollouts = rollouts.to(self.device)
        with torch.no_grad():
            return torch.cat([self._ref_logprobs(rollouts.select(s)) for s in
                              micro_batch_slices(len(rollouts), self.micro_batch_size)])

    def policy_logprobs(self, rollouts: Rollouts) -> Tensor:  # -> [N, T], no grad
        """The current policy's log-probs of the completions (no grad)."""
        rollouts = rollouts.to(self.device)
        with torch.no_grad():
            return torch.cat([self._policy_logprobs(rollouts.select(s), False)[0] for s in
                              micro_batch_slices(len(rollouts), self.micro_batch_size)])

    def train_step(
        self,
        rollouts: Rollouts,  # this rank's N rows
        advantages: Tensor,  # [N]
    ) -> dict[str, float]:
        """One GRPO step (num_iterations optimizer updates) on this rank's share of the batch;
        metrics are averaged over all ranks, except this rank's seconds in `time/logprobs` (the
        no-grad reference and old-policy passes) and `time/update` (forward, backward, step)."""
        start = time.perf_counter()
        batch = self._prepare(rollouts, advantages)
        prepared = time.perf_counter()
        self._set_lr(self.current_lr())
        sums = dict.fromkeys(_SUMS, 0.0)
        norms = []
        for iteration in range(self.num_iterations):
            self._accumulate(batch, sums, first=iteration == 0)
            if batch.skip_backward:
                break
            flag = torch.tensor(sums["nonfinite"], device=self.device)
            nonfinite = self._max(flag).item() > 0
            norms.append(self._optimizer_step(skip=nonfinite))
            if nonfinite or not torch.isfinite(torch.tensor(norms[-1])):
                sums["nonfinite"] = 1.0
                break
        self.step += 1
        metrics = self._metrics(sums, norms, batch.skip_backward)
        metrics["time/logprobs"] = prepared - start
        metrics["time/update"] = time.perf_counter() - prepared
        return metrics

    def _prepare(self, rollouts: Rollouts, advantages: Tensor) -> _Prepared:
        """Checks, the step's normaliser, reference and old log-probs: all before any update."""
        check_batch(rollouts, advantages)
        self._check_ranks(len(rollouts))
        rollouts = rollouts.to(self.device)
        advantages = advantages.to(self.device, torch.float32)
        normalizer = self._sum(
            self.loss_fn.normalizer(rollouts.completion_mask).to(self.device)) / self.world_size
        signal = self._max((advantages != 0).any().float().to(self.device))
        skip_backward = signal.item() == 0
        old = None
        if self.num_iterations > 1 and not skip_backward:
            old = self.policy_logprobs(rollouts)
        return _Prepared(rollouts, advantages, normalizer, self.ref_logprobs(rollouts), old,
                         micro_batch_slices(len(rollouts), self.micro_batch_size), skip_backward)

    def _accumulate(self, batch: _Prepared, sums: dict, first: bool) -> None:
        """Forward, loss and backward over every micro-batch: the update's whole gradient."""
        for i, s in enumerate(batch.slices):
            self._micro_step(batch.rollouts.select(s), batch.advantages[s],
                             None if batch.old is None else batch.old[s],
                             None if batch.ref is None else batch.ref[s],
                             batch.normalizer, sums, first=first,
                             backward=not batch.skip_backward, last=i == len(batch.slices) - 1)

    def _gradients(self, rollouts: Rollouts, advantages: Tensor) -> None:
        """The first update's gradient, left accumulated without an optimizer step (for tests
        that compare gradients; read them with `_full_grads`, then `_drop_grads`)."""
        self._accumulate(self._prepare(rollouts, advantages), dict.fromkeys(_SUMS, 0.0), True)

    def _micro_step(self, batch: Rollouts, advantages: Tensor, old, ref, normalizer, sums,
                    first: bool, backward: bool, last: bool) -> None:
        grad = torch.enable_grad() if backward else torch.no_grad()
        with grad:
            logprobs, entropy = self._policy_logprobs(batch, with_entropy=first)
            tis = self.loss_fn.tis_cap is not None  # weights from the sampler's log-probs
            out = self.loss_fn(logprobs, old, ref, advantages, batch.completion_mask,
                               normalizer=normalizer,
                               sampler_logprobs=batch.sampler_logprobs if tis else None)
        mask = batch.completion_mask.bool()
        tokens = mask.sum().item()
        finite = bool(torch.isfinite(out.loss).item())
        sums["nonfinite"] = max(sums["nonfinite"], 0.0 if finite else 1.0)
        sums["loss"] += out.loss.item() if finite else 0.0
        sums["kl"] += out.metrics.get("kl", torch.zeros(())).item() * tokens
        sums["clip"] += out.metrics["clip_ratio"].item() * tokens
        for name in ("tis_weight", "tis_capped"):
            sums[name] += out.metrics[name].item() * tokens if name in out.metrics else 0.0
        sums["tokens_all"] += tokens
        if first:
            gap = (batch.sampler_logprobs.to(logprobs.dtype) - logprobs.detach()).abs()
            sums["gap"] += gap[mask].sum().item()
            sums["entropy"] += entropy[mask].sum().item()
            sums["tokens0"] += tokens
        if backward:
            # A non-finite loss still runs backward: ZeRO's hooks are collective, so every rank
            # must take part; the step is then skipped on all ranks together.
            self._backward(out.loss, last)

    def _metrics(self, sums: dict, norms: list[float], skipped_zero: bool) -> dict[str, float]:
        packed = torch.tensor([sums[k] for k in _SUMS], dtype=torch.float64, device=self.device)
        total = dict(zip(_SUMS, self._sum(packed).tolist()))
        iterations = 1 if skipped_zero else max(1, len(norms))
        finite_norms = [n for n in norms if n == n and abs(n) != float("inf")]
        tis = {} if self.loss_fn.tis_cap is None else {  # token means, like kl and clip_ratio
            name: total[name] / max(total["tokens_all"], 1)
            for name in ("tis_weight", "tis_capped")}
        return {
            # Each rank's micro-batch losses sum to W x its share of the global loss (normalizer
            # / W), so the sum over ranks / W is the global loss; averaged over the updates.
            "loss": total["loss"] / self.world_size / iterations,
            "kl": total["kl"] / max(total["tokens_all"], 1),
            "clip_ratio": total["clip"] / max(total["tokens_all"], 1),
            "entropy": total["entropy"] / max(total["tokens0"], 1),
            "logprob_gap": total["gap"] / max(total["tokens0"], 1),
            "grad_norm": (sum(finite_norms) / len(finite_norms)) if finite_norms else
            (float("nan") if norms else 0.0),
            "lr": self.current_lr_of(self.step - 1),
            "skipped_nonfinite": 1.0 if total["nonfinite"] > 0 else 0.0,
            "skipped_zero_advantage": 1.0 if skipped_zero else 0.0,
            "num_tokens": total["tokens0"],
            **tis,
        }

    def current_lr_of(self, step: int) -> float:
        return learning_rate_at(step, self.learning_rate, self.lr_scheduler_type,
                                self.warmup_steps, self.max_steps)

    def _autocast(self):
        return contextlib.nullcontext()
