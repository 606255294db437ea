"""GRPOConfig: one flat dataclass, a docstring under each field, checked in __post_init__.

Loaded from YAML (`--config recipe.yaml`) with command-line overrides (`--learning_rate 1e-6`).
Key names follow the seed recipe (TRL's GRPOConfig) where they mean the same thing, so a TRL
user's YAML mostly carries over. Batch semantics are TRL's: `per_device_train_batch_size` counts
*completions* per micro-batch, and one optimizer step sees
per_device_train_batch_size * gradient_accumulation_steps completions per rank, i.e.
that / num_generations prompts per rank.
"""

import dataclasses
import difflib
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


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
    rewards: list = field(default_factory=lambda: ["format", "countdown"])
    """Reward functions by name: format, partial_format, countdown, choice, math."""
    reward_weights: list | None = None
    """One weight per reward (None: all 1.0)."""
    max_prompt_length: int = 256
    """Prompts longer than this (tokens) are dropped and counted, never cut."""
    max_completion_length: int = 1024
    """max_tokens of the sampler; also the Dr. GRPO divisor."""

    # --- GRPO ---
    num_generations: int = 8
    """G in DeepSeekMath: completions per prompt."""
    per_device_train_batch_size: int = 8
    """Completions per micro-batch on each rank (TRL's meaning)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step; the step's gradient does not depend on this split."""
    loss_type: str = "grpo"
    """"grpo" (DeepSeekMath), "token_mean" (DAPO) or "dr_grpo" (Dr. GRPO)."""
    beta: float = 0.04
    """KL penalty weight (k3 to the frozen reference); 0 loads no reference model."""
    eps_low: float = 0.2
    """Lower clip range of the ratio."""
    eps_high: float | None = None
    """Upper clip range (None: eps_low); DAPO's clip-higher uses 0.28."""
    scale_rewards: str = "group"
    """Advantage scaling: "group" std, "batch" std, or "none" (Dr. GRPO)."""
    num_iterations: int = 1
    """mu in DeepSeekMath: updates per sampled batch (old log-probs fixed before the first)."""
    temperature: float = 1.0
    """Sampling temperature; the trainer scores log-probs at the same temperature."""
    top_p: float = 1.0
    """Nucleus sampling."""
    mask_truncated_completions: bool = False
    """Leave completions cut by max_completion_length out of the loss (DAPO's overlong filter)."""
    tis_cap: float | None = None
    """Truncated importance sampling (TRL's vllm_importance_sampling_correction / _cap): weight
    each token's surrogate by min(pi_policy / pi_sampler, tis_cap), correcting for a sampler that
    computes in another precision (bf16 vLLM under an fp32 trainer, or vLLM's bf16 kernels under a
    bf16 trainer). None: off. TRL uses 2-3; an exact sampler (fp32 here) gives weights of 1."""

    # --- optimisation ---
    learning_rate: float = 1e-6
    """AdamW learning rate."""
    lr_scheduler_type: str = "constant"
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
    """Seeds the data order, the sampler (grpo.seeds.derive_seed(seed, step, rank)) and torch."""
    bf16: bool = False
    """bf16 autocast for training and bf16 vLLM (GPU); fp32 on CPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    share_prompt_forward: bool = True
    """Run each group's shared prompt through the model once per micro-batch, not G times (the
    completions attend to its KV cache): the same log-probs and gradients, less compute. Saves
    most when per_device_train_batch_size is a multiple of num_generations; not taken under
    gradient_checkpointing (transformers drops the cache in checkpointed layers)."""

    # --- engine ---
    engine: str = "torch"
    """"torch" (one process) or "deepspeed" (ZeRO-2/3, launched with torchrun or deepspeed)."""
    zero_stage: int = 3
    """DeepSpeed ZeRO stage (2 or 3)."""
    offload_optimizer: str = "none"
    """DeepSpeed optimizer offload: none, cpu or nvme."""
    offload_param: str = "none"
    """DeepSpeed parameter offload (ZeRO-3): none, cpu or nvme."""
    nvme_path: str | None = None
    """Directory for NVMe offload."""
    deepspeed_config: str | None = None
    """Path to a DeepSpeed JSON config merged over the one built from these fields."""

    # --- sampler ---
    sampler: str = "vllm"
    """"vllm" or "hf" (transformers generate)."""
    vllm_dtype: str = "auto"
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

    # --- logging, evaluation, checkpoints ---
    output_dir: str = "runs/countdown"
    """Checkpoints, TensorBoard logs, metrics.jsonl and completions.jsonl go here."""
    report_to: str = "tensorboard"
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
        def check(ok, message):
            if not ok:
                raise ValueError(message)

        choices = dict(loss_type=("grpo", "token_mean", "dr_grpo"),
                       scale_rewards=("group", "batch", "none"),
                       lr_scheduler_type=("constant", "cosine"), engine=("torch", "deepspeed"),
                       sampler=("vllm", "hf"), report_to=("tensorboard", "none"),
                       vllm_dtype=("auto", "float32", "bfloat16"),
                       offload_optimizer=("none", "cpu", "nvme"),
                       offload_param=("none", "cpu", "nvme"))
        for name, allowed in choices.items():
            check(getattr(self, name) in allowed,
                  f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("num_generations", "per_device_train_batch_size", "max_steps",
                     "gradient_accumulation_steps", "num_iterations", "max_prompt_length",
                     "max_completion_length", "logging_steps"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        check(self.num_generations >= 2,
              f"num_generations must be >= 2 (GRPO compares completions), got {self.num_generations}")
        check(self.completions_per_step % self.num_generations == 0,
              f"per_device_train_batch_size * gradient_accumulation_steps = "
              f"{self.per_device_train_batch_size} * {self.gradient_accumulation_steps} = "
              f"{self.completions_per_step} completions per rank is not divisible by "
              f"num_generations={self.num_generations}")
        for name in ("eps_low", "eps_high"):
            value = getattr(self, name)
            check(value is None or 0 < value < 1, f"{name} must be in (0, 1), got {value}")
        check(self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        check(self.tis_cap is None or self.tis_cap >= 1,
              f"tis_cap must be >= 1 or None (off), got {self.tis_cap}")
        check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        check(0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        check(self.temperature > 0, f"temperature must be > 0 (training samples), "
                                    f"got {self.temperature}")
        check(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        check(self.zero_stage in (2, 3), f"zero_stage must be 2 or 3, got {self.zero_stage}")
        check(self.save_total_limit >= 1,
              f"save_total_limit must be >= 1, got {self.save_total_limit}")
        if self.reward_weights is not None:
            check(len(self.reward_weights) == len(self.rewards),
                  f"reward_weights has {len(self.reward_weights)} entries but rewards has "
                  f"{len(self.rewards)}: {self.rewards}")
        if "nvme" in (self.offload_optimizer, self.offload_param):
            check(self.nvme_path is not None, "offload to nvme needs nvme_path")

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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = [k for k in values if k not in known]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, known, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(f"unknown config keys: {', '.join(hints)}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _cast(k, v, hints[k]) for k, v in values.items()})

    @classmethod
    def from_args(cls, argv: list[str] | None = None) -> "GRPOConfig":
        """`--config recipe.yaml` (optional) then `--key value` / `--key=value` overrides."""
        argv = sys.argv[1:] if argv is None else list(argv)
        values, overrides = {}, {}
        i = 0
        while i < len(argv):
            arg = argv[i]
            if not arg.startswith("--"):
                raise ValueError(f"expected --key value, got {arg!r}")
            key, eq, value = arg[2:].partition("=")
            if not eq:
                if i + 1 >= len(argv):
                    raise ValueError(f"--{key} needs a value")
                value, i = argv[i + 1], i + 1
            i += 1
            if key in ("config", "help"):
                if key == "help":
                    raise SystemExit(cls.help())
                loaded = yaml.safe_load(Path(value).read_text()) or {}
                if not isinstance(loaded, dict):
                    raise ValueError(f"{value}: expected a mapping of config keys")
                values.update(loaded)
            else:
                overrides[key.replace("-", "_")] = _parse_cli(value)
        return cls.from_dict({**values, **overrides})

    @classmethod
    def help(cls) -> str:
        return "\n".join(f"--{f.name} (default {f.default if f.default is not dataclasses.MISSING else '...'})"
                         for f in dataclasses.fields(cls))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def _parse_cli(value: str):
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _cast(name: str, value, hint):
    """Coerce YAML/CLI values to the field's type (YAML reads 1e-6 as a string)."""
    if value is None:
        return None
    base = [t for t in typing.get_args(hint) if t is not type(None)] or [hint]
    target = typing.get_origin(base[0]) or base[0]
    try:
        if target is bool and isinstance(value, str):
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        if target in (int, float, str, bool):
            if target is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return target(value)
        if target in (list, dict) and not isinstance(value, target):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"config key {name!r} expects {hint}, got {value!r}") from None
    return value
