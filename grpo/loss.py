"""The GRPO objective: clipped surrogate with a KL penalty (DeepSeekMath eq. 3), and the variants
GRPO-family peers ship (GSPO, verl's KL estimators, TRL's bias-corrected KL, sampler corrections).

Pure tensor functions; nothing here knows about models or engines.

How we differ from the paper, and from implementations that got it wrong:

* Three aggregations, one named branch each (`loss_type`): "grpo" (per-sequence mean, then mean
  over sequences), "token_mean" (DAPO eq. 8) and "dr_grpo" (a constant divisor, Dr. GRPO).
* The divisor of an optimizer step travels as `normalizer`. A loss computed on one micro-batch
  (or on one data-parallel rank) is *its share of the whole step's sum*, divided by the whole
  step's divisor from `loss_normalizer`, so summing micro-batch gradients gives exactly the
  full-batch gradient, for every loss type, however the batch is split. Without it each piece is
  averaged on its own and the step's gradient depends on the split (TRL's 0.5x / 4x bugs).
  Every per-completion quantity below (GSPO's ratio, the sequence-level weights) is computed
  from its own row only, so splitting by rows keeps it exact.
* Padding is zeroed before any arithmetic, so garbage (even inf) at masked positions can never
  turn into NaN gradients.
* Variants, one named branch each (docs/architecture.md has the table and sources):
  `importance_sampling_level="sequence"` (GSPO: one ratio per completion), `kl_estimator`
  (k3, k1, k2, verl's k3_plus), `kl_ratio_weight` (TRL's `use_bias_correction_kl`) and
  `tis_mode` with `tis_cap` C: constant weights pi_old / pi_sampler on the surrogate, per token or
  per completion, truncated at C, or 1 up to C and 0 above (Yao et al. 2025; TRL's
  `vllm_importance_sampling_mode`, whose masks keep w, not 1), for a sampler (vLLM, often bf16)
  whose probabilities differ a little from the trainer's. The KL term and divisor are unweighted.
"""

from __future__ import annotations

import typing
from typing import Literal, NamedTuple

import torch
from torch import Tensor

LossType = Literal["grpo", "token_mean", "dr_grpo"]
LOSS_TYPES = typing.get_args(LossType)
ImportanceSamplingLevel = Literal["token", "sequence"]
KLEstimator = Literal["k3", "k1", "k2", "k3_plus"]
TISMode = Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


class LossOutput(NamedTuple):
    loss: Tensor  # scalar
    metrics: dict[str, Tensor]  # detached scalars: "kl" (mean of the chosen estimator, when a
    # reference is given), "clip_ratio", and with tis_cap "tis_weight" (mean weight) and
    # "tis_capped" (fraction of tokens whose w > C: truncated to C, or masked to 0, by tis_mode;
    # in the sequence modes every token of a completion with rho_i > C)


def k3_kl(
    logprobs: Tensor,  # [N, T] policy log-probs of the chosen tokens
    ref_logprobs: Tensor,  # [N, T] reference log-probs of the same tokens
) -> Tensor:  # [N, T]
    """Schulman's k3 estimator of KL(policy || ref), per token ("Approximating KL divergence").

    k3 = exp(ref - logp) - (ref - logp) - 1, unbiased for samples of the policy and always >= 0.
    """
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


def loss_normalizer(
    completion_mask: Tensor,  # [N, T]
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
) -> Tensor:  # scalar, same dtype family as float32
    """The divisor of one optimizer step's loss, computed on the *whole* step's mask.

    "grpo": the number of sequences with at least one token; "token_mean": the number of tokens;
    "dr_grpo": N * max_completion_length (T when None). Add it up over data-parallel ranks
    (all_reduce SUM) before passing it to `grpo_loss` as `normalizer`.
    """
    _check_choice("loss_type", loss_type, LossType)
    mask = completion_mask.bool()
    if loss_type == "grpo":
        return mask.any(dim=-1).sum().float()
    if loss_type == "token_mean":
        return mask.sum().float()
    length = mask.shape[-1] if max_completion_length is None else max_completion_length
    return torch.tensor(float(mask.shape[0] * length), device=mask.device)


