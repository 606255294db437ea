"""TorchEngine (one process) on a tiny random Llama saved as a Hugging Face directory (fast,
float32), plus the pure helpers the engines share. The packaged SmolLM2 is used where the real
model matters (tests/test_engine_deepspeed.py: DeepSpeed against TorchEngine)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from dataclasses import replace

from conftest import TINY_VOCAB as VOCAB
from engine_batch import gradients
from grpo.engine import StepSettings, TorchEngine, ZeroSettings
from grpo.engine.ds_config import build_ds_config
from grpo.engine.step import micro_batch_slices
from grpo.logprobs import sequence_logprobs
from grpo.rollouts import Rollouts


def _batch(n=8, seed=0, shared_prompts=False) -> tuple[Rollouts, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    prompts, completions, logprobs = [], [], []
    for i in range(n):
        prompts.append(torch.randint(2, VOCAB, (2 + i % 3,), generator=g).tolist())
        if shared_prompts and i % 2:  # groups of G = 2 rows with one prompt
            prompts[i] = prompts[i - 1]
        length = 1 + (3 * i) % 6  # 1..6 tokens: padding in most rows
        completions.append(torch.randint(2, VOCAB, (length,), generator=g).tolist())
        logprobs.append([-4.0] * length)
    rollouts = Rollouts.from_lists(prompts, completions, logprobs, [False] * n, ["x"] * n,
                                   ["p"] * n, group_size=2, pad_id=0)
    return rollouts, torch.randn(n, generator=g)


def _engine(path, **kw) -> TorchEngine:
    kw.setdefault("learning_rate", 1e-3)
    return TorchEngine(path, StepSettings(max_completion_length=6, **kw), device="cpu")


def _with(engine, **changes) -> TorchEngine:
    engine.settings = replace(engine.settings, **changes)
    return engine


_grads = gradients


def _loss_grads(engine, loss) -> dict[str, torch.Tensor]:
    params = dict(engine.model.named_parameters())
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()), retain_graph=True)))


def _assert_any_split_gives(engine, rollouts, advantages, expected) -> None:
    """The engine's gradient, whole and in 3-row micro-batches, equals `expected` (fp32 sums in
    another order: a few ulps of the largest entry)."""
    for micro in (None, 3):
        got = _grads(_with(engine, micro_batch_size=micro), rollouts, advantages)
        for name in expected:
            assert_close(got[name], expected[name], rtol=1e-5,
                         atol=1e-6 * expected[name].abs().max())


@pytest.mark.parametrize("loss_type", ["grpo", "token_mean", "dr_grpo"])
def test_gradient_does_not_depend_on_micro_batch_size(tiny_model, loss_type):
    rollouts, advantages = _batch()
    engine = _engine(tiny_model, loss_type=loss_type, beta=0.1)
    whole = _grads(engine, rollouts, advantages)
    for micro in (1, 3, 5):  # 3 and 5 leave a shorter last micro-batch
        split = _grads(_with(engine, micro_batch_size=micro), rollouts, advantages)
        for name in whole:  # fp32 sums in another order: a few ulps of the largest entry
            assert_close(split[name], whole[name], rtol=1e-5, atol=1e-6 * whole[name].abs().max())


def test_one_step_is_adamw_on_the_full_batch_gradient(tiny_model):
    """The engine's step equals a hand-written one: clip to max_grad_norm, torch AdamW."""
    rollouts, advantages = _batch()
    engine = _engine(tiny_model, micro_batch_size=3, max_grad_norm=0.5, weight_decay=0.01)
    grads = _grads(engine, rollouts, advantages)
    params = {n: p.detach().clone().requires_grad_() for n, p in engine.model.named_parameters()}
    for n, p in params.items():
        p.grad = grads[n].clone()
    norm = torch.nn.utils.clip_grad_norm_(list(params.values()), 0.5)
    torch.optim.AdamW(list(params.values()), lr=1e-3, betas=(0.9, 0.99),
                      weight_decay=0.01).step()
    metrics = engine.train_step(rollouts, advantages)
    assert metrics["grad_norm"] == pytest.approx(norm.item(), rel=1e-5)
    for n, p in engine.model.named_parameters():
        assert_close(p.detach(), params[n].detach(), rtol=0, atol=1e-7)


