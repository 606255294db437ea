"""GRPOConfig: one flat dataclass, a docstring under each field, checked in __post_init__.

Loaded from YAML (`--config recipe.yaml`) with command-line overrides (`--learning_rate 1e-6`) by
grpo.cli, whose `--help` shows each field's docstring under the `# --- group ---` comment above it.
Key names follow TRL's GRPOConfig where they mean the same thing, so a TRL user's YAML mostly
carries over. Batch semantics are TRL's: `per_device_train_batch_size` counts
*completions* per micro-batch, and one optimizer step sees
per_device_train_batch_size * gradient_accumulation_steps completions per rank, i.e.
that / num_generations prompts per rank.
"""

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from typing import Literal
from pathlib import Path

from grpo.advantages import Scale
from grpo.engine.settings import (LoraSettings, Offload, Schedule, StepSettings, ZeroSettings,
                                  ZeroStage, check, check_choice)
from grpo.loss import ImportanceSamplingLevel, KLEstimator, LossType, TISMode
from grpo.rewards import NAMED_REWARDS

EngineName = Literal["torch", "deepspeed"]
SamplerName = Literal["vllm", "vllm_server", "hf"]
ReportTo = Literal["tensorboard", "none"]
VLLMDtype = Literal["auto", "float32", "bfloat16"]
LoraSync = Literal["adapter", "merged"]