def grpo_loss(
    logprobs: Tensor,  # [N, T] policy log-probs of the sampled tokens (with grad)
    old_logprobs: Tensor | None,  # [N, T] log-probs of the policy that sampled; None = on-policy
    ref_logprobs: Tensor | None,  # [N, T] frozen reference log-probs; None only when beta == 0
    advantages: Tensor,  # [N]
    completion_mask: Tensor,  # [N, T] 1 on tokens that count, 0 on padding
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    beta: float = 0.04,
    loss_type: str = "grpo",
    max_completion_length: int | None = None,
    normalizer: Tensor | float | None = None,
    sampler_logprobs: Tensor | None = None,  # [N, T] the sampler's log-probs of the same tokens
    tis_cap: float | None = None,
    importance_sampling_level: ImportanceSamplingLevel = "token",
    kl_estimator: KLEstimator = "k3",
    kl_ratio_weight: bool = False,
    tis_mode: TISMode = "token_truncate",
) -> LossOutput:
    """Clipped surrogate minus beta * KL, aggregated by `loss_type`, as a loss to minimise.

    `normalizer` is the divisor of the whole optimizer step (`loss_normalizer` on the step's full
    mask, summed over ranks). None means this batch is the whole step. An engine whose data
    parallelism *averages* gradients over W ranks passes the global normalizer divided by W.
    `tis_cap` C (with `sampler_logprobs`) weights each token's surrogate by a constant importance
    weight from the sampler's distribution to the old policy's (old = logprobs.detach() when
    `old_logprobs` is None), chosen by `tis_mode`. The variants are in the module docstring.
    """
    _check_inputs(logprobs, old_logprobs, ref_logprobs, advantages, completion_mask,
                  sampler_logprobs)
    _check_hparams(eps_low, eps_high, beta, loss_type, max_completion_length, tis_cap,
                   importance_sampling_level, kl_estimator, tis_mode)
    _check_pairs(beta, ref_logprobs, tis_cap, sampler_logprobs)

    mask = completion_mask.bool()
    zero = logprobs.new_zeros(())
    # Zero padding first: exp() of garbage at masked positions must not reach the gradient.
    logprobs = torch.where(mask, logprobs, zero)
    old = logprobs.detach() if old_logprobs is None else torch.where(mask, old_logprobs, zero)
    adv = advantages.unsqueeze(-1)  # [N, 1]

    log_ratio = logprobs - old  # [N, T], 0 on padding
    ratio = _ratio(log_ratio, mask, importance_sampling_level)  # [N, T]
    objective = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv)
    metrics: dict[str, Tensor] = {}
    if tis_cap is not None:
        log_w = old.detach() - torch.where(mask, sampler_logprobs, zero)  # [N, T], 0 on padding
        weight, capped = _tis_weights(log_w, tis_cap, tis_mode)
        objective = objective * weight
        metrics["tis_weight"] = _masked_mean(weight, mask)
        metrics["tis_capped"] = _masked_mean(capped.to(logprobs.dtype), mask)
    if ref_logprobs is not None:
        kl = _kl(logprobs, torch.where(mask, ref_logprobs, zero), kl_estimator)
        if beta != 0:
            # kl_ratio_weight (TRL's use_bias_correction_kl): the tokens were drawn from pi_old,
            # so r_t reweights the estimate to pi's samples; on-policy r_t = 1 with a gradient.
            penalty = kl * torch.exp(log_ratio) if kl_ratio_weight else kl
            objective = objective - beta * penalty
        metrics["kl"] = _masked_mean(kl.detach(), mask)
    per_token = torch.where(mask, -objective, zero)  # [N, T]
    loss = _aggregate(per_token, mask, loss_type, max_completion_length, normalizer)

    # Tokens where the clipped branch is the smaller one: the objective's gradient is cut there.
    is_clipped = ((ratio > 1 + eps_high) & (adv > 0)) | ((ratio < 1 - eps_low) & (adv < 0))
    metrics["clip_ratio"] = _masked_mean(is_clipped.to(logprobs.dtype), mask)
    return LossOutput(loss, metrics)