def test_metrics_have_the_promised_keys_and_sane_values(tiny_model):
    rollouts, advantages = _batch()
    metrics = _engine(tiny_model).train_step(rollouts, advantages)
    assert set(metrics) >= {"loss", "kl", "clip_ratio", "entropy", "grad_norm", "lr",
                            "logprob_gap", "skipped_nonfinite", "skipped_zero_advantage"}
    assert metrics["kl"] == 0.0  # policy == reference before the first update
    assert metrics["clip_ratio"] == 0.0  # one update: ratio 1
    assert 0 < metrics["entropy"] <= math.log(VOCAB) + 1e-4
    engine = _engine(tiny_model)
    lp = engine.policy_logprobs(rollouts)
    mask = rollouts.completion_mask.bool()
    gap = (rollouts.sampler_logprobs - lp)[mask].abs().mean().item()
    assert metrics["logprob_gap"] == pytest.approx(gap, rel=1e-5)


def test_num_iterations_uses_old_logprobs_from_before_the_first_update(tiny_model):
    """With mu = 3 the later updates see ratio != 1, so clipping can engage; the loss at the
    first update equals the mu = 1 loss (old = current policy then)."""
    rollouts, advantages = _batch()
    one = _engine(tiny_model, learning_rate=0.05).train_step(rollouts, advantages)
    three = _engine(tiny_model, learning_rate=0.05, num_iterations=3,
                    eps_low=0.01).train_step(rollouts, advantages)
    assert three["clip_ratio"] > 0  # lr 0.05 moves log-probs well past 1 +- 0.01
    assert one["clip_ratio"] == 0


def test_beta_zero_loads_no_reference(tiny_model):
    engine = _engine(tiny_model, beta=0.0)
    assert engine.reference is None
    rollouts, advantages = _batch()
    assert engine.ref_logprobs(rollouts) is None
    assert engine.train_step(rollouts, advantages)["skipped_nonfinite"] == 0.0
    assert _engine(tiny_model, beta=0.04).reference is not None


def test_all_zero_advantages_skip_backward_and_keep_weights(tiny_model):
    rollouts, _ = _batch()
    engine = _engine(tiny_model)
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    metrics = engine.train_step(rollouts, torch.zeros(len(rollouts)))
    assert metrics["skipped_zero_advantage"] == 1.0 and metrics["grad_norm"] == 0.0
    assert all(p.grad is None for p in engine.model.parameters())
    for n, p in engine.model.named_parameters():
        assert torch.equal(p.detach(), before[n])


def test_nonfinite_loss_skips_the_update_and_weights_stay_finite(tiny_model):
    rollouts, advantages = _batch()
    engine = _engine(tiny_model, micro_batch_size=4)
    before = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    calls = []

    def poison(module, inputs, output):  # only the second micro-batch turns NaN
        calls.append(1)
        return output * float("nan") if len(calls) == 2 else output  # the ref is another model

    hook = engine.model.model.norm.register_forward_hook(poison)
    metrics = engine.train_step(rollouts, advantages)
    hook.remove()
    assert metrics["skipped_nonfinite"] == 1.0
    for n, p in engine.model.named_parameters():
        assert torch.equal(p.detach(), before[n])
    assert engine.train_step(rollouts, advantages)["skipped_nonfinite"] == 0.0  # recovers
    assert all(torch.isfinite(p).all() for p in engine.model.parameters())


def test_resume_is_bit_identical(tiny_model, tmp_path):
    rollouts, advantages = _batch()
    kw = dict(lr_scheduler_type="cosine", warmup_steps=1, max_steps=5)
    a = _engine(tiny_model, **kw)
    a.train_step(rollouts, advantages)
    a.save(tmp_path / "ckpt")
    a.train_step(*_batch(seed=1))
    b = _engine(tiny_model, **kw)
    b.load(tmp_path / "ckpt")
    assert b.step == 1
    b.train_step(*_batch(seed=1))
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        assert torch.equal(p, q), n
    from transformers import AutoModelForCausalLM
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")  # plain HF directory
    assert (tmp_path / "ckpt" / "config.json").exists()
    assert sum(p.numel() for p in loaded.parameters()) == sum(
        p.numel() for p in a.model.parameters())


def test_named_weights_is_the_state_dict(tiny_model):
    engine = _engine(tiny_model)
    weights = dict(engine.named_weights())
    state = engine.model.state_dict()
    assert list(weights) == list(state)  # tied lm_head.weight included, same order
    for name in state:
        assert torch.equal(weights[name], state[name])


