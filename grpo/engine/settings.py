"""What an optimizer step does, as two frozen settings objects the engines take whole.

`StepSettings` holds everything both engines do the same way: the objective (grpo.loss), the
update (AdamW, schedule, clipping, mu updates per batch, micro-batches) and the forward (bf16,
checkpointing, the shared-prompt forward). `ZeroSettings` holds what only DeepSpeedEngine has;
`LoraSettings` whether (and how) both engines train a LoRA adapter instead of every weight.
Each is checked once, in `__post_init__`, before any model is loaded; each error names its field.
Field names are GRPOConfig's, so a config maps onto them one to one.

The sets of allowed values are `Literal` types, defined once (here, or in the module whose math
they name: `LossType` in grpo.loss) and read with `typing.get_args` where they are checked.
"""

from __future__ import annotations

import math
import tempfile
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from grpo.loss import GRPOLoss, ImportanceSamplingLevel, KLEstimator, LossType, TISMode

Schedule = Literal["constant", "cosine"]
Offload = Literal["none", "cpu", "nvme"]
ZeroStage = Literal[2, 3]


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def check_choice(name: str, value, literal) -> None:
    allowed = typing.get_args(literal)
    check(value in allowed, f"{name} must be one of {allowed}, got {value!r}")


@dataclass(frozen=True)
class StepSettings:
    # the objective (grpo.loss.grpo_loss)
    loss_type: LossType = "grpo"
    beta: float = 0.04  # KL weight; 0 loads no reference model
    eps_low: float = 0.2
    eps_high: float | None = None  # None: eps_low
    max_completion_length: int | None = None  # Dr. GRPO's divisor (None: the batch's T)
    tis_cap: float | None = None  # truncated importance sampling cap; None: off
    tis_mode: TISMode = "token_truncate"  # per token or per completion, truncate or mask
    importance_sampling_level: ImportanceSamplingLevel = "token"  # "sequence": GSPO
    kl_estimator: KLEstimator = "k3"
    kl_ratio_weight: bool = False  # the KL term times pi / pi_old (TRL's use_bias_correction_kl)
    temperature: float = 1.0  # the sampler's: log-probs are of logits / temperature
    # the update
    learning_rate: float = 1e-6
    lr_scheduler_type: Schedule = "constant"
    warmup_steps: int = 0
    max_steps: int | None = None  # where the cosine schedule reaches 0
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.99)
    max_grad_norm: float = 1.0  # 0: no clipping
    num_iterations: int = 1  # mu in DeepSeekMath: updates per sampled batch
    micro_batch_size: int | None = None  # rows per forward/backward; None: the whole batch
    # the forward
    bf16: bool = False
    gradient_checkpointing: bool = False
    share_prompt_forward: bool = True  # each group's prompt once (grpo.shared_prompt)
    logprob_chunk_size: int = 1024  # tokens per output-projection chunk (grpo.logprobs)

    def __post_init__(self):
        check_choice("lr_scheduler_type", self.lr_scheduler_type, Schedule)
        self.loss()  # the objective's own checks (loss_type, eps, beta, tis_cap)
        check(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        check(self.learning_rate >= 0, f"learning_rate must be >= 0, got {self.learning_rate}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas),
              f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        check(self.max_grad_norm >= 0, f"max_grad_norm must be >= 0 (0: no clipping), "
                                       f"got {self.max_grad_norm}")
        check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        check(self.max_steps is None or self.max_steps >= 1,
              f"max_steps must be >= 1 or None, got {self.max_steps}")
        check(self.lr_scheduler_type != "cosine" or self.max_steps is not None,
              "lr_scheduler_type='cosine' needs max_steps")
        for name in ("num_iterations", "logprob_chunk_size"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        check(self.micro_batch_size is None or self.micro_batch_size >= 1,
              f"micro_batch_size must be >= 1 or None (the whole batch), "
              f"got {self.micro_batch_size}")

    def loss(self) -> GRPOLoss:
        return GRPOLoss(eps_low=self.eps_low, eps_high=self.eps_high, beta=self.beta,
                        loss_type=self.loss_type, max_completion_length=self.max_completion_length,
                        tis_cap=self.tis_cap, tis_mode=self.tis_mode,
                        importance_sampling_level=self.importance_sampling_level,
                        kl_estimator=self.kl_estimator, kl_ratio_weight=self.kl_ratio_weight)

    def learning_rate_at(self, step: int) -> float:
        """The learning rate of step number `step` (0-based): linear warmup over
        `warmup_steps`, then constant or a cosine decay that reaches 0 at `max_steps`.

        A pure function of the step count, written into the optimizer before each step rather
        than a stateful LRScheduler: both engines get the same numbers (DeepSpeed's scheduler
        hooks skip on overflow, this must not), and a checkpoint needs only the step count."""
        base, warmup = self.learning_rate, self.warmup_steps
        if step < warmup:
            return base * (step + 1) / (warmup + 1)
        if self.lr_scheduler_type == "constant":
            return base
        progress = min(1.0, (step - warmup) / max(1, self.max_steps - warmup))
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class ZeroSettings:
    zero_stage: ZeroStage = 3
    offload_optimizer: Offload = "none"
    offload_param: Offload = "none"  # ZeRO-3 only
    nvme_path: str | None = None  # folder for nvme offload
    deepspeed_config: dict | str | None = None  # DeepSpeed tuning merged over ours (dict or JSON)

    def __post_init__(self):
        check_choice("zero_stage", self.zero_stage, ZeroStage)
        check_choice("offload_optimizer", self.offload_optimizer, Offload)
        check_choice("offload_param", self.offload_param, Offload)
        check(self.offload_param == "none" or self.zero_stage == 3,
              f"offload_param={self.offload_param!r} needs zero_stage=3 (ZeRO-2 does not "
              f"partition parameters), got zero_stage={self.zero_stage}")
        check(not self.uses_nvme or bool(self.nvme_path),
              f"nvme offload needs nvme_path (a folder on a fast local disk), "
              f"got nvme_path={self.nvme_path!r}")

    @property
    def uses_nvme(self) -> bool:
        return "nvme" in (self.offload_optimizer, self.offload_param)

    def check_nvme_path(self) -> None:
        """The nvme folder exists (or is created) and is writable; run when an engine starts."""
        if not self.uses_nvme:
            return
        path = Path(self.nvme_path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path):
                pass
        except OSError as err:
            raise ValueError(f"nvme_path {str(path)!r} is not a writable folder: {err}") from None


@dataclass(frozen=True)
class LoraSettings:
    """A LoRA adapter built with peft (`lora_r` = 0: off, every weight trains)."""

    lora_r: int = 0  # rank; 0: full fine-tuning
    lora_alpha: float | None = None  # the update is B @ A * lora_alpha / lora_r; None: 2 * lora_r
    lora_dropout: float = 0.0  # on the adapter's input; > 0 makes every policy forward random
    lora_target_modules: tuple[str, ...] | None = None  # None: every linear layer of the blocks
    seed: int = 0  # the adapter's initial A (B starts at 0: the first policy is the base model)

    def __post_init__(self):
        check(isinstance(self.lora_r, int) and self.lora_r >= 0,
              f"lora_r must be an integer >= 0 (0: no LoRA), got {self.lora_r!r}")
        check(self.lora_alpha is None or self.lora_alpha > 0,
              f"lora_alpha must be > 0 or None (2 * lora_r), got {self.lora_alpha}")
        check(0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        targets = self.lora_target_modules
        check(targets is None or (len(targets) > 0 and all(isinstance(t, str) and t
                                                            for t in targets)),
              f"lora_target_modules must be None (every linear layer of the transformer blocks) "
              f"or a non-empty list of module names, got {targets!r}")
        if targets is not None and not isinstance(targets, tuple):
            object.__setattr__(self, "lora_target_modules", tuple(targets))  # frozen, hashable

    @property
    def enabled(self) -> bool:
        return self.lora_r > 0

    def peft_config(self):
        """peft's LoraConfig; "all-linear" is peft's every linear layer but the output layer."""
        from peft import LoraConfig

        targets = list(self.lora_target_modules) if self.lora_target_modules else "all-linear"
        alpha = 2 * self.lora_r if self.lora_alpha is None else self.lora_alpha
        return LoraConfig(r=self.lora_r, lora_alpha=alpha, lora_dropout=self.lora_dropout,
                          target_modules=targets, bias="none", task_type="CAUSAL_LM")
