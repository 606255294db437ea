"""The GRPO step, written once for both engines.

`StepEngine.train_step` is the algorithm; a subclass supplies the pieces that differ (policy and
reference forward, backward, optimizer step, learning rate). One step, on each rank its own rows:

1. Checks, then the whole step's loss normaliser from every rank's full loss mask (all-reduce
   SUM), divided by the world size because data parallelism averages gradients
   (docs/architecture.md). Every micro-batch's loss uses it, so the gradient does not depend on
   the split.
2. Reference log-probs (no grad) when beta > 0; old log-probs (no grad) once before the first
   update when num_iterations > 1 (with one update, old = None: ratio 1, exact gradient).
3. `num_iterations` updates over all micro-batches, each: forward, GRPO loss, backward; then one
   optimizer step with clipping. The learning rate is that of `self.step` for all of them: the
   schedule counts `train_step` calls, so `max_steps` means trainer steps.
4. An update is skipped (weights untouched) when any rank's loss or the global gradient norm is
   not finite (`skipped_nonfinite`), and no backward runs at all when every advantage on every
   rank is 0 (`skipped_zero_advantage`: no signal; with beta > 0 such a step would only pull
   toward the reference, and AdamW's momentum would still move the weights).

Per-micro-batch statistics stay on the device and are read once per step (one all-reduce, one
host sync), plus one flag per update for the non-finite check.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from grpo import distributed
from grpo.engine.settings import StepSettings
from grpo.rollouts import Rollouts

# Token-weighted sums reduced over ranks at the end of a step, in this order.
_SUMS = ("loss", "kl", "clip", "tis_weight", "tis_capped", "tokens", "entropy", "gap", "sampled",
         "tokens0", "nonfinite")


@dataclass
class _Batch:
    """A step's rows with everything fixed before the first update."""

    rollouts: Rollouts  # on the engine's device
    advantages: Tensor  # [N]
    loss_mask: Tensor  # [N, T] the tokens the loss counts
    normalizer: Tensor  # scalar: the whole step's divisor / world size
    ref: Tensor | None  # [N, T]
    old: Tensor | None  # [N, T]
    slices: list[slice]  # the micro-batches
    skip_backward: bool  # every advantage on every rank is 0