@pytest.mark.parametrize("loss_type", ["grpo", "token_mean"])
def test_rows_out_of_the_loss_mask_count_as_if_never_sampled(tiny_model, loss_type):
    """loss_mask (the trainer's truncation filter) zeroes rows 0-1: the gradient is that of the
    other six rows alone, normaliser included; the forward still sees whole completions."""
    rollouts, advantages = _batch()
    engine = _engine(tiny_model, beta=0.1, loss_type=loss_type, micro_batch_size=3)
    loss_mask = rollouts.completion_mask.clone()
    loss_mask[:2] = 0
    masked = _grads(engine, rollouts, advantages, loss_mask)
    rest = _grads(engine, rollouts.select(range(2, 8)), advantages[2:])
    for name in rest:
        assert_close(masked[name], rest[name], rtol=1e-5, atol=1e-6 * rest[name].abs().max())
    full = _grads(engine, rollouts, advantages)
    assert any(not torch.allclose(full[n], rest[n]) for n in rest)  # the two rows did count
    metrics = engine.train_step(rollouts, advantages, loss_mask)
    sampled = int(rollouts.completion_mask.sum())
    assert metrics["num_tokens"] == sampled - int(rollouts.completion_mask[:2].sum())


def test_truncated_importance_sampling_is_the_weighted_loss_in_any_micro_batch_split(tiny_model):
    """tis_cap: the engine's gradient is that of grpo_loss with the batch's sampler log-probs
    (a sampler off by -1.5 .. +1.5 nats per token, so some weights pass the cap of 2), however
    the batch is split; the metrics are the token means of the weights."""
    from grpo.loss import grpo_loss

    rollouts, advantages = _batch()
    engine = _engine(tiny_model, beta=0.0, tis_cap=2.0)
    mask = rollouts.completion_mask.bool()
    with torch.no_grad():
        policy = engine.policy_logprobs(rollouts)
    shift = torch.linspace(-1.5, 1.5, mask.numel()).view_as(policy)
    rollouts.sampler_logprobs = torch.where(mask, policy - shift, torch.zeros(()))
    lp, _ = sequence_logprobs(engine.model, rollouts.input_ids, rollouts.attention_mask,
                              rollouts.completion_mask, 1.0, 1024)
    want = grpo_loss(lp, None, None, advantages, rollouts.completion_mask, beta=0.0,
                     sampler_logprobs=rollouts.sampler_logprobs, tis_cap=2.0)
    expected = _loss_grads(engine, want.loss)
    plain = _grads(_engine(tiny_model, beta=0.0), rollouts, advantages)
    _assert_any_split_gives(engine, rollouts, advantages, expected)
    assert any(not torch.allclose(plain[n], expected[n]) for n in expected)  # weights mattered
    weights = torch.exp(shift).clamp(max=2.0)[mask]
    metrics = engine.train_step(rollouts, advantages)
    assert metrics["tis_weight"] == pytest.approx(weights.mean().item(), rel=1e-5)
    assert metrics["tis_capped"] == pytest.approx((torch.exp(shift)[mask] > 2).float().mean().item())
    assert 0 < metrics["tis_capped"] < 1


def test_loss_variants_reach_the_loss_in_any_micro_batch_split(tiny_model):
    """GSPO, k3_plus, kl_ratio_weight and sequence-level truncated importance sampling, set in
    StepSettings: the engine's gradient is grpo_loss's on the whole batch with the same keywords,
    however the batch is split (micro-batches are whole rows, so each completion's ratio and
    weight are its own)."""
    from grpo.loss import grpo_loss

    variants = dict(importance_sampling_level="sequence", kl_estimator="k3_plus",
                    kl_ratio_weight=True, tis_cap=2.0, tis_mode="sequence_truncate")
    rollouts, advantages = _batch()
    engine = _engine(tiny_model, beta=0.1, **variants)
    torch.manual_seed(1)
    with torch.no_grad():  # a reference away from the policy, so the KL term has a gradient
        for p in engine.reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
        policy = engine.policy_logprobs(rollouts)
    mask = rollouts.completion_mask.bool()
    shift = torch.linspace(-0.4, 0.4, mask.numel()).view_as(policy)  # some rows' rho pass 2
    rollouts.sampler_logprobs = torch.where(mask, policy - shift, torch.zeros(()))
    lp, _ = sequence_logprobs(engine.model, rollouts.input_ids, rollouts.attention_mask,
                              rollouts.completion_mask, 1.0, 1024)
    ref = engine.ref_logprobs(rollouts)
    def loss(**kw):
        return grpo_loss(lp, None, ref, advantages, rollouts.completion_mask, beta=0.1,
                         max_completion_length=6, **kw).loss

    expected = _loss_grads(engine, loss(**variants, sampler_logprobs=rollouts.sampler_logprobs))
    plain = _loss_grads(engine, loss())
    _assert_any_split_gives(engine, rollouts, advantages, expected)
    assert any(not torch.allclose(plain[n], expected[n]) for n in expected)  # variants mattered


