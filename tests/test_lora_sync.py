"""A LoRA policy synced into vLLM (its CPU build) both ways, on the packaged SmolLM2 in fp32: the
adapter alone (`load_adapter`, vLLM's LoRA) and the merged model (`load_weights`). Either way
the sampler's log-probs of its own samples must be the trainer's policy's, at the tolerance of
the full-weight sync test (tests/test_sampler.py: worst token < 1e-3, mean < 1e-4)."""

import pytest
import torch

from grpo.engine import LoraSettings, StepSettings, TorchEngine
from grpo.engine.lora import adapter_parameters
from grpo.sampler import VLLMSampler

TEMPERATURE = 0.7
QUESTIONS = ["Explain photosynthesis briefly.", "What is 17 * 3?"]


@pytest.fixture(scope="module")
def engine():
    """A LoRA policy well away from the base model: B (0 at peft's start) drawn at random."""
    engine = TorchEngine(None, StepSettings(temperature=TEMPERATURE, beta=0.04), device="cpu",
                         lora=LoraSettings(lora_r=8))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in adapter_parameters(engine.model).items():
            if "lora_B" in name:
                p.copy_(0.02 * torch.randn(p.shape, generator=g))
    return engine


def _sampler(**kw) -> VLLMSampler:
    return VLLMSampler(None, group_size=3, max_tokens=16, temperature=TEMPERATURE, seed=0,
                       dtype="float32", enforce_eager=True, kv_cache_memory_gb=0.5,
                       num_threads=1, **kw)


def _gaps(engine, sampler) -> dict[str, float]:
    """The sampler's samples scored by the engine's policy and by its reference (the base)."""
    tok = sampler.tokenizer
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                       add_generation_prompt=True) for q in QUESTIONS]
    r = sampler.sample(prompts, seed=1)
    mask = r.completion_mask.bool()
    policy = (engine.policy_logprobs(r) - r.sampler_logprobs)[mask].abs()
    base = (engine.ref_logprobs(r) - r.sampler_logprobs)[mask].abs()
    return {"worst": policy.max().item(), "mean": policy.mean().item(),
            "base_mean": base.mean().item()}


def _assert_policy(gaps: dict) -> None:
    assert gaps["worst"] < 1e-3 and gaps["mean"] < 1e-4, gaps
    assert gaps["base_mean"] > 1e-2, gaps  # the check can fail: the base model is far off


def test_adapter_sync_samples_the_trainers_policy_and_a_new_adapter_replaces_it(engine):
    threads = torch.get_num_threads()
    sampler = _sampler(max_lora_rank=8)
    try:
        sampler.load_adapter(engine.adapter_weights().items(), engine.adapter_config())
        first = _gaps(engine, sampler)
        print("adapter sync:", first, "load s", sampler.last_load_seconds)
        _assert_policy(first)
        # The next step's adapter, under a new id: sampled from, not the cached first one.
        with torch.no_grad():
            for name, p in adapter_parameters(engine.model).items():
                if "lora_B" in name:
                    p.neg_()
        sampler.load_adapter(engine.adapter_weights().items(), engine.adapter_config())
        assert sampler.llm.llm_engine.list_loras() == {2}  # the first one was removed
        _assert_policy(_gaps(engine, sampler))
    finally:
        sampler.close()
        torch._C.set_num_threads(threads)


def test_merged_sync_samples_the_trainers_policy(engine):
    threads = torch.get_num_threads()
    sampler = _sampler()
    try:
        with pytest.raises(RuntimeError, match="needs VLLMSampler\\(..., max_lora_rank=r\\)"):
            sampler.load_adapter(engine.adapter_weights().items(), engine.adapter_config())
        sampler.load_weights(engine.named_weights())
        gaps = _gaps(engine, sampler)
        print("merged sync:", gaps, "load s", sampler.last_load_seconds)
        _assert_policy(gaps)
    finally:
        sampler.close()
        torch._C.set_num_threads(threads)


def test_lora_rank_slots():
    from grpo.sampler.vllm import _lora_rank_slot

    assert [_lora_rank_slot(r) for r in (1, 2, 8, 9, 512)] == [1, 8, 8, 16, 512]
    with pytest.raises(ValueError, match="max_lora_rank must be in 1..512"):
        _lora_rank_slot(513)