class StepEngine:
    """Shared state and `train_step`; TorchEngine and DeepSpeedEngine supply the pieces."""

    rank: int = 0
    world_size: int = 1
    device: torch.device

    def __init__(self, settings: StepSettings):
        if not isinstance(settings, StepSettings):
            raise TypeError(f"settings must be a grpo.engine.StepSettings, "
                            f"got {type(settings).__name__}")
        self.settings = settings
        self.step = 0  # train_step calls so far: what the learning-rate schedule counts

    @property
    def loss_fn(self):  # from the settings of the moment (replacing them takes effect at once)
        return self.settings.loss()

    # ---- the pieces a subclass supplies --------------------------------------------------
    policy: torch.nn.Module  # grpo.logprobs.LogprobModel of the trained model (or its wrapper)
    reference: torch.nn.Module | None  # the same for the frozen reference; None when beta == 0

    def _autocast(self):
        return contextlib.nullcontext()

    def _backward(self, loss: Tensor, last: bool) -> None:
        """Accumulate this micro-batch's gradient; `last` marks the update's final one."""
        raise NotImplementedError

    def _optimizer_step(self, skip: bool) -> float:
        """Clip and step (or, with skip, drop the gradients); returns the pre-clip grad norm."""
        raise NotImplementedError

    optimizer: torch.optim.Optimizer  # DeepSpeed: its wrapper, which shares the param groups

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _check_ranks(self, num_rows: int) -> None:
        """Every rank must run the same number of micro-batches (ZeRO's gathers are collective)."""

    def _logprobs(self, module, batch: Rollouts, with_entropy: bool = False):
        """-> logprobs [n, T] (fp32; grad when enabled), entropy [n, T] or None."""
        s = self.settings
        with self._autocast():
            logprobs, entropy = module(batch.input_ids, batch.attention_mask,
                                       batch.completion_mask, s.temperature, s.logprob_chunk_size,
                                       with_entropy, s.share_prompt_forward)
        return logprobs.float(), entropy

    # ---- public no-grad passes -----------------------------------------------------------
    def ref_logprobs(self, rollouts: Rollouts) -> Tensor | None:  # -> [N, T] or None (beta 0)
        """The frozen reference's log-probs of the completions (None when beta == 0)."""
        if self.settings.beta == 0:
            return None
        return self._no_grad_pass(rollouts, lambda batch: self._logprobs(self.reference, batch)[0])

    def policy_logprobs(self, rollouts: Rollouts) -> Tensor:  # -> [N, T]
        """The current policy's log-probs of the completions (no grad)."""
        return self._no_grad_pass(rollouts, lambda batch: self._logprobs(self.policy, batch)[0])

    def _no_grad_pass(self, rollouts: Rollouts, forward) -> Tensor:
        rollouts = rollouts.to(self.device)
        with torch.no_grad():
            return torch.cat([forward(rollouts.select(s)) for s in
                              micro_batch_slices(len(rollouts), self.settings.micro_batch_size)])

    # ---- the step --------------------------------------------------------------------------
    def train_step(
        self,
        rollouts: Rollouts,  # this rank's N rows
        advantages: Tensor,  # [N]
        loss_mask: Tensor | None = None,  # [N, T] tokens the loss counts; None: completion_mask
    ) -> dict[str, float]:
        """One GRPO step (num_iterations optimizer updates) on this rank's share of the batch.

        `loss_mask` leaves tokens out of the loss (e.g. truncated completions) while the forward
        still sees the whole completion. Metrics are averaged over all ranks, except this rank's
        seconds in `time/logprobs` (the no-grad reference and old-policy passes) and
        `time/update` (forward, backward, optimizer step)."""
        start = time.perf_counter()
        batch = self._prepare(rollouts, advantages, loss_mask)
        prepared = time.perf_counter()
        self._set_lr(self.settings.learning_rate_at(self.step))
        sums = dict.fromkeys(_SUMS, torch.zeros((), dtype=torch.float64, device=self.device))
        norms = []
        for iteration in range(self.settings.num_iterations):
            self._accumulate(batch, sums, first=iteration == 0)
            if batch.skip_backward:
                break
            nonfinite = self._max(sums["nonfinite"]).item() > 0
            norms.append(self._optimizer_step(skip=nonfinite))
            if nonfinite or not _finite(norms[-1]):
                sums["nonfinite"] = sums["nonfinite"].clamp(min=1.0)
                break
        self.step += 1
        metrics = self._metrics(sums, norms, batch.skip_backward)
        metrics["time/logprobs"] = prepared - start
        metrics["time/update"] = time.perf_counter() - prepared
        return metrics

    def _prepare(self, rollouts: Rollouts, advantages: Tensor, loss_mask: Tensor | None) -> _Batch:
        """Checks, the step's normaliser, reference and old log-probs: all before any update."""
        check_batch(rollouts, advantages, loss_mask)
        self._check_ranks(len(rollouts))
        rollouts = rollouts.to(self.device)
        advantages = advantages.to(self.device, torch.float32)
        mask = (rollouts.completion_mask if loss_mask is None else loss_mask).to(self.device)
        normalizer = self._sum(self.loss_fn.normalizer(mask).to(self.device)) / self.world_size
        skip_backward = self._max((advantages != 0).any().float()).item() == 0
        old = None
        if self.settings.num_iterations > 1 and not skip_backward:
            old = self.policy_logprobs(rollouts)
        slices = micro_batch_slices(len(rollouts), self.settings.micro_batch_size)
        return _Batch(rollouts, advantages, mask, normalizer, self.ref_logprobs(rollouts), old,
                      slices, skip_backward)

    def _accumulate(self, batch: _Batch, sums: dict[str, Tensor], first: bool) -> None:
        """Forward, loss and backward over every micro-batch: the update's whole gradient."""
        for i, s in enumerate(batch.slices):
            last = i == len(batch.slices) - 1
            rows = batch.rollouts.select(s)
            with torch.no_grad() if batch.skip_backward else torch.enable_grad():
                logprobs, entropy = self._logprobs(self.policy, rows, with_entropy=first)
                out = self.loss_fn(
                    logprobs, _rows(batch.old, s), _rows(batch.ref, s), batch.advantages[s],
                    batch.loss_mask[s], normalizer=batch.normalizer,
                    sampler_logprobs=rows.sampler_logprobs if self.settings.tis_cap else None)
            _add_stats(sums, out, batch.loss_mask[s].bool(), logprobs, entropy, rows, first)
            if not batch.skip_backward:
                # A non-finite loss still runs backward: ZeRO's hooks are collective, so every
                # rank must take part; the update is then skipped on all ranks together.
                self._backward(out.loss, last)

    def _metrics(self, sums: dict[str, Tensor], norms: list[float],
                 skipped_zero: bool) -> dict[str, float]:
        total = dict(zip(_SUMS, self._sum(torch.stack([sums[k] for k in _SUMS])).tolist()))
        tokens, sampled = max(total["tokens"], 1), max(total["sampled"], 1)
        finite_norms = [n for n in norms if _finite(n)]
        metrics = {
            # Each rank's micro-batch losses sum to W x its share of the global loss (normalizer
            # / W), so the sum over ranks / W is the global loss; averaged over the updates.
            "loss": total["loss"] / self.world_size / max(1, len(norms)),
            "kl": total["kl"] / tokens,
            "clip_ratio": total["clip"] / tokens,
            "entropy": total["entropy"] / sampled,
            "logprob_gap": total["gap"] / sampled,
            "grad_norm": (sum(finite_norms) / len(finite_norms)) if finite_norms else
            (float("nan") if norms else 0.0),
            "lr": self.settings.learning_rate_at(self.step - 1),
            "skipped_nonfinite": 1.0 if total["nonfinite"] > 0 else 0.0,
            "skipped_zero_advantage": 1.0 if skipped_zero else 0.0,
            "num_tokens": total["tokens0"],  # tokens in the loss
        }
        if self.settings.tis_cap is not None:  # token means, like kl and clip_ratio
            metrics.update(tis_weight=total["tis_weight"] / tokens,
                           tis_capped=total["tis_capped"] / tokens)
        return metrics

    def _sum(self, tensor: Tensor) -> Tensor:
        """Sum over this engine's ranks (TorchEngine: itself, even inside a launched job)."""
        return distributed.all_reduce_sum(tensor) if self.world_size > 1 else tensor

    def _max(self, tensor: Tensor) -> Tensor:
        return distributed.all_reduce_max(tensor) if self.world_size > 1 else tensor


