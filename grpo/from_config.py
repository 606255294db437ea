"""The trainer's parts, each built from a whole GRPOConfig: the model path, tokenizer, data sets,
rewards, engine and sampler.

Kept apart from the trainer so that a custom loop can build the same parts with the same
defaults (`from grpo import from_config; engine = from_config.engine(config, path)`), and so
that trainer.py holds the loop and not the plumbing.
"""

from __future__ import annotations

import torch

from grpo.config import GRPOConfig


def model_path(config: GRPOConfig) -> str:
    from grpo.models import resolve_model

    return resolve_model(config.model)


def check_context(config: GRPOConfig, path: str) -> None:
    """Prompt + completion must fit the model's context window."""
    from transformers import AutoConfig

    context = getattr(AutoConfig.from_pretrained(path), "max_position_embeddings", None)
    total = config.max_prompt_length + config.max_completion_length
    if context is not None and total > context:
        raise ValueError(f"max_prompt_length + max_completion_length = {config.max_prompt_length}"
                         f" + {config.max_completion_length} = {total} exceeds the model's "
                         f"context of {context} tokens")


def tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def datasets(config: GRPOConfig, tok):
    """(train, test, prefill): datasets with a rendered "prompt" column, and the template's
    assistant prefill, which the rewards see in front of every completion."""
    from grpo import data

    if config.dataset == "countdown":
        splits = data.countdown_splits(
            config.num_train, config.num_test, seed=config.seed,
            num_numbers=tuple(config.countdown_num_numbers),
            number_range=tuple(config.countdown_number_range),
            target_range=tuple(config.countdown_target_range))
        train, test = splits["train"], splits["test"]
    else:
        train = data.load_prompt_dataset(config.dataset, split="train",
                                         column_map=config.dataset_column_map or None)
        split = train.train_test_split(test_size=min(config.num_test, len(train) // 10 or 1),
                                       seed=config.seed)
        train, test = split["train"], split["test"]
    train, dropped = data.build_prompts(train, tok, template=config.template,
                                        max_prompt_length=config.max_prompt_length)
    test, dropped_test = data.build_prompts(test, tok, template=config.template,
                                            max_prompt_length=config.max_prompt_length)
    if dropped or dropped_test:
        print(f"dropped {dropped} train and {dropped_test} test prompts longer than "
              f"max_prompt_length={config.max_prompt_length} tokens")
    if len(train) == 0:
        raise ValueError(f"no training prompt fits max_prompt_length={config.max_prompt_length}")
    return train, test, data.TEMPLATES[config.template].prefill


def reward_set(config: GRPOConfig):
    from grpo.rewards import NAMED_REWARDS, OverlongPenalty, RewardSet

    def build(name: str):
        if name == "overlong":
            buffer = config.overlong_buffer or max(1, config.max_completion_length // 4)
            return OverlongPenalty(config.max_completion_length, buffer)
        return NAMED_REWARDS[name]

    return RewardSet([build(name) for name in config.rewards], config.reward_weights)


def engine(config: GRPOConfig, path: str):
    from grpo.engine import DeepSpeedEngine, TorchEngine

    if config.engine == "torch":
        return TorchEngine(path, config.step_settings(), lora=config.lora_settings())
    return DeepSpeedEngine(path, config.step_settings(), config.zero_settings(),
                           lora=config.lora_settings())


def sampler(config: GRPOConfig, path: str):
    from grpo.sampler import HFSampler, VLLMSampler

    common = dict(group_size=config.num_generations, max_tokens=config.max_completion_length,
                  temperature=config.temperature, top_p=config.top_p, seed=config.seed)
    if config.sampler == "hf":
        return HFSampler(path, **common)
    if config.sampler == "vllm_server":
        from grpo.sampler.vllm_server import VLLMServerSampler

        return VLLMServerSampler(path, **common, urls=config.vllm_server_urls,
                                 request_timeout=config.vllm_server_timeout,
                                 startup_timeout=config.vllm_server_startup_timeout)
    return VLLMSampler(
        path, **common,
        dtype="bfloat16" if config.bf16 and config.vllm_dtype == "auto" else config.vllm_dtype,
        # On GPUs gpu_memory_utilization sizes the KV cache; a byte count would override it.
        kv_cache_memory_gb=None if torch.cuda.is_available() else config.vllm_kv_cache_gb,
        enforce_eager=config.vllm_enforce_eager,
        gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        enable_sleep_mode=config.vllm_enable_sleep_mode,
        max_model_len=config.max_prompt_length + config.max_completion_length,
        max_lora_rank=config.lora_r if config.lora_r and config.lora_sync == "adapter" else None)
