"""The DeepSpeed config of a DeepSpeedEngine, built from its settings (pure; no DeepSpeed).

The engine owns batch splitting, the optimizer, the learning-rate schedule and clipping, so a
user's `deepspeed_config` may add DeepSpeed tuning (ZeRO buckets, aio, prefetch sizes) but must not
contradict those: each contradiction is a ValueError naming the key and both values, raised
before any model is loaded. "auto" (the Hugging Face convention) means "fill in from GRPO".

Gradient accumulation is the engine's, not DeepSpeed's: `gradient_accumulation_steps` is 1 and
the engine marks the accumulation boundary itself (the micro-batch count varies with the batch,
and every micro-batch's loss already carries the whole step's normaliser, so DeepSpeed must not
divide the loss again).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from grpo.engine.settings import StepSettings, ZeroSettings

# Buffers for parameter swapping; must hold the largest parameter (SmolLM2's embedding has
# 49152 x 576 = 28.3 M elements). DeepSpeed's default of 1e8 x 5 buffers is 2 GB per rank.
_PARAM_NVME_BUFFER = 30_000_000


def load_user_config(ds_config: dict | str | os.PathLike | None) -> dict:
    if ds_config is None:
        return {}
    if isinstance(ds_config, dict):
        return json.loads(json.dumps(ds_config))  # a deep copy we may fill in
    path = Path(ds_config)
    if not path.is_file():
        raise ValueError(f"deepspeed_config must be a dict or a JSON file, got {str(ds_config)!r}")
    return json.loads(path.read_text())


def build_ds_config(zero: ZeroSettings, step: StepSettings, world_size: int = 1,
                    pin_memory: bool = False) -> dict:
    """The config for `deepspeed.initialize` of the policy; raises on contradictions."""
    zero.check_nvme_path()
    user = load_user_config(zero.deepspeed_config)
    for section in ("optimizer", "scheduler"):
        if section in user:
            raise ValueError(f"ds_config[{section!r}] is set, but the engine makes its own AdamW "
                             "and learning-rate schedule from its arguments: remove it")
    if user.get("fp16", {}).get("enabled") not in (None, False, "auto"):
        raise ValueError("ds_config['fp16'] is enabled: use bf16=True (fp16 loss scaling is "
                         "not supported by the engine)")
    micro = step.micro_batch_size or 1  # only DeepSpeed's bookkeeping; the engine splits
    ours = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro * world_size,
        "gradient_clipping": float(step.max_grad_norm),
    }
    for key, value in ours.items():
        _agree(user, key, value, _WHY[key])
    _agree(user.setdefault("bf16", {}), "enabled", step.bf16, "it is the engine's bf16 setting",
           prefix="bf16.")
    section = user.setdefault("zero_optimization", {})
    _agree(section, "stage", zero.zero_stage, "it is the engine's zero_stage",
           prefix="zero_optimization.")
    section["offload_optimizer"] = _offload(section, "offload_optimizer", zero.offload_optimizer,
                                            zero.nvme_path, pin_memory, {})
    if zero.zero_stage == 3:
        section["offload_param"] = _offload(section, "offload_param", zero.offload_param,
                                            zero.nvme_path, pin_memory,
                                            {"buffer_size": _PARAM_NVME_BUFFER})
    user.update(ours)
    user.setdefault("steps_per_print", 10**9)  # DeepSpeed's own progress lines: off
    user.setdefault("zero_allow_untested_optimizer", True)  # torch's AdamW without offload
    return user


def size_buckets(config: dict, hidden_size: int | None) -> dict:
    """ZeRO bucket sizes the user left out (or "auto"), from the model's hidden size h, as
    Hugging Face's DeepSpeed integration fills "auto": reduce bucket h^2, stage-3 prefetch bucket
    0.9 h^2, persistence threshold 10 h. DeepSpeed's fixed default reduce bucket of 5e8
    elements (2 GB in fp32) is 3.7 times SmolLM2-135M's whole set of weights."""
    if not hidden_size:
        return config
    zero = config["zero_optimization"]
    sized = {"reduce_bucket_size": hidden_size ** 2}
    if zero.get("stage") == 3:
        sized.update(stage3_prefetch_bucket_size=int(0.9 * hidden_size ** 2),
                     stage3_param_persistence_threshold=10 * hidden_size)
    for key, value in sized.items():
        if zero.get(key, "auto") == "auto":
            zero[key] = value
    return config


def reference_config(policy_config: dict) -> dict:
    """ZeRO-3 inference config for the frozen reference: the policy's parameter sharding and
    offload, no optimizer (nvme swap files in a subfolder of their own)."""
    zero = dict(policy_config["zero_optimization"])
    zero.pop("offload_optimizer", None)
    param = dict(zero.get("offload_param", {"device": "none"}))
    if param.get("device") == "nvme":
        param["nvme_path"] = str(Path(param["nvme_path"]) / "reference")
        Path(param["nvme_path"]).mkdir(parents=True, exist_ok=True)
    zero["offload_param"] = param
    keep = ("bf16", "aio", "steps_per_print", "train_micro_batch_size_per_gpu",
            "train_batch_size", "gradient_accumulation_steps")
    return {**{k: policy_config[k] for k in keep if k in policy_config},
            "zero_optimization": zero}


_WHY = {
    "train_micro_batch_size_per_gpu": "set micro_batch_size (per_device_train_batch_size) instead",
    "gradient_accumulation_steps": "the engine accumulates over micro_batch_size micro-batches "
                                   "itself, with the whole step's loss normaliser",
    "train_batch_size": "the batch is whatever train_step receives on each rank",
    "gradient_clipping": "it is the engine's max_grad_norm",
}


def _agree(section: dict, key: str, ours, why: str, prefix: str = "") -> None:
    theirs = section.get(key, "auto")
    if theirs != "auto" and theirs != ours:
        raise ValueError(f"ds_config['{prefix}{key}'] = {theirs!r} contradicts the engine's "
                         f"{ours!r}: {why}")
    section[key] = ours


def _offload(zero: dict, key: str, device: str, nvme_path, pin_memory, nvme_extra) -> dict:
    section = dict(zero.get(key) or {})
    theirs = section.get("device", "auto")  # not given: ours
    if theirs not in ("auto", device) and not (theirs is None and device == "none"):
        raise ValueError(f"ds_config['zero_optimization.{key}.device'] = {theirs!r} contradicts "
                         f"the engine's {key}={device!r}")
    section["device"] = device
    if device != "none":
        section.setdefault("pin_memory", pin_memory)
    if device == "nvme":
        if section.get("nvme_path", nvme_path) != nvme_path:
            raise ValueError(f"ds_config['zero_optimization.{key}.nvme_path'] = "
                             f"{section['nvme_path']!r} contradicts nvme_path={nvme_path!r}")
        section["nvme_path"] = str(nvme_path)
        for k, v in nvme_extra.items():
            section.setdefault(k, v)
    return section
