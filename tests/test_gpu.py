"""The CUDA paths on a real GPU: `pytest -m gpu tests/test_gpu.py` (scripts/gpu_check.sh runs it;
docs/gpu.md says how). Every test marked `gpu` is skipped, with the reason, where CUDA is absent;
the two unmarked tests at the end prove that skip path and the check script's CPU side anywhere.

Models are built from a config with random weights and saved to a temporary directory (the GPU
machine has no network, and the packaged model is too big to carry): a Llama (the packaged
SmolLM2's architecture) of Qwen2-0.5B's sizes (494 M parameters, vocabulary 151,936, tied
embeddings) beside a word-level tokenizer whose tokens are `w3 ... w151935` (with a Qwen2 config,
AutoTokenizer would load its own Qwen2Tokenizer class instead of the saved one). Random weights
give near-uniform next-token distributions (logits of std ~0.6), which is enough for every check
here: they compare two computations of the same numbers.

Checked on CUDA:
* TorchEngine: a bf16-autocast step against the fp32 step on the same batch (log-probs,
  gradient, grad norm, loss, the AdamW update; fp32 master weights kept).
* `chunked_logprobs` against `naive_logprobs`, values and gradients: fp32, bf16 tensors (as in
  DeepSpeed's bf16 mode) and fp32 tensors under bf16 autocast (as in TorchEngine's).
* `sequence_logprobs` with `share_prompts=True` against `False`: sdpa in fp32 and bf16
  autocast, flash-attention 2 when `flash_attn` is importable.
* HFSampler: shapes, seeds, and its `sampler_logprobs` equal to the trainer's log-probs.
* DeepSpeedEngine, ZeRO-3, one rank over NCCL, against TorchEngine: fp32 and bf16.
* LoRA (peft) on TorchEngine: a bf16-autocast step against the fp32 step, the base weights
  frozen, the policy before the step equal to the base model.
Not here yet: vLLM and its sleep mode (not on the GPU image).

Each test prints `measured ...` lines (run with -s to see them); the bf16 tolerances below are a
few times what an H200 measured (benchmarks/RESULTS.md, "GPU check"). `GRPO_GPU_TESTS_ON_CPU=1`
runs the same tests on the CPU with a tiny model of the same family: a check of the test code,
nothing about CUDA.
"""

from __future__ import annotations

import gc
import math
import os
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

ROOT = Path(__file__).resolve().parents[1]
ON_CPU = "GRPO_GPU_TESTS_ON_CPU"
DEVICE = "cuda" if torch.cuda.is_available() else ("cpu" if os.environ.get(ON_CPU) else None)
NO_CUDA = (f"needs CUDA: torch.cuda.is_available() is False ({ON_CPU}=1 runs these tests on the "
           "CPU with a tiny model, to check the test code itself)")

# Qwen2-0.5B's sizes: 136 M embedding + 24 x 14.9 M layer parameters = 494 M.
LLAMA_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                 num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                 tie_word_embeddings=True, max_position_embeddings=4096)
TINY = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
            max_position_embeddings=512)
SHAPE = LLAMA_05B if DEVICE == "cuda" else TINY
FIRST_WORD = 3  # ids 0, 1, 2: <pad>, <eos>, <unk>

# ---- tolerances ---------------------------------------------------------------------------
# bf16 keeps 8 significant bits: each rounding has relative error <= u = 2^-8 = 3.9e-3. Under
# autocast every matmul rounds its inputs (fp32 accumulation), ~7 per layer; over L = 24
# residual layers such errors add roughly as a random walk, so the final hidden state is off by
# ~u * sqrt(7 * 24) = 13 u = 0.05 relative, and a log-prob (a difference of logits of a few
# units) by ~0.05 x |logit| = 0.02-0.1 nats. Measured on CPU with the trained SmolLM2
# (docs/architecture.md): mean 0.03, max 0.3. The bugs these checks are for move a log-prob by
# about a logit's spread (~1 nat here, logits of std 0.6 / T): a shifted token, attention to
# padding or to the wrong prompt. Measured on an H200 (2026-12-04, RESULTS.md), bf16 against
# fp32 on the random 0.5B model: mean 0.010-0.013, max 0.041-0.049; the bounds are ~4x that.
BF16_LOGPROB_MEAN, BF16_LOGPROB_MAX = 0.04, 0.2
# The backward rounds as often as the forward and inherits its error: ~sqrt(2) x 0.05 relative.
# A dropped micro-batch (of 2) or a normaliser off by 2 is >= 0.5. H200: 0.014-0.028.
BF16_GRAD_REL_L2 = 0.1
# AdamW's first update is -lr * g / (|g| + eps) = -lr * sign(g): two runs differ by 2 lr exactly
# where the gradient's sign differs, i.e. where |g| < its error. For a roughly normal gradient with
# an error of e x its RMS that is ~0.8 e of the entries; e = 0.1 gives 0.08. H200: 0.004-0.007.
BF16_UPDATE_FLIPS = 0.03
# fp32 against fp32 (other kernels or splits of the same sums): eps = 1.2e-7 per rounding, sums of
# up to 151,936 terms (log2 = 18 levels of pairwise summation): a few 1e-6 relative per op.
FP32_LOGPROB_ATOL = 1e-4  # log-probs of about -12, 24 layers deep
FP32_GRAD_REL_L2 = 1e-3