def test_loss_variants_on_the_command_line_reach_the_step_settings_and_the_loss():
    from grpo.config import GRPOConfig

    chosen = dict(importance_sampling_level="sequence", kl_estimator="k2", kl_ratio_weight=True,
                  tis_cap=2.0, tis_mode="sequence_mask", eps_low=3e-4, eps_high=4e-4)
    config = GRPOConfig.from_args([f"--{k}={str(v).lower()}" for k, v in chosen.items()])
    settings = config.step_settings()
    loss = settings.loss()
    for name, value in chosen.items():
        assert getattr(config, name) == getattr(settings, name) == getattr(loss, name) == value
    default = GRPOConfig().step_settings().loss()
    assert (default.importance_sampling_level, default.kl_estimator, default.kl_ratio_weight,
            default.tis_mode) == ("token", "k3", False, "token_truncate")


def test_gradient_checkpointing_gives_the_same_gradient(tiny_model):
    rollouts, advantages = _batch()
    plain = _grads(_engine(tiny_model), rollouts, advantages)
    ckpt = _grads(_engine(tiny_model, gradient_checkpointing=True), rollouts, advantages)
    for name in plain:
        assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-7)


def test_shared_prompt_forward_takes_the_same_step():
    """SmolLM2 on tests/engine_batch.py (4 prompts x G = 2, ragged completions), beta > 0 so the
    reference pass shares too: one step with each prompt run once per group (micro-batches of
    4 rows = 2 groups, and the whole batch) lands on the full forward's weights."""
    from engine_batch import make_batch

    rollouts, advantages = make_batch()
    after = {}
    for share in (True, False):
        engine = TorchEngine(None, StepSettings(learning_rate=1e-5, beta=0.04, micro_batch_size=4,
                                                share_prompt_forward=share), device="cpu")
        grads = _grads(engine, rollouts, advantages)
        metrics = engine.train_step(rollouts, advantages)
        after[share] = grads, metrics, {n: p.detach().clone()
                                        for n, p in engine.model.named_parameters()}
        del engine
    (grads, metrics, weights), (want_grads, want_metrics, want) = after[True], after[False]
    assert metrics["loss"] == pytest.approx(want_metrics["loss"], rel=1e-5)
    assert metrics["grad_norm"] == pytest.approx(want_metrics["grad_norm"], rel=1e-5)
    for n in want:  # fp32 sums in another order: a few ulps of the largest entry
        scale = want_grads[n].abs().max()
        assert_close(grads[n], want_grads[n], rtol=1e-4, atol=1e-5 * scale)
        # AdamW's first update is lr * g / (|g| + eps), eps = 1e-8: ~lr * sign(g) wherever
        # |g| >> eps, so those entries must agree to 0.1 lr. Where |g| is within 100 eps of 0
        # (an embedding row of a token seen once) the fp32 noise in g, up to 1e-5 of the largest
        # entry, can move the update anywhere in (-lr, lr): seen 0.15 lr on 1 of 884736 entries.
        determined = want_grads[n].abs() > 100 * 1e-8
        assert_close(weights[n][determined], want[n][determined], rtol=0, atol=1e-6)
        assert_close(weights[n], want[n], rtol=0, atol=2e-5)  # 2 lr: AdamW's bound


def test_learning_rate_schedules():
    warm = StepSettings(learning_rate=1.0, warmup_steps=3)
    assert warm.learning_rate_at(0) == 0.25  # (0+1)/(3+1)
    assert warm.learning_rate_at(3) == 1.0
    cosine = StepSettings(learning_rate=1.0, lr_scheduler_type="cosine", warmup_steps=2,
                          max_steps=6)
    assert cosine.learning_rate_at(2) == 1.0  # warmup done: cos(0)
    assert cosine.learning_rate_at(4) == pytest.approx(0.5)  # half way: cos(pi/2)
    assert cosine.learning_rate_at(6) == pytest.approx(0.0)