def _add_stats(sums: dict[str, Tensor], out, mask: Tensor, logprobs: Tensor, entropy: Tensor,
               rows: Rollouts, first: bool) -> None:
    """Add one micro-batch's token-weighted statistics to `sums`, on the device (no sync)."""
    tokens = mask.sum().double()
    finite = torch.isfinite(out.loss.detach())
    zero = tokens.new_zeros(())
    add = {"loss": torch.where(finite, out.loss.detach().double(), zero),
           "nonfinite": (~finite).double(), "tokens": tokens,
           "clip": out.metrics["clip_ratio"].double() * tokens}
    for name, key in (("kl", "kl"), ("tis_weight", "tis_weight"), ("tis_capped", "tis_capped")):
        if key in out.metrics:
            add[name] = out.metrics[key].double() * tokens
    if first:  # the policy before any update, on every sampled token (not only the loss's)
        sampled = rows.completion_mask.bool()
        gap = (rows.sampler_logprobs.to(logprobs.dtype) - logprobs.detach()).abs()
        add.update(gap=gap[sampled].sum().double(), entropy=entropy[sampled].sum().double(),
                   sampled=sampled.sum().double(), tokens0=tokens)
    for name, value in add.items():
        sums[name] = sums[name] + value


def _rows(tensor: Tensor | None, s: slice) -> Tensor | None:
    return None if tensor is None else tensor[s]


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def micro_batch_slices(num_rows: int, micro_batch_size: int | None) -> list[slice]:
    """Consecutive row slices of at most `micro_batch_size` rows (the last may be shorter)."""
    size = num_rows if micro_batch_size is None else micro_batch_size
    return [slice(s, min(s + size, num_rows)) for s in range(0, num_rows, max(1, size))]


def check_batch(rollouts, advantages: Tensor, loss_mask: Tensor | None = None) -> None:
    if not isinstance(rollouts, Rollouts):
        raise TypeError(f"rollouts must be a grpo.rollouts.Rollouts, got {type(rollouts).__name__}")
    n = len(rollouts)
    if n == 0:
        raise ValueError("rollouts is empty: a step needs at least one completion")
    if not isinstance(advantages, Tensor) or advantages.shape != (n,):
        shape = tuple(advantages.shape) if isinstance(advantages, Tensor) else type(advantages)
        raise ValueError(f"advantages must be a [N] tensor with N={n}, got {shape}")
    if not torch.isfinite(advantages).all():
        raise ValueError("advantages must be finite, got NaN or inf")
    if loss_mask is not None and loss_mask.shape != rollouts.completion_mask.shape:
        raise ValueError(f"loss_mask must have completion_mask's shape "
                         f"{tuple(rollouts.completion_mask.shape)}, got {tuple(loss_mask.shape)}")