def _ratio(
    log_ratio: Tensor,  # [N, T] log(pi / pi_old) per token, 0 on padding
    mask: Tensor,  # [N, T] bool
    level: str,
) -> Tensor:  # [N, T] the ratio each token's surrogate uses
    if level == "sequence":  # GSPO eq. 7: s_i = exp(mean over completion i's tokens of log r_t)
        lengths = mask.sum(dim=-1, keepdim=True).clamp(min=1)
        return torch.exp(log_ratio.sum(dim=-1, keepdim=True) / lengths).expand_as(log_ratio)
    return torch.exp(log_ratio)  # "token": r_t = pi / pi_old (PPO; DeepSeekMath eq. 3)


def _kl(
    logprobs: Tensor,  # [N, T]
    ref_logprobs: Tensor,  # [N, T]
    estimator: str,
) -> Tensor:  # [N, T] per-token estimate of KL(pi || ref), Schulman's "Approximating KL"
    # As a loss on samples of pi, k1's gradient is 0 in expectation, k2's is unbiased for
    # grad KL(pi || ref) and k3's for grad KL(ref || pi).
    if estimator == "k3":  # e^d - d - 1 with d = ref - logp: unbiased, >= 0
        return k3_kl(logprobs, ref_logprobs)
    d = ref_logprobs - logprobs
    if estimator == "k1":  # -d = log(pi / ref): unbiased, can be negative
        return -d
    k2 = d * d / 2  # d^2 / 2: biased, >= 0
    if estimator == "k2":
        return k2
    # "k3_plus" (verl's "k3+"): the value of k3, the gradient of k2
    return k3_kl(logprobs, ref_logprobs).detach() + k2 - k2.detach()


def _tis_weights(
    log_w: Tensor,  # [N, T] log(pi_old / pi_sampler) per token, 0 on padding
    cap: float,  # C
    mode: str,
) -> tuple[Tensor, Tensor]:  # weight [N, T] (no gradient), capped [N, T] bool: w > C
    if mode in ("token_truncate", "token_mask"):
        w = torch.exp(log_w)  # w_t, per token
    else:  # "sequence_truncate", "sequence_mask": rho_i = exp(sum of the completion's log w_t)
        w = torch.exp(log_w.sum(dim=-1, keepdim=True)).expand_as(log_w)
    capped = w > cap
    if mode in ("token_truncate", "sequence_truncate"):  # TIS: min(w, C)
        return w.clamp(max=cap), capped
    return (w <= cap).to(w.dtype), capped  # "token_mask", "sequence_mask" (MIS): 1 if w <= C


def _aggregate(
    per_token: Tensor,  # [N, T] token losses, 0 on padding
    mask: Tensor,  # [N, T] bool
    loss_type: str,
    max_completion_length: int | None,
    normalizer: Tensor | float | None,
) -> Tensor:  # scalar: this batch's share of the step's sum / the step's divisor
    if loss_type == "grpo":  # DeepSeekMath eq. 3: each sequence's own mean, then over sequences
        lengths = mask.sum(dim=-1).clamp(min=1)
        numerator = (per_token.sum(dim=-1) / lengths).sum()
    else:  # "token_mean" (DAPO eq. 8) and "dr_grpo" differ only in the divisor
        numerator = per_token.sum()
    if normalizer is None:
        normalizer = loss_normalizer(mask, loss_type, max_completion_length)
    return numerator / torch.as_tensor(normalizer, dtype=numerator.dtype).clamp(min=1)