def test_micro_batch_slices():
    assert micro_batch_slices(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert micro_batch_slices(5, None) == [slice(0, 5)]


@pytest.mark.parametrize("kwargs, match", [
    (dict(lr_scheduler_type="cosine"), "max_steps"),
    (dict(lr_scheduler_type="linear"), "lr_scheduler_type"),
    (dict(micro_batch_size=0), "micro_batch_size"),
    (dict(num_iterations=0), "num_iterations"),
    (dict(loss_type="mean"), "loss_type"),
    (dict(temperature=0.0), "temperature"),
    (dict(tis_cap=0.9), "tis_cap"),
    (dict(importance_sampling_level="sentence"), "importance_sampling_level"),
    (dict(kl_estimator="k4"), "kl_estimator"),
    (dict(tis_mode="sequence_mask"), "tis_mode='sequence_mask' needs tis_cap"),
])
def test_bad_step_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StepSettings(**kwargs)  # so no engine is ever built from them


def test_bad_batch(tiny_model):
    engine = _engine(tiny_model)
    rollouts, advantages = _batch()
    with pytest.raises(ValueError, match="advantages"):
        engine.train_step(rollouts, advantages[:-1])
    with pytest.raises(ValueError, match="advantages must be finite"):
        engine.train_step(rollouts, advantages * float("nan"))


@pytest.mark.parametrize("user, match", [
    ({"gradient_accumulation_steps": 4}, "gradient_accumulation_steps"),
    ({"train_micro_batch_size_per_gpu": 8}, "train_micro_batch_size_per_gpu"),
    ({"train_batch_size": 64}, "train_batch_size"),
    ({"gradient_clipping": 0.3}, "gradient_clipping"),
    ({"optimizer": {"type": "Adam"}}, "optimizer"),
    ({"scheduler": {"type": "WarmupLR"}}, "scheduler"),
    ({"zero_optimization": {"stage": 2}}, "stage"),
    ({"zero_optimization": {"offload_optimizer": {"device": "cpu"}}}, "offload_optimizer"),
    ({"bf16": {"enabled": True}}, "bf16"),
])
def test_ds_config_contradicting_the_grpo_config_is_refused(user, match):
    with pytest.raises(ValueError, match=match):
        build_ds_config(ZeroSettings(zero_stage=3, deepspeed_config=user),
                        StepSettings(micro_batch_size=2), world_size=2)


def test_ds_config_fills_auto_and_keeps_tuning():
    user = {"gradient_accumulation_steps": "auto",
            "zero_optimization": {"stage3_max_live_parameters": 7}}
    config = build_ds_config(ZeroSettings(zero_stage=3, deepspeed_config=user),
                             StepSettings(micro_batch_size=2, max_grad_norm=0.5), world_size=2)
    assert config["gradient_accumulation_steps"] == 1 and config["train_batch_size"] == 4
    assert config["gradient_clipping"] == 0.5
    assert config["zero_optimization"]["stage3_max_live_parameters"] == 7


def test_zero_buckets_are_sized_from_the_hidden_size_unless_given():
    from grpo.engine.ds_config import size_buckets

    user = {"zero_optimization": {"stage3_prefetch_bucket_size": 123,
                                  "stage3_param_persistence_threshold": "auto"}}
    zero = size_buckets(build_ds_config(ZeroSettings(deepspeed_config=user), StepSettings()),
                        576)["zero_optimization"]
    assert zero["reduce_bucket_size"] == 331_776  # 576^2
    assert zero["stage3_prefetch_bucket_size"] == 123  # the user's own
    assert zero["stage3_param_persistence_threshold"] == 5_760  # "auto": 10 x 576
    zero2 = size_buckets(build_ds_config(ZeroSettings(zero_stage=2), StepSettings()),
                         576)["zero_optimization"]
    assert zero2["reduce_bucket_size"] == 331_776 and "stage3_prefetch_bucket_size" not in zero2


def test_nvme_offload_needs_a_writable_path(tmp_path):
    with pytest.raises(ValueError, match="nvme_path"):
        ZeroSettings(offload_param="nvme")
    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where the folder should be: mkdir fails
    zero = ZeroSettings(offload_optimizer="nvme", nvme_path=str(blocker / "swap"))
    with pytest.raises(ValueError, match="not a writable folder"):
        build_ds_config(zero, StepSettings())
    with pytest.raises(ValueError, match="zero_stage=3"):
        ZeroSettings(zero_stage=2, offload_param="cpu")


def test_bf16_autocast_step_runs_with_fp32_master_weights(tiny_model):
    """bf16=True autocasts the forward (here on CPU; on GPUs the same code path with "cuda");
    the weights and optimizer state stay fp32, and log-probs stay within bf16 rounding of fp32."""
    rollouts, advantages = _batch()
    fp32 = _engine(tiny_model).policy_logprobs(rollouts)
    engine = _engine(tiny_model, bf16=True)
    bf16 = engine.policy_logprobs(rollouts)
    mask = rollouts.completion_mask.bool()
    assert (bf16 - fp32)[mask].abs().max() < 0.05  # bf16 has 8 bits of mantissa: ~0.4% per op
    assert (bf16 - fp32)[mask].abs().max() > 0  # autocast did engage
    metrics = engine.train_step(rollouts, advantages)
    assert metrics["skipped_nonfinite"] == 0.0
    assert all(p.dtype == torch.float32 for p in engine.model.parameters())