@dataclass
class GRPOConfig:
    # --- model and data ---
    model: str = "smollm2-135m-instruct"
    """Local model directory, hub id (online only), or the packaged default."""
    dataset: str = "countdown"
    """"countdown" generates puzzles locally; otherwise a local JSON/JSONL/parquet path or hub name."""
    dataset_column_map: dict = field(default_factory=dict)
    """Renames dataset columns to the names the rewards and template expect, e.g. {"answer": "target"}."""
    template: str = "countdown"
    """Prompt template (system message, user message, assistant prefill) from grpo.data."""
    num_train: int = 2000
    """Generated Countdown puzzles for training."""
    num_test: int = 64
    """Held-out puzzles (generated Countdown) or rows (other datasets) for evaluation."""
    countdown_num_numbers: list = field(default_factory=lambda: [3, 4])
    """How many numbers a generated puzzle has (choices)."""
    countdown_number_range: list = field(default_factory=lambda: [1, 99])
    """Inclusive range of the puzzle numbers."""
    countdown_target_range: list = field(default_factory=lambda: [10, 100])
    """Inclusive range of the targets."""
    max_prompt_length: int = 256
    """Prompts longer than this (tokens) are dropped and counted, never cut."""

    # --- sampling ---
    num_generations: int = 8
    """G in DeepSeekMath: completions per prompt."""
    max_completion_length: int = 1024
    """max_tokens of the sampler; also the Dr. GRPO divisor."""
    temperature: float = 1.0
    """Sampling temperature; the trainer scores log-probs at the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling."""
    sampler: SamplerName = "vllm"
    """"vllm" (an engine inside each training process), "vllm_server" (separate `vllm serve`
    processes at vllm_server_urls, e.g. on their own GPUs) or "hf" (transformers generate)."""
    dynamic_sampling: bool = False
    """DAPO's dynamic sampling (verl's filter_groups): groups whose rewards all tie teach nothing,
    so they are set aside and the next prompts of the data order are sampled, in rounds, until
    each rank has its prompts_per_step groups with signal or dynamic_sampling_max_rounds extra
    rounds are spent; tied groups then fill what is missing. The trained batch keeps its size."""
    dynamic_sampling_max_rounds: int = 3
    """Extra sampling rounds a step may spend under dynamic_sampling."""
    vllm_dtype: VLLMDtype = "auto"
    """vLLM's weights and compute. "auto": bf16 when `bf16` is set, else vLLM's own choice, which
    on a CPU with native bf16 (AVX-512 BF16, AMX) is bf16 and on other CPUs fp32 (grpo's rule:
    emulated bf16 is slower). "float32" / "bfloat16" force it (fp32 samples exactly the policy
    an fp32 trainer scores; see benchmarks/RESULTS.md)."""
    vllm_kv_cache_gb: float = 1.0
    """KV cache of the CPU build (its default would reserve most of the machine's memory)."""
    vllm_gpu_memory_utilization: float = 0.3
    """Fraction of GPU memory vLLM takes when colocated with training."""
    vllm_enforce_eager: bool = False
    """Skip vLLM's graph compile: starts in seconds instead of ~50 s, runs ~20 % slower."""
    vllm_enable_sleep_mode: bool = False
    """GPU: free vLLM's memory while training."""
    vllm_server_urls: list = field(default_factory=list)
    """sampler=vllm_server: base URLs of the `vllm serve` processes (start one with
    `python -m grpo.sampler.server`), e.g. [http://10.0.0.4:8000]. Rank r sends its requests to
    url r mod len(urls); rank 0 sends the new weights to all of them."""
    vllm_server_timeout: float = 300.0
    """sampler=vllm_server: seconds one generation request, or one weight transfer call, may
    take before the step fails with an error naming the server (a dead server fails at once)."""
    vllm_server_startup_timeout: float = 600.0
    """sampler=vllm_server: seconds to wait for the servers' /health at start."""

    # --- rewards ---
    rewards: list = field(default_factory=lambda: ["format", "countdown"])
    """Reward functions by name: format, partial_format, countdown (a trailing "= target"
    allowed), countdown_strict (no "="), countdown_numbers (shaping: the share of the answer's
    numbers that are the puzzle's), choice, math, overlong (DAPO's soft length penalty, 0 to -1
    over the last overlong_buffer tokens)."""
    reward_weights: list | None = None
    """One weight per reward (None: all 1.0)."""
    overlong_buffer: int | None = None
    """Tokens before max_completion_length over which the "overlong" reward falls from 0 to -1
    (DAPO: 4096 of 20480). None: a quarter of max_completion_length."""

    # --- loss ---
    loss_type: LossType = "grpo"
    """"grpo" (DeepSeekMath), "token_mean" (DAPO) or "dr_grpo" (Dr. GRPO)."""
    beta: float = 0.04
    """KL penalty weight (kl_estimator to the frozen reference); 0 loads no reference model."""
    eps_low: float = 0.2
    """Lower clip range of the ratio."""
    eps_high: float | None = None
    """Upper clip range (None: eps_low); DAPO's clip-higher uses 0.28."""
    scale_rewards: Scale = "group"
    """Advantage scaling: "group" std, "batch" std, or "none" (Dr. GRPO)."""
    mask_truncated_completions: bool = False
    """Leave completions cut by max_completion_length out of the loss (DAPO's overlong filter)."""
    tis_cap: float | None = None
    """Truncated importance sampling (TRL's vllm_importance_sampling_correction / _cap): weight
    each token's surrogate by min(pi_policy / pi_sampler, tis_cap) (or as tis_mode says),
    correcting for a sampler that computes in another precision (bf16 vLLM under an fp32
    trainer, or vLLM's bf16 kernels under a bf16 trainer). None: off. TRL uses 2-3; an exact
    sampler (fp32 here) gives weights of 1."""
    tis_mode: TISMode = "token_truncate"
    """With tis_cap C, the weight from w = pi_policy / pi_sampler: per token, min(w, C)
    ("token_truncate", TIS in Yao et al. 2025) or 1 if w <= C else 0 ("token_mask"); per
    completion, with rho = the product of its tokens' w, min(rho, C) ("sequence_truncate") or 1 if
    rho <= C else 0 ("sequence_mask"; masking: Liu, Li et al. 2025, "When Speed Kills
    Stability"). TRL's vllm_importance_sampling_mode, whose *_mask modes keep weight w, not 1."""
    importance_sampling_level: ImportanceSamplingLevel = "token"
    """"token": one ratio pi / pi_old per token (PPO, DeepSeekMath); "sequence": GSPO (Zheng et
    al. 2025), one ratio per completion, exp of the mean of its tokens' log-ratios, clipped as a
    whole; GSPO clips it at eps_low 3e-4, eps_high 4e-4. TRL's importance_sampling_level."""
    kl_estimator: KLEstimator = "k3"
    """KL penalty estimator, d = log pi_ref - log pi (Schulman's "Approximating KL divergence"):
    "k3" e^d - d - 1, "k1" -d, "k2" d^2 / 2, "k3_plus" k3's value with k2's gradient (verl's
    "k3+")."""
    kl_ratio_weight: bool = False
    """Multiply each token's KL term by the ratio pi / pi_old, with its gradient (TRL's
    use_bias_correction_kl, its default; DeepSeek-V3.2): the KL of pi estimated on pi_old's
    samples, whose k3 gradient is then unbiased for KL(pi || ref)'s."""

    # --- optimisation ---
    per_device_train_batch_size: int = 8
    """Completions per micro-batch on each rank (TRL's meaning)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step; the step's gradient does not depend on this split."""
    num_iterations: int = 1
    """mu in DeepSeekMath: updates per sampled batch (old log-probs fixed before the first)."""
    learning_rate: float = 1e-6
    """AdamW learning rate."""
    lr_scheduler_type: Schedule = "constant"
    """"constant" or "cosine" (to 0 after warmup)."""
    warmup_ratio: float = 0.0
    """Fraction of max_steps spent in linear warmup."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    max_steps: int = 100
    """Optimizer steps (one sampled batch each)."""
    seed: int = 42
    """Seeds the data order, the sampler (grpo.seeds.derive_seed(seed, step, round) and each
    completion's row in the step's batch over all ranks, so any number of processes draws the
    same completions) and a LoRA adapter's initial A."""

    # --- engine ---
    engine: EngineName = "torch"
    """"torch" (one process) or "deepspeed" (ZeRO-2/3, launched with torchrun or deepspeed)."""
    zero_stage: ZeroStage = 3
    """DeepSpeed ZeRO stage (2 or 3)."""
    offload_optimizer: Offload = "none"
    """DeepSpeed optimizer offload: none, cpu or nvme."""
    offload_param: Offload = "none"
    """DeepSpeed parameter offload (ZeRO-3): none, cpu or nvme."""
    nvme_path: str | None = None
    """Directory for NVMe offload."""
    deepspeed_config: str | None = None
    """Path to a DeepSpeed JSON config merged over the one built from these fields."""
    bf16: bool = False
    """bf16 autocast for training and bf16 vLLM (GPU); fp32 on CPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    share_prompt_forward: bool = True
    """Run each group's shared prompt through the model once per micro-batch, not G times (the
    completions attend to its KV cache): the same log-probs and gradients, less compute. Saves
    most when per_device_train_batch_size is a multiple of num_generations; not taken under
    gradient_checkpointing (transformers drops the cache in checkpointed layers)."""

    # --- lora ---
    lora_r: int = 0
    """LoRA rank (peft); 0: full fine-tuning. With LoRA only the adapter trains and sits in the
    optimizer, and the KL reference is the base model (the adapter switched off), no second copy.
    LoRA wants a larger learning_rate than full fine-tuning (1e-5 to 1e-4 where full uses 1e-6)."""
    lora_alpha: float | None = None
    """The adapter's update is B @ A * lora_alpha / lora_r; None: 2 * lora_r."""
    lora_dropout: float = 0.0
    """Dropout on the adapter's input; > 0 makes every policy forward random (old log-probs too)."""
    lora_target_modules: list | None = None
    """Module names to adapt, e.g. [q_proj, v_proj]; None: every linear layer of the transformer
    blocks (peft's "all-linear": all but the output layer)."""
    lora_sync: LoraSync = "merged"
    """How the sampler gets the policy after each step: "merged" pushes the whole model with the
    adapter merged in; "adapter" sends only the adapter (vLLM's LoRA support, a new adapter id
    per step; vllm sampler only). Measured on the CPU recipe (benchmarks/RESULTS.md): adapter
    sync takes 0.2 s instead of 1.3 s but vLLM decodes 1.85x slower with an adapter, so merged
    is the default; adapter pays off where a whole-model push is costly (large models)."""

    # --- logging and checkpoints ---
    output_dir: str = "runs/countdown"
    """Checkpoints, TensorBoard logs, metrics.jsonl and completions.jsonl go here."""
    report_to: ReportTo = "tensorboard"
    """"tensorboard" or "none" (metrics.jsonl is always written)."""
    logging_steps: int = 1
    """Write metrics every this many steps."""
    log_completions_steps: int = 10
    """Write every completion of a step to completions.jsonl every this many steps (0: never)."""
    eval_steps: int = 0
    """Greedy evaluation on the test split every this many steps, and at start and end (0: never)."""
    save_steps: int = 50
    """Checkpoint every this many steps (0: only at the end)."""
    save_total_limit: int = 2
    """Keep the last this many checkpoints."""
    resume_from_checkpoint: str | None = None
    """A checkpoint directory, or "latest" for the newest in output_dir."""

    def __post_init__(self):
        hints = typing.get_type_hints(GRPOConfig)
        for name in ("scale_rewards", "engine", "sampler", "report_to", "vllm_dtype", "lora_sync"):
            check_choice(name, getattr(self, name), hints[name])
        for name in ("num_generations", "per_device_train_batch_size", "max_steps",
                     "gradient_accumulation_steps", "max_prompt_length", "max_completion_length",
                     "logging_steps", "save_total_limit"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        check(self.num_generations >= 2,
              f"num_generations must be >= 2 (GRPO compares completions), "
              f"got {self.num_generations}")
        check(self.completions_per_step % self.num_generations == 0,
              f"per_device_train_batch_size * gradient_accumulation_steps = "
              f"{self.per_device_train_batch_size} * {self.gradient_accumulation_steps} = "
              f"{self.completions_per_step} completions per rank is not divisible by "
              f"num_generations={self.num_generations}")
        check(self.dynamic_sampling_max_rounds >= 0, f"dynamic_sampling_max_rounds must be >= 0, "
              f"got {self.dynamic_sampling_max_rounds}")
        check(0 <= self.warmup_ratio < 1,
              f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        check(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        for name in ("num_train", "num_test", "eval_steps", "save_steps", "log_completions_steps"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        for name in self.rewards:
            close = difflib.get_close_matches(str(name), NAMED_REWARDS, n=1)
            check(isinstance(name, str) and name in NAMED_REWARDS,
                  f"rewards: unknown reward {name!r}"
                  + (f" (did you mean {close[0]!r}?)" if close else "")
                  + f"; known: {sorted(NAMED_REWARDS)}")
        check(self.overlong_buffer is None
              or 0 < self.overlong_buffer <= self.max_completion_length,
              f"overlong_buffer must be in [1, max_completion_length="
              f"{self.max_completion_length}], got {self.overlong_buffer}")
        if self.reward_weights is not None:
            check(len(self.reward_weights) == len(self.rewards),
                  f"reward_weights has {len(self.reward_weights)} entries but rewards has "
                  f"{len(self.rewards)}: {self.rewards}")
        self.step_settings(), self.zero_settings()  # their own checks, each naming its field
        self.lora_settings()
        check(not (self.lora_r and self.lora_sync == "adapter" and self.sampler != "vllm"),
              f"lora_sync='adapter' needs sampler='vllm' (the {self.sampler} sampler takes whole "
              "weights); set lora_sync='merged'")
        if self.sampler == "vllm_server":
            check(bool(self.vllm_server_urls), "sampler='vllm_server' needs vllm_server_urls "
                  "(the URLs of running `vllm serve` processes)")
            check(not self.vllm_enable_sleep_mode, "vllm_enable_sleep_mode is for sampler="
                  "'vllm' (a colocated engine); a vllm_server sampler has its own devices")
        for name in ("vllm_server_timeout", "vllm_server_startup_timeout"):
            check(getattr(self, name) > 0, f"{name} must be > 0 seconds, got "
                  f"{getattr(self, name)}")

    def step_settings(self) -> StepSettings:
        """What the engines take: the fields of the same name, the warmup in steps, and
        per_device_train_batch_size as the micro-batch."""
        return StepSettings(**self._shared(StepSettings),
                            micro_batch_size=self.per_device_train_batch_size,
                            warmup_steps=round(self.warmup_ratio * self.max_steps))

    def zero_settings(self) -> ZeroSettings:
        return ZeroSettings(**self._shared(ZeroSettings))

    def lora_settings(self) -> LoraSettings:
        """The lora_* fields, and `seed` for the adapter's initial A."""
        return LoraSettings(**self._shared(LoraSettings))

    def _shared(self, settings: type) -> dict:
        names = {f.name for f in dataclasses.fields(self)}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(settings)
                if f.name in names}

    @property
    def completions_per_step(self) -> int:
        """Completions each rank samples and trains on per optimizer step."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @property
    def prompts_per_step(self) -> int:
        """Prompts each rank samples per optimizer step."""
        return self.completions_per_step // self.num_generations

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "GRPOConfig":
        """A config from field values (a loaded recipe), each coerced to its field's type; a
        ValueError names each unknown key and the closest field."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in values if key not in known]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), known, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"unknown config keys: {', '.join(hints)}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _cast(k, v, hints[k]) for k, v in values.items()})

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> "GRPOConfig":
        """`[--config recipe.yaml] [--key value ...]` (default: sys.argv[1:]) read by grpo.cli's
        parser; bad input raises ValueError (grpo.cli.parse_config, for commands, exits instead)."""
        from grpo.cli import read_args  # grpo.cli builds its parser from this class

        return read_args(argv).config

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def _cast(name: str, value, hint):
    """Coerce a YAML or command-line value to the field's type (YAML reads 1e-6 as a string);
    `none` and `null` (any case) mean None where the field allows it."""
    args = typing.get_args(hint)
    if type(None) in args and (value is None or str(value).lower() in ("none", "null")):
        return None
    base = next(t for t in args if t is not type(None)) if type(None) in args else hint
    if typing.get_origin(base) is Literal:  # a bad choice is left to __post_init__'s message
        return next((c for c in typing.get_args(base) if str(c) == str(value)), value)
    scalar = isinstance(value, (int, float, str)) and not isinstance(value, bool)
    try:
        if base is bool:
            return {"true": True, "yes": True, "1": True,
                    "false": False, "no": False, "0": False}[str(value).lower()]
        if base in (int, float, str) and scalar:
            if base is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return base(value)
        if base in (list, dict) and isinstance(value, base):
            return value
    except (KeyError, ValueError):
        pass
    expected = " or ".join("None" if t is type(None) else t.__name__ for t in args or [hint])
    raise ValueError(f"{name} must be {expected}, got {value!r}")
