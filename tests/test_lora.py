"""LoRA (peft) in TorchEngine: only the adapter trains, the reference is the base model, the
gradient is the chain rule through the full model's, and the adapter saves and resumes.

The wiring checks run on a tiny random Llama (fast, float32); the ones about the real model
(base weights untouched, reference = base) on the packaged SmolLM2 with tests/engine_batch.py.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from conftest import TINY_VOCAB as VOCAB
from engine_batch import gradients, make_batch
from grpo.engine import LoraSettings, StepSettings, TorchEngine
from grpo.engine.lora import adapter_parameters
from grpo.rollouts import Rollouts

LORA = LoraSettings(lora_r=4, seed=1)  # alpha None: 2 * r = 8, so the update is B @ A * 2


def _batch(n=8, seed=0) -> tuple[Rollouts, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(2, VOCAB, (2 + i % 3,), generator=g).tolist() for i in range(n)]
    completions = [torch.randint(2, VOCAB, (1 + (3 * i) % 6,), generator=g).tolist()
                   for i in range(n)]
    rollouts = Rollouts.from_lists(prompts, completions, [[-4.0] * len(c) for c in completions],
                                   [False] * n, ["x"] * n, ["p"] * n, group_size=2, pad_id=0)
    return rollouts, torch.randn(n, generator=g)


def _engine(path, lora=LORA, **kw) -> TorchEngine:
    settings = StepSettings(**{"learning_rate": 1e-2, "beta": 0.1, "max_completion_length": 6,
                               **kw})
    return TorchEngine(path, settings, device="cpu", lora=lora)


def test_lora_gradient_is_the_chain_rule_through_the_full_models(tiny_model):
    """With B = 0 (peft's start), the adapted weight is W + s B A with s = alpha / r = 2, so
    dL/dB = s (dL/dW) A^T and dL/dA = s B^T (dL/dW) = 0: the full fine-tuning engine's gradient
    on the same batch, pushed through the adapter by hand."""
    rollouts, advantages = _batch()
    full = gradients(_engine(tiny_model, lora=LoraSettings()), rollouts, advantages)
    engine = _engine(tiny_model)
    grads = gradients(engine, rollouts, advantages)
    adapted = [n for n in full if n.endswith("proj.weight")]
    assert len(adapted) == 2 * 7  # q, k, v, o, gate, up, down in each of 2 layers
    for name in adapted:
        module = name.removesuffix(".weight")
        prefix = f"base_model.model.{module}"
        a = dict(engine.model.named_parameters())[f"{prefix}.lora_A.default.weight"]
        assert_close(grads[f"{prefix}.lora_B.default.weight"], 2 * full[name] @ a.detach().T)
        assert torch.count_nonzero(grads[f"{prefix}.lora_A.default.weight"]) == 0
        assert grads[f"{prefix}.base_layer.weight"] is None  # frozen: no gradient at all
    assert grads["base_model.model.model.embed_tokens.weight"] is None


def test_only_the_adapter_is_in_the_optimizer_and_merged_weights_are_w_plus_sba(tiny_model):
    engine = _engine(tiny_model)
    in_optimizer = {id(p) for group in engine.optimizer.param_groups for p in group["params"]}
    adapter = adapter_parameters(engine.model)
    assert in_optimizer == {id(p) for p in adapter.values()}
    # r (in + out) per adapted layer: q, o 4 (32 + 32); k, v 4 (32 + 16); gate, up, down
    # 4 (32 + 64); per layer 256 + 256 + 192 + 192 + 3 * 384 = 2048, two layers: 4096.
    assert sum(p.numel() for p in adapter.values()) == 4096
    rollouts, advantages = _batch()
    for _ in range(2):
        engine.train_step(rollouts, advantages)
    merged = dict(engine.named_weights())
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    assert set(merged) == set(base)  # the plain model's names: what load_weights takes
    layer = "model.layers.1.mlp.down_proj"
    a = adapter[f"base_model.model.{layer}.lora_A.weight"].detach()
    b = adapter[f"base_model.model.{layer}.lora_B.weight"].detach()
    assert b.abs().max() > 1e-3  # trained away from B = 0
    assert_close(merged[f"{layer}.weight"], base[f"{layer}.weight"] + 2 * b @ a)
    assert torch.equal(merged["model.embed_tokens.weight"], base["model.embed_tokens.weight"])


def test_lora_resume_is_bit_identical_and_the_adapter_loads_in_peft(tiny_model, tmp_path):
    rollouts, advantages = _batch()
    engine = _engine(tiny_model)
    engine.train_step(rollouts, advantages)
    engine.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "ckpt" / "model.safetensors").exists()  # the base is not copied
    first = engine.train_step(rollouts, advantages)
    after = {n: p.detach().clone() for n, p in adapter_parameters(engine.model).items()}
    other = _engine(tiny_model, lora=LoraSettings(lora_r=4, seed=2))  # another initial A
    other.load(tmp_path / "ckpt")
    assert other.step == 1
    second = other.train_step(rollouts, advantages)
    assert first == {**second, "time/logprobs": first["time/logprobs"],
                     "time/update": first["time/update"]}
    for name, p in adapter_parameters(other.model).items():
        assert torch.equal(p, after[name]), name
    # PEFT itself reads the checkpoint: the same log-probs as the engine's policy.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from grpo.logprobs import sequence_logprobs

    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model),
                                     tmp_path / "ckpt").eval()
    loaded = _engine(tiny_model)
    loaded.load(tmp_path / "ckpt")
    with torch.no_grad():
        want, _ = sequence_logprobs(peft.get_base_model(), rollouts.input_ids, rollouts.attention_mask,
                                    rollouts.completion_mask)
    assert_close(loaded.policy_logprobs(rollouts), want)
    with pytest.raises(ValueError, match="does not match this engine's adapter"):
        _engine(tiny_model, lora=LoraSettings(lora_r=4, lora_target_modules=["q_proj"])).load(
            tmp_path / "ckpt")


def test_smollm2_base_weights_stay_bit_identical_and_the_reference_is_the_base_model():
    """A LoRA step on SmolLM2 (lr 1e-3): every base tensor equals the packaged file's, the
    reference log-probs equal a separately loaded base model's exactly, the policy moved."""
    from safetensors.torch import load_file

    from grpo.logprobs import LogprobModel
    from grpo.engine.weights import load_causal_lm

    rollouts, advantages = make_batch()
    engine = TorchEngine(None, StepSettings(learning_rate=1e-3, beta=0.04), device="cpu",
                         lora=LoraSettings(lora_r=8))
    # 8 (in + out) per adapted layer (hidden 576, kv 192, mlp 1536): q, o 9216; k, v 6144;
    # gate, up, down 16896; per layer 81408; 30 layers: 2,442,240 (1.8 % of 134.5 M).
    assert sum(p.numel() for p in engine.model.parameters() if p.requires_grad) == 2_442_240
    engine.train_step(rollouts, advantages)
    packaged = load_file(f"{engine.source}/model.safetensors")
    packaged["lm_head.weight"] = packaged["model.embed_tokens.weight"]  # tied: saved once
    lm = engine.model.get_base_model()
    for name, tensor in lm.state_dict().items():
        if ".lora_" not in name:
            assert torch.equal(tensor, packaged[name.replace(".base_layer.", ".")]), name
    base = LogprobModel(load_causal_lm(engine.source, "cpu", trainable=False))
    with torch.no_grad():
        want = base(rollouts.input_ids, rollouts.attention_mask, rollouts.completion_mask)[0]
    assert torch.equal(engine.ref_logprobs(rollouts), want)
    policy = engine.policy_logprobs(rollouts)
    assert (policy - want)[rollouts.completion_mask.bool()].abs().max() > 1e-2


@pytest.mark.parametrize("kwargs, match", [
    (dict(lora_r=-1), "lora_r must be an integer >= 0"),
    (dict(lora_r=8, lora_alpha=0), "lora_alpha must be > 0"),
    (dict(lora_dropout=1.0), "lora_dropout must be in"),
    (dict(lora_target_modules=[]), "lora_target_modules must be None"),
])
def test_bad_lora_settings_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoraSettings(**kwargs)


def test_lora_config_fields_reach_the_settings():
    from grpo.config import GRPOConfig

    config = GRPOConfig.from_args(["--lora_r", "16", "--lora_target_modules", "q_proj", "v_proj",
                                   "--lora_alpha", "8", "--seed", "3"])
    assert config.lora_settings() == LoraSettings(lora_r=16, lora_alpha=8.0, seed=3,
                                                  lora_target_modules=("q_proj", "v_proj"))
    peft = config.lora_settings().peft_config()
    assert (peft.r, peft.lora_alpha, set(peft.target_modules)) == (16, 8.0, {"q_proj", "v_proj"})
    assert LoraSettings(lora_r=4).peft_config().target_modules == "all-linear"
    with pytest.raises(ValueError, match="lora_sync must be one of"):
        GRPOConfig(lora_sync="full")
    with pytest.raises(ValueError, match="lora_sync='adapter' needs sampler='vllm'"):
        GRPOConfig(lora_r=8, sampler="hf", lora_sync="adapter")
    assert GRPOConfig(lora_r=8, sampler="hf").lora_sync == "merged"  # the default works with hf


def test_export_refuses_a_directory_without_an_adapter(tiny_model, tmp_path, capsys):
    from grpo.export import adapter_base, export_merged, main

    assert adapter_base(tiny_model) is None
    with pytest.raises(FileNotFoundError, match="holds no LoRA adapter"):
        export_merged(tiny_model, tmp_path / "out")
    with pytest.raises(SystemExit, match="error: .* holds no LoRA adapter"):
        main([tiny_model, str(tmp_path / "out")])