LR = 1e-5
TEMPERATURE = 0.7  # not 1, so that a dropped temperature shows


def gpu(test):
    """Marks `test` as a `gpu` test, skipped with NO_CUDA where it cannot run."""
    return pytest.mark.gpu(pytest.mark.skipif(DEVICE is None, reason=NO_CUDA)(test))


def measured(what: str, **values) -> None:
    """One line per measurement, gathered by scripts/gpu_check.sh into measured.txt."""
    print(f"measured {what}: " + ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in values.items()), flush=True)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- the model, the tokenizer and the batches ----------------------------------------------

def write_random_model(path: str | Path, shape: dict = LLAMA_05B, device: str = "cpu",
                       seed: int = 0) -> str:
    """A Llama causal LM with random weights (fp32) and a word-level tokenizer of the same
    vocabulary (`w3 w17 ...`), saved as a Hugging Face directory; returns its path."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig,
                              PreTrainedTokenizerFast)

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2,
             **{f"w{i}": i for i in range(FIRST_WORD, shape["vocab_size"])}}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=words, pad_token="<pad>", eos_token="<eos>",
                            unk_token="<unk>").save_pretrained(path)
    config = LlamaConfig(**shape, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    torch.manual_seed(seed)
    with torch.device(device):  # initialising 0.5 B weights is seconds on a GPU, minutes here
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path)
    ids = AutoTokenizer.from_pretrained(path)("w3 w4", add_special_tokens=False)["input_ids"]
    assert ids == [3, 4], f"AutoTokenizer did not load the saved word-level tokenizer: {ids}"
    return str(path)


def grouped_batch(prompt_lengths=(40, 17, 64, 33), group_size=4, max_completion=48, seed=0,
                  vocab_size=None):
    """(rollouts, advantages [N]): B prompts of different lengths (left padding differs), each
    repeated G times, with completions of 1..max_completion tokens (right padding)."""
    from grpo.rollouts import Rollouts

    vocab_size = vocab_size or SHAPE["vocab_size"]
    g = torch.Generator().manual_seed(seed)
    prompts, completions = [], []
    for length in prompt_lengths:
        prompt = torch.randint(FIRST_WORD, vocab_size, (length,), generator=g).tolist()
        for row in range(group_size):
            size = 1 + (7 * (len(prompts) + 3 * row)) % max_completion
            prompts.append(prompt)
            completions.append(torch.randint(FIRST_WORD, vocab_size, (size,), generator=g).tolist())
    n = len(prompts)
    rollouts = Rollouts.from_lists(prompts, completions, [[-12.0] * len(c) for c in completions],
                                   [False] * n, ["x"] * n, ["p"] * n, group_size, pad_id=0)
    # Not group-centred: with one update the loss is -sum(A) / normaliser (below), 0 if centred.
    return rollouts, torch.randn(n, generator=g)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return write_random_model(tmp_path_factory.mktemp("llama_random"), SHAPE, DEVICE)


@pytest.fixture(scope="module")
def batch():
    return grouped_batch()


# ---- TorchEngine: bf16 autocast against fp32 ----------------------------------------------

def step_settings(bf16: bool):
    from grpo.engine import StepSettings

    # beta > 0: the reference pass runs too; 2 micro-batches of 8: the accumulation runs too.
    return StepSettings(bf16=bf16, beta=0.04, learning_rate=LR, temperature=TEMPERATURE,
                        micro_batch_size=8, max_grad_norm=1.0)


@dataclass
class StepResult:
    logprobs: torch.Tensor  # [N, T] the policy's before the step
    grads: dict[str, torch.Tensor]  # the step's full gradient, fp32
    metrics: dict[str, float]  # train_step's
    update: dict[str, torch.Tensor]  # master weights after - before, fp32
    dtypes: set[torch.dtype]  # of the master weights after the step


def master_weights(engine) -> dict[str, torch.Tensor]:
    """fp32 copies of the weights the optimizer updates (DeepSpeed: its fp32 partitions)."""
    if hasattr(engine, "ds"):
        from deepspeed.utils import safe_get_full_fp32_param

        return {n: safe_get_full_fp32_param(p).detach().float().clone()
                for n, p in engine.model.named_parameters()}
    return {n: p.detach().float().clone() for n, p in engine.model.named_parameters()}


def one_step(engine, rollouts, advantages) -> StepResult:
    from engine_batch import gradients

    logprobs = engine.policy_logprobs(rollouts)
    grads = {n: g.float() for n, g in gradients(engine, rollouts, advantages).items()
             if g is not None}
    before = master_weights(engine)
    metrics = engine.train_step(rollouts, advantages)
    after = master_weights(engine)
    dtypes = {p.dtype for p in engine.model.parameters()} if not hasattr(engine, "ds") else set()
    return StepResult(logprobs, grads, metrics, {n: after[n] - before[n] for n in after}, dtypes)


@pytest.fixture(scope="module")
def fp32_step(model_dir, batch) -> StepResult:
    from grpo.engine import TorchEngine

    engine = TorchEngine(model_dir, step_settings(bf16=False), device=DEVICE)
    result = one_step(engine, *batch)
    del engine
    free_memory()
    return result


def logprob_gap(got, want, mask) -> tuple[float, float]:  # [N, T] each -> (mean, max) |diff|
    gap = (got.float() - want.float())[mask.bool()].abs()
    return gap.mean().item(), gap.max().item()


def rel_l2(got: dict, want: dict) -> float:
    """||got - want|| / ||want|| over every tensor together."""
    num = sum(((got[n].float() - w.float()) ** 2).sum() for n, w in want.items())
    den = sum((w.float() ** 2).sum() for w in want.values())
    return math.sqrt(num / den)


def update_flips(got: dict, want: dict, lr: float) -> float:
    """The fraction of entries whose AdamW updates differ by more than lr (opposite signs)."""
    off = sum(((got[n] - w).abs() > lr).sum().item() for n, w in want.items())
    return off / sum(w.numel() for w in want.values())


def compare_steps(what: str, got: StepResult, want: StepResult, mask, *, logprob_mean,
                  logprob_max, grad_rel_l2, flips, grad_norm_rtol, loss_atol) -> None:
    assert got.update.keys() == want.update.keys() and got.grads.keys() == want.grads.keys()
    mean, worst = logprob_gap(got.logprobs, want.logprobs, mask)
    grad_err = rel_l2(got.grads, want.grads)
    flip = update_flips(got.update, want.update, LR)
    norm_err = abs(got.metrics["grad_norm"] / want.metrics["grad_norm"] - 1)
    loss_err = abs(got.metrics["loss"] - want.metrics["loss"])
    measured(what, logprob_mean=mean, logprob_max=worst, grad_rel_l2=grad_err,
             update_flips=flip, grad_norm_rel=norm_err, loss=want.metrics["loss"],
             loss_abs=loss_err, entropy=got.metrics["entropy"],
             entropy_ref=want.metrics["entropy"])
    for result in (got, want):
        assert result.metrics["skipped_nonfinite"] == 0.0
        assert all(torch.isfinite(g).all() for g in result.grads.values())
    assert mean <= logprob_mean and worst <= logprob_max, (mean, worst)
    assert grad_err <= grad_rel_l2, grad_err
    # ||a|| - ||b|| <= ||a - b||: the norm's relative error is at most the gradient's.
    assert norm_err <= grad_norm_rtol, norm_err
    assert flip <= flips, flip
    # With one update per step the ratio is exactly 1, so the loss is -sum(A) / normaliser plus
    # beta x KL(policy || reference), and the KL is 0 at the start (the same weights, computed
    # the same way): the loss does not depend on the precision, only on the plumbing.
    assert abs(want.metrics["loss"]) > 1e-3
    assert loss_err <= loss_atol, loss_err
    assert abs(got.metrics["kl"]) < 1e-4


@gpu
def test_torch_engine_bf16_step_matches_the_fp32_step(model_dir, batch, fp32_step):
    from grpo.engine import TorchEngine

    engine = TorchEngine(model_dir, step_settings(bf16=True), device=DEVICE)
    bf16 = one_step(engine, *batch)
    del engine
    free_memory()
    mask = batch[0].completion_mask
    mean, _ = logprob_gap(bf16.logprobs, fp32_step.logprobs, mask)
    assert mean > 1e-6, "the bf16 step computed exactly what fp32 did: autocast is not on"
    assert bf16.dtypes == {torch.float32}, "autocast must keep fp32 master weights"
    compare_steps("torch bf16 vs fp32 step", bf16, fp32_step, mask,
                  logprob_mean=BF16_LOGPROB_MEAN, logprob_max=BF16_LOGPROB_MAX,
                  grad_rel_l2=BF16_GRAD_REL_L2, flips=BF16_UPDATE_FLIPS,
                  grad_norm_rtol=BF16_GRAD_REL_L2, loss_atol=1e-5)
    # The logged entropy: a mean over some 400 tokens of a ~12-nat quantity.
    assert bf16.metrics["entropy"] == pytest.approx(fp32_step.metrics["entropy"], rel=1e-2)


# ---- LoRA (peft) on TorchEngine: bf16 autocast against fp32 ---------------------------------

def adapter_only(result: StepResult) -> StepResult:
    update = {n: u for n, u in result.update.items() if ".lora_" in n}
    return StepResult(result.logprobs, result.grads, result.metrics, update, result.dtypes)


@gpu
def test_torch_engine_lora_bf16_step_matches_the_fp32_step(model_dir, batch, fp32_step):
    """LoRA r = 16 on every linear layer of the blocks. B starts at 0, so before the step the
    policy is the base model (its log-probs equal the full model's fp32 ones) and the reference
    (the adapter off) gives KL 0; only the adapter moves, and bf16 keeps its fp32 master weights."""
    from grpo.engine import LoraSettings, TorchEngine

    lora = LoraSettings(lora_r=16, seed=1)
    steps = {}
    for bf16 in (False, True):
        engine = TorchEngine(model_dir, step_settings(bf16=bf16), device=DEVICE, lora=lora)
        steps[bf16] = one_step(engine, *batch)
        del engine
        free_memory()
    mask = batch[0].completion_mask
    mean, worst = logprob_gap(steps[False].logprobs, fp32_step.logprobs, mask)
    measured("torch lora fp32 policy vs full fp32 before the step", logprob_mean=mean,
             logprob_max=worst)
    assert worst <= FP32_LOGPROB_ATOL, worst  # B = 0: the adapter adds exact zeros
    for result in steps.values():
        assert result.grads and all(".lora_" in n for n in result.grads), "a base weight has a grad"
        frozen = [u for n, u in result.update.items() if ".lora_" not in n]
        assert frozen and all(torch.count_nonzero(u) == 0 for u in frozen), "a base weight moved"
        assert result.dtypes == {torch.float32}
    assert any(torch.count_nonzero(u) for u in adapter_only(steps[True]).update.values())
    compare_steps("torch lora bf16 vs fp32 step", adapter_only(steps[True]),
                  adapter_only(steps[False]), mask,
                  logprob_mean=BF16_LOGPROB_MEAN, logprob_max=BF16_LOGPROB_MAX,
                  grad_rel_l2=BF16_GRAD_REL_L2, flips=BF16_UPDATE_FLIPS,
                  grad_norm_rtol=BF16_GRAD_REL_L2, loss_atol=1e-5)


# ---- chunked log-probs against the naive ones ----------------------------------------------

@gpu
@pytest.mark.parametrize("mode", ["fp32", "bf16", "autocast"])
def test_chunked_logprobs_match_naive(mode):
    """fp32 tensors; bf16 tensors (DeepSpeed's bf16 parameters); fp32 tensors under bf16 autocast
    (TorchEngine's bf16). 2,500 tokens in chunks of 1,024: two whole chunks and a partial one."""
    from grpo.logprobs import chunked_logprobs, naive_logprobs

    m, h, v = 2500, SHAPE["hidden_size"], SHAPE["vocab_size"]
    g = torch.Generator(device=DEVICE).manual_seed(0)
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32
    hidden = torch.randn(m, h, generator=g, device=DEVICE).to(dtype)  # post-norm: ~N(0, 1)
    weight = (0.05 * torch.randn(v, h, generator=g, device=DEVICE)).to(dtype)  # logits ~1.5
    targets = torch.randint(0, v, (m,), generator=g, device=DEVICE)
    upstream = torch.randn(m, generator=g, device=DEVICE)  # not a plain sum: a real chain rule
    autocast = (torch.autocast(DEVICE, dtype=torch.bfloat16) if mode == "autocast"
                else torch.autocast(DEVICE, enabled=False))
    results = {}
    for name in ("naive", "chunked"):
        hid, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        with autocast:
            if name == "naive":
                logits = hid @ w.T
                out = naive_logprobs(logits, targets, TEMPERATURE)
            else:
                out, _ = chunked_logprobs(hid, w, targets, TEMPERATURE, chunk_size=1024)
        (out * upstream).sum().backward()
        results[name] = out.detach(), hid.grad, w.grad
        if name == "naive":
            max_logit = logits.detach().float().abs().max().item() / TEMPERATURE
            del logits
    (lp, gh, gw), (lp_ref, gh_ref, gw_ref) = results["chunked"], results["naive"]
    errors = {"logprob": (lp - lp_ref).abs().max().item(),
              "grad_hidden": ((gh.float() - gh_ref.float()).abs().max()
                              / gh_ref.float().abs().max()).item(),
              "grad_weight": ((gw.float() - gw_ref.float()).abs().max()
                              / gw_ref.float().abs().max()).item()}
    measured(f"chunked vs naive {mode}", **errors, max_logit=max_logit)
    assert lp.dtype == torch.float32 and gh.dtype == dtype and gw.dtype == dtype
    if mode == "fp32":
        # Same sums, other kernels: fp32 roundoff of logits ~1.5 and of a 151,936-term lse ~12.
        assert_close(lp, lp_ref, rtol=0, atol=5e-5)
        assert errors["grad_hidden"] <= 1e-4 and errors["grad_weight"] <= 1e-4, errors
    else:
        # Both paths round the logits to bf16 (the matmul's output); when their fp32
        # accumulations differ in the last bits a logit may round the other way: one bf16 step,
        # u * |logit|, in the chosen token's logit (the lse averages such errors away).
        assert_close(lp, lp_ref, rtol=0, atol=2 ** -8 * max_logit + 1e-4)
        # The gradients are bf16 results (or, under autocast, come from bf16 products). The
        # chunked path rounds each chunk's product, then the fp32 sum, then (grad_hidden) the
        # division by T; the naive one rounds its product once: up to 4 roundings of u = 2^-8
        # relative to the largest entry, 2^-6. (A wrong temperature is 30 % off.)
        assert errors["grad_hidden"] <= 2 ** -6 and errors["grad_weight"] <= 2 ** -6, errors


# ---- the shared-prompt forward against the full one ----------------------------------------

def _flash_attn_or_skip(attn: str) -> None:
    if attn != "flash_attention_2":
        return
    if DEVICE != "cuda":
        pytest.skip("flash-attention runs on CUDA only")
    try:
        import flash_attn  # noqa: F401
    except ImportError as err:
        pytest.skip(f"flash_attn is not importable ({err}); the GPU image has none: carry a "
                    "wheel built for its torch and CUDA to test it")


@gpu
@pytest.mark.parametrize("attn, mode", [("sdpa", "fp32"), ("sdpa", "autocast"),
                                        ("flash_attention_2", "autocast")])
def test_shared_prompt_forward_matches_the_full_forward(model_dir, attn, mode):
    from transformers import AutoModelForCausalLM

    from grpo.logprobs import sequence_logprobs
    from grpo.shared_prompt import _cached_forward_is_exact, prompt_groups

    _flash_attn_or_skip(attn)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 attn_implementation=attn).to(DEVICE)
    rollouts, _ = grouped_batch(seed=1)
    r = rollouts.to(DEVICE)
    p = r.prompt_ids.shape[1]
    # The shared path really runs (else both sides are the full forward and agree trivially).
    assert _cached_forward_is_exact(model.base_model)
    assert prompt_groups(r.input_ids[:, :p], r.attention_mask[:, :p]) is not None
    upstream = torch.randn(r.completion_mask.shape, device=DEVICE,
                           generator=torch.Generator(device=DEVICE).manual_seed(2))
    params = [q for q in model.parameters() if q.requires_grad]
    got = {}
    for share in (False, True):
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=mode == "autocast"):
            logprobs, _ = sequence_logprobs(model, r.input_ids, r.attention_mask,
                                            r.completion_mask, TEMPERATURE, share_prompts=share)
        grads = torch.autograd.grad((logprobs * upstream).sum(), params)
        got[share] = logprobs.detach(), {str(i): gr for i, gr in enumerate(grads)}
    mean, worst = logprob_gap(got[True][0], got[False][0], r.completion_mask)
    grad_err = rel_l2(got[True][1], got[False][1])
    measured(f"shared vs full forward {attn} {mode}", logprob_mean=mean, logprob_max=worst,
             grad_rel_l2=grad_err)
    assert (got[True][0][r.completion_mask == 0] == 0).all()
    if mode == "fp32":
        assert worst <= FP32_LOGPROB_ATOL and grad_err <= FP32_GRAD_REL_L2, (worst, grad_err)
    else:
        # The same roundings at the same places, but the prompt's matmuls run on other shapes,
        # so a bf16 rounding may go the other way and travel through the layers: at most the
        # bf16-vs-fp32 error.
        assert mean <= BF16_LOGPROB_MEAN and worst <= BF16_LOGPROB_MAX, (mean, worst)
        assert grad_err <= BF16_GRAD_REL_L2, grad_err
    del model
    free_memory()


# ---- HFSampler -------------------------------------------------------------------------------

@gpu
def test_hf_sampler_shapes_seeds_and_logprobs(model_dir):
    from grpo.logprobs import sequence_logprobs
    from grpo.sampler import HFSampler

    group, max_tokens = 4, 24
    sampler = HFSampler(model_dir, group_size=group, max_tokens=max_tokens,
                        temperature=TEMPERATURE, seed=0, device=DEVICE)
    assert sampler.model.device.type == DEVICE
    prompts = ["w5 w9 w13 w200", "w100 w7", "w42 w43 w44 w45 w46 w47"]
    r = sampler.sample(prompts, seed=1)
    n = len(prompts) * group
    assert len(r) == n and r.completion_ids.shape[0] == n
    assert r.completion_ids.shape == r.completion_mask.shape == r.sampler_logprobs.shape
    assert r.completion_ids.shape[1] <= max_tokens
    for i, prompt in enumerate(prompts):  # rows [i G, (i + 1) G) answer prompt i
        ids = [int(w[1:]) for w in prompt.split()]
        for row in range(i * group, (i + 1) * group):
            assert r.prompt_ids[row][r.prompt_mask[row].bool()].tolist() == ids
            assert r.prompts[row] == prompt
    lengths = r.completion_mask.sum(1)
    assert (lengths >= 1).all() and (lengths <= max_tokens).all()
    assert (r.sampler_logprobs[r.completion_mask == 0] == 0).all()
    assert (r.sampler_logprobs[r.completion_mask == 1] < 0).all()

    again, other = sampler.sample(prompts, seed=1), sampler.sample(prompts, seed=2)
    assert torch.equal(again.completion_ids, r.completion_ids)
    assert torch.equal(again.sampler_logprobs, r.sampler_logprobs)
    assert not torch.equal(other.completion_ids[:, :4], r.completion_ids[:, :4])

    def gap(temperature):  # the trainer's log-probs (fp32) against the sampler's
        with torch.no_grad():
            lp, _ = sequence_logprobs(sampler.model, r.input_ids.to(DEVICE),
                                      r.attention_mask.to(DEVICE),
                                      r.completion_mask.to(DEVICE), temperature)
        return logprob_gap(lp.cpu(), r.sampler_logprobs, r.completion_mask)

    mean, worst = gap(TEMPERATURE)
    unscaled, _ = gap(1.0)
    measured("hf sampler vs trainer logprobs fp32", mean=mean, max=worst, at_t1_mean=unscaled)
    # fp32 both sides; the cached one-token steps and the whole-sequence forward run other
    # kernels: roundoff only (measured on CPU with SmolLM2: max 3.8e-5, mean 7.5e-6).
    assert worst < 1e-3 and mean < 1e-4, (mean, worst)
    assert unscaled > 1e-2  # the check can fail: the wrong temperature is far off
    sampler.close()
    free_memory()


# ---- DeepSpeed ZeRO-3 on one rank against TorchEngine ------------------------------------

@pytest.fixture(scope="module")
def one_rank_group():
    """A world of one for DeepSpeed (NCCL on CUDA, gloo on CPU), torn down after the module."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    patch = pytest.MonkeyPatch()
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(port)).items():
        patch.setenv(key, value)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
    patch.undo()


@gpu
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_deepspeed_zero3_one_rank_matches_torch_engine(model_dir, batch, fp32_step,
                                                       one_rank_group, bf16):
    """One step of ZeRO-3 (policy and reference sharded, one rank) against TorchEngine's fp32
    step. fp32: the same sums in the same micro-batches, so roundoff only (the two-rank CPU test,
    tests/test_engine_deepspeed.py, allows 5e-4 for other splits). bf16: DeepSpeed's bf16
    parameters with fp32 master weights, held to the bf16-vs-fp32 tolerances above."""
    try:
        import deepspeed  # noqa: F401
    except Exception as err:  # ImportError, or a missing dependency's error at import
        pytest.skip(f"deepspeed is not importable: {type(err).__name__}: {err}")
    from grpo.engine import DeepSpeedEngine, ZeroSettings

    engine = DeepSpeedEngine(model_dir, step_settings(bf16=bf16), ZeroSettings(zero_stage=3))
    if DEVICE == "cuda":
        import torch.distributed as dist

        assert dist.get_backend() == "nccl" and engine.device.type == "cuda"
    ds = one_step(engine, *batch)
    del engine
    free_memory()
    mask = batch[0].completion_mask
    if not bf16:
        compare_steps("deepspeed zero3 fp32 vs torch fp32", ds, fp32_step, mask,
                      logprob_mean=1e-5, logprob_max=FP32_LOGPROB_ATOL, grad_rel_l2=5e-4,
                      flips=1e-5, grad_norm_rtol=1e-4, loss_atol=1e-6)
    else:
        compare_steps("deepspeed zero3 bf16 vs torch fp32", ds, fp32_step, mask,
                      logprob_mean=BF16_LOGPROB_MEAN, logprob_max=BF16_LOGPROB_MAX,
                      grad_rel_l2=BF16_GRAD_REL_L2, flips=BF16_UPDATE_FLIPS,
                      grad_norm_rtol=BF16_GRAD_REL_L2, loss_atol=1e-5)


# ---- runs anywhere: the skip path and the check script's CPU side --------------------------

def _gpu_test_names() -> set[str]:
    return {name for name, f in globals().items() if name.startswith("test_")
            and any(m.name == "gpu" for m in getattr(f, "pytestmark", []))}


def test_without_cuda_every_gpu_test_is_skipped_with_its_reason(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != ON_CPU}
    env["CUDA_VISIBLE_DEVICES"] = ""  # hides any GPU: torch.cuda.is_available() is False
    junit = tmp_path / "junit.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", str(Path(__file__)), "-q", "-rs",
         "-p", "no:cacheprovider", f"--junitxml={junit}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    cases = ET.parse(junit).findall(".//testcase")
    assert {c.get("name").split("[")[0] for c in cases} == _gpu_test_names(), log[-4000:]
    for case in cases:
        assert case.find("error") is None and case.find("failure") is None, case.get("name")
        skipped = case.find("skipped")
        assert skipped is not None and NO_CUDA in skipped.get("message", ""), case.get("name")
    assert "needs CUDA" in log  # -rs prints the reason


def test_gpu_check_script_stops_before_installing_anything_without_cuda(tmp_path):
    for script in ("gpu_check.sh", "gpu_wheels.sh"):
        subprocess.run(["bash", "-n", str(ROOT / "scripts" / script)], check=True)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OUT": str(tmp_path),
           "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 2, log
    assert "no CUDA device" in log and "nothing was installed" in log, log
    assert "pip install" not in log and "Installing" not in log, log
    assert (tmp_path / "check.log").read_text().strip()  # the log lands where the caller looks