class GRPOLoss(torch.nn.Module):
    """`grpo_loss` with its hyper-parameters bound; `eps_high=None` means symmetric clipping."""

    def __init__(
        self,
        eps_low: float = 0.2,
        eps_high: float | None = None,
        beta: float = 0.04,
        loss_type: str = "grpo",
        max_completion_length: int | None = None,
        tis_cap: float | None = None,
        importance_sampling_level: ImportanceSamplingLevel = "token",
        kl_estimator: KLEstimator = "k3",
        kl_ratio_weight: bool = False,
        tis_mode: TISMode = "token_truncate",
    ):
        super().__init__()
        self.eps_low = eps_low
        self.eps_high = eps_low if eps_high is None else eps_high
        self.beta = beta
        self.loss_type = loss_type
        self.max_completion_length = max_completion_length
        self.tis_cap = tis_cap  # None: no importance weights (the sampler is taken as the policy)
        self.importance_sampling_level = importance_sampling_level
        self.kl_estimator = kl_estimator
        self.kl_ratio_weight = kl_ratio_weight
        self.tis_mode = tis_mode
        _check_hparams(self.eps_low, self.eps_high, beta, loss_type, max_completion_length,
                       tis_cap, importance_sampling_level, kl_estimator, tis_mode)

    def forward(
        self,
        logprobs: Tensor,  # [N, T]
        old_logprobs: Tensor | None,  # [N, T]
        ref_logprobs: Tensor | None,  # [N, T]
        advantages: Tensor,  # [N]
        completion_mask: Tensor,  # [N, T]
        normalizer: Tensor | float | None = None,
        sampler_logprobs: Tensor | None = None,  # [N, T]; used (and required) with tis_cap
    ) -> LossOutput:
        return grpo_loss(
            logprobs, old_logprobs, ref_logprobs, advantages, completion_mask,
            eps_low=self.eps_low, eps_high=self.eps_high, beta=self.beta,
            loss_type=self.loss_type, max_completion_length=self.max_completion_length,
            normalizer=normalizer, sampler_logprobs=sampler_logprobs, tis_cap=self.tis_cap,
            importance_sampling_level=self.importance_sampling_level,
            kl_estimator=self.kl_estimator, kl_ratio_weight=self.kl_ratio_weight,
            tis_mode=self.tis_mode,
        )

    def normalizer(self, completion_mask: Tensor) -> Tensor:  # completion_mask: [N, T]
        return loss_normalizer(completion_mask, self.loss_type, self.max_completion_length)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:  # values, mask: [N, T]
    return (values * mask).sum() / mask.sum().clamp(min=1)


def _check_choice(name: str, value, literal) -> None:
    allowed = typing.get_args(literal)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _check_hparams(eps_low, eps_high, beta, loss_type, max_completion_length, tis_cap=None,
                   importance_sampling_level="token", kl_estimator="k3",
                   tis_mode="token_truncate") -> None:
    _check_choice("loss_type", loss_type, LossType)
    _check_choice("importance_sampling_level", importance_sampling_level, ImportanceSamplingLevel)
    _check_choice("kl_estimator", kl_estimator, KLEstimator)
    _check_choice("tis_mode", tis_mode, TISMode)
    for name, eps in (("eps_low", eps_low), ("eps_high", eps_high)):
        if not 0 < eps < 1:
            raise ValueError(f"{name} must be in (0, 1), got {eps}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if max_completion_length is not None and max_completion_length < 1:
        raise ValueError(f"max_completion_length must be >= 1, got {max_completion_length}")
    if tis_cap is not None and not tis_cap >= 1:
        raise ValueError(f"tis_cap must be >= 1 (or None: no importance weights), got {tis_cap}")
    if tis_cap is None and tis_mode != "token_truncate":
        raise ValueError(f"tis_mode={tis_mode!r} needs tis_cap (None: no importance weights)")


def _check_inputs(logprobs, old_logprobs, ref_logprobs, advantages, completion_mask,
                  sampler_logprobs=None) -> None:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [N, T], got shape {tuple(logprobs.shape)}")
    shape = logprobs.shape
    for name, t in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs),
                    ("completion_mask", completion_mask), ("sampler_logprobs", sampler_logprobs)):
        if t is not None and t.shape != shape:
            raise ValueError(f"{name} must have logprobs' shape {tuple(shape)}, "
                             f"got {tuple(t.shape)}")
    if advantages.shape != shape[:1]:
        raise ValueError(f"advantages must be [N] with N={shape[0]}, "
                         f"got shape {tuple(advantages.shape)}")


def _check_pairs(beta, ref_logprobs, tis_cap, sampler_logprobs) -> None:
    if beta != 0 and ref_logprobs is None:
        raise ValueError(f"ref_logprobs is None but beta={beta}: a KL penalty needs the reference")
    if (tis_cap is None) != (sampler_logprobs is None):
        raise ValueError("truncated importance sampling needs both tis_cap and sampler_logprobs, "
                         f"got tis_cap={tis_cap} and sampler_logprobs="
                         f"{'None' if sampler_logprobs is None else 'a tensor'}")
