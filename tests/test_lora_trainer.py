"""GRPOTrainer with LoRA end to end (vLLM CPU build with only the adapter synced each step,
TorchEngine, packaged SmolLM2, the dense reward of tests/trainer_worker.py): the reward rises,
a SIGKILLed run resumes exactly, and the checkpoint is a PEFT adapter that exports to a plain
Hugging Face model."""

import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

from grpo.checkpoint import latest_checkpoint
from test_trainer import SMALL, _metrics_without_timing, _run, kill_at_first_checkpoint

# LoRA's learning rate (full fine-tuning here uses 1e-5); beta > 0: the reference is the base
# model with the adapter off. One thread: on a shared 2-core machine 2 threads ran 5-10x slower.
LORA = dict(SMALL, lora_r=8, learning_rate=2e-3, beta=0.04, max_steps=4, save_steps=2,
            save_total_limit=3, lora_sync="adapter")  # the adapter path (merged is the default)
# The length reward: every group has signal, so a step's mean reward does not depend on which
# prompts it drew and four steps can show it rise.
LENGTH = {"GRPO_TEST_REWARD": "length"}


@pytest.mark.slow
def test_lora_run_learns_resumes_exactly_after_sigkill_and_exports(tmp_path):
    assert _run(LORA, tmp_path / "a", threads=1, env=LENGTH).wait(timeout=900) == 0
    child = _run(LORA, tmp_path / "b", threads=1, env=LENGTH)
    kill_at_first_checkpoint(child, tmp_path / "b", timeout=900)
    assert latest_checkpoint(tmp_path / "b").name == "checkpoint-2"
    resumed = dict(LORA, resume_from_checkpoint="latest")
    assert _run(resumed, tmp_path / "b", threads=1, env=LENGTH).wait(timeout=900) == 0

    a, b = _metrics_without_timing(tmp_path / "a"), _metrics_without_timing(tmp_path / "b")
    assert [r["step"] for r in a] == [1, 2, 3, 4] and a == b
    rewards = [r["reward"] for r in a]
    print("LoRA rewards per step:", rewards, "kl:", [r["kl"] for r in a])
    assert sum(rewards[2:]) > sum(rewards[:2])  # the reward rises
    assert a[0]["kl"] == 0 and a[-1]["kl"] > 0  # the adapter moved the policy off the base
    ckpt_a, ckpt_b = tmp_path / "a" / "checkpoint-4", tmp_path / "b" / "checkpoint-4"
    wa = load_file(ckpt_a / "adapter_model.safetensors")
    wb = load_file(ckpt_b / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[n], wb[n]) for n in wa)
    assert not (ckpt_a / "model.safetensors").exists()  # the adapter only, not the base

    # PEFT loads the adapter; the exported merged directory is the same model as a plain one.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from grpo.export import export_merged
    from grpo.models import resolve_model

    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(resolve_model(None)),
                                     ckpt_a).eval()
    merged = AutoModelForCausalLM.from_pretrained(export_merged(ckpt_a, tmp_path / "m")).eval()
    ids = torch.tensor([[1, 504, 3458, 282, 4193, 30, 2]])
    with torch.no_grad():
        want, got = peft(ids).logits, merged(ids).logits
        base = AutoModelForCausalLM.from_pretrained(resolve_model(None)).eval()(ids).logits
    assert_close(got, want, rtol=1e-4, atol=1e-4)  # W + BA in one matmul vs two: fp32 roundoff
    assert (want - base).abs().max() > 1e-2  # the check can fail: the adapter changed the model
