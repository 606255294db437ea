"""Loss and advantage agreement with TRL's GRPOTrainer on identical inputs (issues 8 and 18).

    .venv/bin/python benchmarks/loss_agreement.py

Runs in grpo's venv and orchestrates: it makes the inputs (fixed seed, float64: N=8 completions
of 2 prompts x G=4, T=16 with ragged masks, old log-probs off by up to +-0.5 so both clip bounds
are hit, eps_low=0.2 and eps_high=0.28), saves them to a temporary file, runs the TRL side of
this file under benchmarks/.venv-trl/bin/python (creating that venv with benchmarks/trl_env.sh
when it is missing), and compares.

The TRL side calls TRL's real `GRPOTrainer._compute_loss` on a real trainer built from a
GRPOConfig per case (a tiny random Llama model with the packaged SmolLM2 tokenizer, so building
one costs well under a second). Only the model forward is replaced: the trainer's
`_get_per_token_logps_and_entropies` returns rows of a float64 leaf tensor, so TRL's loss sees
exactly the log-probs grpo's `grpo_loss` sees, and d loss / d logprobs is read off the leaf's
grad. Micro-batches are fed as TRL's `_prepare_inputs` feeds them (its `inputs` dict, with
`num_items_in_batch` counted on the whole generation batch) and their losses summed, as the
gradients of TRL's accumulation steps are (GRPOTrainer scales for accumulation itself).

The objective variants TRL defines too (issue 18): GSPO (`importance_sampling_level=
"sequence"` on both sides), grpo's `kl_ratio_weight` against TRL's `use_bias_correction_kl`, and
grpo's `tis_mode`/`tis_cap` against TRL's `vllm_importance_sampling_mode`/`_clip_max`. TRL
computes its vLLM importance-sampling ratios in `_generate_and_score_completions` from a sampler's
log-probs (made up here, within +-0.4 nats of the old policy's); the TRL side evaluates those
lines, transcribed below after checking them against the installed source, passes the ratios in
the batch as TRL does, and sets `use_vllm` and `vllm_importance_sampling_correction` on the
trainer so that `_compute_loss` applies them (no vLLM is imported or run).

Advantages: grpo's `group_advantages` against TRL's group normalisation, which lives inside
`_generate_and_score_completions` (it needs generation), so the TRL side evaluates the lines of
that method transcribed below with TRL's own `nanstd`, after checking that those lines are still
in the installed source.

Exit status 1 if any case that should agree does not (float64, relative 1e-12).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TRL_PY = HERE / ".venv-trl" / "bin" / "python"
RTOL = 1e-12

N, G, T = 8, 4, 16
MAX_COMPLETION_LENGTH = 24  # TRL's config constant, the dr_grpo divisor (> T on purpose)
EPS_LOW, EPS_HIGH = 0.2, 0.28

TIS_CAP = 1.3  # C: some token weights and some completions' rho pass it (sampler +-0.4 nats)
GSPO_EPS = (3e-4, 4e-4)  # GSPO's clip range (paper section 5.1)

NO_BC = dict(use_bias_correction_kl=False)  # TRL's KL without its importance-ratio factor
SEQ = dict(importance_sampling_level="sequence")  # the same keyword and values on both sides
MASK_NOTE = "TRL keeps weight w on kept tokens (w 1[w <= C]); grpo 1[w <= C]"


def case(name, ours, trl, beta, micro=1, empty_row=False, on_policy=False, trl_args=None,
         expect=True, note="", ours_args=None, tis=None, eps=(EPS_LOW, EPS_HIGH),
         trl_kept_as_one=False):
    """One comparison. trl_args: GRPOConfig fields beyond the shared ones (beta != 0 cases
    set use_bias_correction_kl=False, the definition grpo's default matches; TRL's default,
    True, is shown in its own rows). ours_args: grpo_loss keywords beyond the shared ones.
    tis: a tis_mode (= TRL's vllm_importance_sampling_mode) with cap TIS_CAP on both sides.
    trl_kept_as_one: TRL's *_mask ratios with every kept (nonzero) weight set to 1, grpo's
    definition, to show that this is the only difference.
    expect=False: the definitions differ and the numbers must too."""
    return dict(name=name, ours=ours, trl=trl, beta=beta, micro=micro, empty_row=empty_row,
                on_policy=on_policy, trl_args=trl_args or {}, expect=expect, note=note,
                ours_args=ours_args or {}, tis=tis, eps=eps, trl_kept_as_one=trl_kept_as_one)


CASES = [
    case("grpo / grpo", "grpo", "grpo", 0.0),
    case("grpo / grpo", "grpo", "grpo", 0.04, trl_args=NO_BC),
    case("token_mean / bnpo", "token_mean", "bnpo", 0.0),
    case("token_mean / bnpo", "token_mean", "bnpo", 0.04, trl_args=NO_BC),
    case("token_mean / dapo", "token_mean", "dapo", 0.0),
    case("token_mean / dapo", "token_mean", "dapo", 0.04, trl_args=NO_BC),
    case("dr_grpo / dr_grpo", "dr_grpo", "dr_grpo", 0.0, note="both divide by N x 24"),
    case("dr_grpo / dr_grpo", "dr_grpo", "dr_grpo", 0.04, trl_args=NO_BC,
         note="both divide by N x 24"),
    case("token_mean / dapo", "token_mean", "dapo", 0.04, micro=2, trl_args=NO_BC,
         note="both divide by the step's tokens"),
    case("token_mean / bnpo", "token_mean", "bnpo", 0.04, micro=2, trl_args=NO_BC,
         expect=False, note="bnpo: each micro-batch's own token mean, / 2"),
    case("grpo / grpo", "grpo", "grpo", 0.04, micro=2, trl_args=NO_BC),
    case("dr_grpo / dr_grpo", "dr_grpo", "dr_grpo", 0.04, micro=2, trl_args=NO_BC),
    case("grpo / grpo, one row fully masked", "grpo", "grpo", 0.04, empty_row=True,
         trl_args=NO_BC, expect=False, note="TRL counts the empty row in the mean"),
    case("token_mean / dapo, one row fully masked", "token_mean", "dapo", 0.04, empty_row=True,
         trl_args=NO_BC),
    case("dr_grpo / dr_grpo, one row fully masked", "dr_grpo", "dr_grpo", 0.04,
         empty_row=True, trl_args=NO_BC),
    case("token_mean / dapo, on-policy (old = None)", "token_mean", "dapo", 0.04,
         on_policy=True, trl_args=NO_BC),
    case("token_mean / dapo, TRL default KL", "token_mean", "dapo", 0.04, expect=False,
         note="TRL: KL x ratio (use_bias_correction_kl=True)"),
    case("token_mean / dapo, TRL default KL, on-policy", "token_mean", "dapo", 0.04,
         on_policy=True, expect=False, note="same value, ratio's gradient adds k3 x grad logp"),
    # issue 18: the variants TRL has too
    case("kl_ratio_weight / use_bias_correction_kl", "token_mean", "dapo", 0.04,
         ours_args=dict(kl_ratio_weight=True), note="both: KL x r_t, with its gradient"),
    case("kl_ratio_weight / use_bias_correction_kl, on-policy", "token_mean", "dapo", 0.04,
         on_policy=True, ours_args=dict(kl_ratio_weight=True)),
    case("kl_ratio_weight / use_bias_correction_kl", "grpo", "grpo", 0.04, micro=2,
         ours_args=dict(kl_ratio_weight=True)),
    case("GSPO (sequence level)", "grpo", "grpo", 0.0, trl_args=SEQ, ours_args=SEQ),
    case("GSPO (sequence level)", "grpo", "grpo", 0.04, micro=2, trl_args=dict(SEQ, **NO_BC),
         ours_args=SEQ),
    case("GSPO, clip 3e-4 / 4e-4", "grpo", "grpo", 0.0, trl_args=SEQ, ours_args=SEQ,
         eps=GSPO_EPS, note="GSPO's clip range"),
    case("GSPO, token_mean / dapo", "token_mean", "dapo", 0.04, trl_args=dict(SEQ, **NO_BC),
         ours_args=SEQ, note="TRL warns: not GSPO's aggregation"),
    case("GSPO, on-policy", "grpo", "grpo", 0.04, on_policy=True, trl_args=dict(SEQ, **NO_BC),
         ours_args=SEQ),
    case("GSPO + kl_ratio_weight / + use_bias_correction_kl", "grpo", "grpo", 0.04,
         trl_args=SEQ, ours_args=dict(SEQ, kl_ratio_weight=True), expect=False,
         note="TRL: KL x s_i (the sequence ratio); grpo: KL x r_t"),
    case("tis token_truncate / vLLM IS token_truncate", "token_mean", "dapo", 0.04,
         trl_args=NO_BC, tis="token_truncate"),
    case("tis token_mask / vLLM IS token_mask", "token_mean", "dapo", 0.04, trl_args=NO_BC,
         tis="token_mask", expect=False, note=MASK_NOTE),
    case("tis token_mask / token_mask, TRL's kept weights set to 1", "token_mean", "dapo", 0.04,
         trl_args=NO_BC, tis="token_mask", trl_kept_as_one=True),
    case("tis sequence_truncate / vLLM IS sequence_truncate", "token_mean", "dapo", 0.04,
         trl_args=NO_BC, tis="sequence_truncate"),
    case("tis sequence_mask / vLLM IS sequence_mask", "token_mean", "dapo", 0.04,
         trl_args=NO_BC, tis="sequence_mask", expect=False, note=MASK_NOTE),
    case("tis sequence_mask / sequence_mask, TRL's kept weights set to 1", "grpo", "grpo", 0.04,
         micro=2, trl_args=NO_BC, tis="sequence_mask", trl_kept_as_one=True),
    case("tis token_truncate / vLLM IS token_truncate, on-policy", "grpo", "grpo", 0.04,
         on_policy=True, trl_args=NO_BC, tis="token_truncate"),
    case("GSPO + kl_ratio_weight + tis sequence_truncate", "grpo", "grpo", 0.04, micro=2,
         trl_args=SEQ, ours_args=dict(SEQ, kl_ratio_weight=True), tis="sequence_truncate",
         expect=False, note="TRL: KL x s_i; grpo: KL x r_t"),
]

REWARD_CASES = ["group", "batch", "none"]


# ---------------------------------------------------------------------------------------------
# grpo side (grpo's venv)


def make_inputs() -> dict:
    g = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(N, T, generator=g, dtype=torch.float64) * 3 - 0.05
    old = logprobs + (torch.rand(N, T, generator=g, dtype=torch.float64) - 0.5)  # ratios 0.6-1.65
    ref = logprobs + (torch.rand(N, T, generator=g, dtype=torch.float64) - 0.5) * 0.6
    lengths = torch.tensor([16, 3, 11, 7, 16, 1, 9, 14])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.25, 2.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    advantages = torch.randn(N, generator=g, dtype=torch.float64)
    more_rewards = torch.randn(3 * G, generator=g, dtype=torch.float64)
    sampler = old + (torch.rand(N, T, generator=g, dtype=torch.float64) - 0.5) * 0.8
    return dict(logprobs=logprobs, old=old, ref=ref, mask=mask, advantages=advantages,
                rewards=torch.cat([rewards, more_rewards]), sampler=sampler)


def case_mask(inputs: dict, empty_row: bool) -> torch.Tensor:
    mask = inputs["mask"].clone()
    if empty_row:
        mask[3] = 0  # as TRL's mask_truncated_completions leaves a truncated completion
    return mask


def grpo_side(inputs: dict, case: dict) -> tuple[float, torch.Tensor]:
    from grpo.loss import grpo_loss, loss_normalizer

    ours, beta, micro = case["ours"], case["beta"], case["micro"]
    mask = case_mask(inputs, case["empty_row"])
    old = None if case["on_policy"] else inputs["old"]
    # On-policy the importance weights are pi / pi_sampler (old = logprobs.detach()).
    sampler = inputs["sampler"] if case["tis"] else None
    tis = dict(tis_cap=TIS_CAP, tis_mode=case["tis"]) if case["tis"] else {}
    leaf = inputs["logprobs"].clone().requires_grad_(True)
    # The engine's contract: the divisor of the whole step, passed to every micro-batch.
    normalizer = loss_normalizer(mask, ours, MAX_COMPLETION_LENGTH).double()
    total = 0.0
    for rows in torch.arange(N).chunk(micro):
        out = grpo_loss(leaf[rows], None if old is None else old[rows], inputs["ref"][rows],
                        inputs["advantages"][rows], mask[rows], eps_low=case["eps"][0],
                        eps_high=case["eps"][1], beta=beta, loss_type=ours,
                        max_completion_length=MAX_COMPLETION_LENGTH, normalizer=normalizer,
                        sampler_logprobs=None if sampler is None else sampler[rows],
                        **tis, **case["ours_args"])
        total = total + out.loss
    total.backward()
    return total.item(), leaf.grad


def ensure_trl_env() -> None:
    if not TRL_PY.exists():
        subprocess.run(["bash", str(HERE / "trl_env.sh")], check=True)


def main() -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from grpo.advantages import group_advantages
    from grpo.models import resolve_model

    ensure_trl_env()
    inputs = make_inputs()
    with tempfile.TemporaryDirectory() as tmp:
        in_path, out_path = Path(tmp) / "inputs.pt", Path(tmp) / "trl.pt"
        torch.save(dict(inputs=inputs, cases=CASES, reward_cases=REWARD_CASES,
                        tokenizer=resolve_model(None)), in_path)
        env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                   HF_HUB_DISABLE_PROGRESS_BARS="1", TQDM_DISABLE="1")
        subprocess.run([str(TRL_PY), __file__, "--trl-worker", str(in_path), str(out_path)],
                       check=True, env=env)
        trl = torch.load(out_path)

    print(f"TRL {trl['versions']['trl']}, transformers {trl['versions']['transformers']}, "
          f"torch {trl['versions']['torch']} (TRL side); grpo side torch {torch.__version__}")
    print(f"N={N} (2 prompts x G={G}), T={T}, float64, eps_low={EPS_LOW}, eps_high={EPS_HIGH}, "
          f"max_completion_length={MAX_COMPLETION_LENGTH}; old log-probs given "
          f"(clipped tokens: {trl['clip_fraction']:.0%}); tis cap {TIS_CAP}\n")
    print("| pair (ours / TRL) | beta | micro-batches | our loss | TRL loss | abs diff "
          "| max abs grad diff | agree? | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    failed = []
    for c, (trl_loss, trl_grad) in zip(CASES, trl["losses"]):
        name, beta, micro, expect, note = c["name"], c["beta"], c["micro"], c["expect"], c["note"]
        loss, grad = grpo_side(inputs, c)
        diff = abs(loss - trl_loss)
        gdiff = (grad - trl_grad).abs().max().item()
        agree = (diff <= RTOL * max(abs(loss), 1e-300)
                 and gdiff <= RTOL * grad.abs().max().item())
        verdict = "yes" if agree else "**no**"
        if not expect:
            verdict += " (differs by definition)" if not agree else " (expected to differ!)"
        if agree != expect:
            failed.append(name)
        print(f"| {name} | {beta:g} | {micro} | {loss:.15f} | {trl_loss:.15f} | {diff:.1e} "
              f"| {gdiff:.1e} | {verdict} | {note} |")

    print("\n| advantages: our scale / TRL scale_rewards | max abs diff, TRL as is "
          "| same, torch default dtype float64 | agree? |")
    print("|---|---|---|---|")
    rewards = inputs["rewards"]
    for scale, (as_is, fp64) in zip(REWARD_CASES, trl["advantages"]):
        ours = group_advantages(rewards, G, scale=scale)
        size = ours.abs().max().item()
        diff, diff64 = ((ours - a).abs().max().item() for a in (as_is, fp64))
        # as is, TRL's Bessel factor is rounded to float32: agreement to float32 precision
        agree = diff64 <= RTOL * size and diff <= 1e-6 * size
        if not agree:
            failed.append(f"advantages {scale}")
        print(f"| {scale} | {diff:.1e} | {diff64:.1e} | {'yes' if agree else '**no**'} |")
    print(f"\n(rewards: 5 groups of {G}, one of them all equal)")

    if failed:
        print(f"\nFAILED: {failed}")
        return 1
    print("\nall cases as expected")
    return 0


# ---------------------------------------------------------------------------------------------
# TRL side (benchmarks/.venv-trl); nothing from grpo is imported here.

# The lines of GRPOTrainer._generate_and_score_completions that turn the sampler's log-probs into
# vLLM importance-sampling ratios, checked against the source.
TRL_IS_LINES = [
    "per_token_logps_diff = (old_per_token_logps - sampling_per_token_logps) * mask",
    "per_token_logps_diff = torch.nan_to_num(per_token_logps_diff, nan=0.0)",
    "sequence_level_is = self.vllm_importance_sampling_mode in "
    '["sequence_mask", "sequence_truncate"]',
    "per_sequence_logps_diff = per_token_logps_diff.sum(dim=-1, keepdim=True)",
    "vllm_importance_sampling_ratio = torch.exp(logps_diff)",
    'if self.vllm_importance_sampling_mode in ["sequence_truncate", "token_truncate"]:',
    "min=self.vllm_importance_sampling_clip_min,",
    "invalid_mis_mask = (vllm_importance_sampling_ratio < min_val) | (",
    "vllm_importance_sampling_ratio > max_val",
    "invalid_mis_mask, value=0.0",
    'output["importance_sampling_ratio"] = vllm_importance_sampling_ratio',
]


def trl_is_ratio(old_per_token_logps, sampling_per_token_logps, mask, mode, clip_max,
                 clip_min=None):
    import math

    per_token_logps_diff = (old_per_token_logps - sampling_per_token_logps) * mask
    per_token_logps_diff = torch.nan_to_num(per_token_logps_diff, nan=0.0)
    sequence_level_is = mode in ["sequence_mask", "sequence_truncate"]
    if sequence_level_is:
        per_sequence_logps_diff = per_token_logps_diff.sum(dim=-1, keepdim=True)
        logps_diff = per_sequence_logps_diff
    else:
        logps_diff = per_token_logps_diff
    vllm_importance_sampling_ratio = torch.exp(logps_diff)
    if mode in ["sequence_truncate", "token_truncate"]:
        vllm_importance_sampling_ratio = torch.clamp(vllm_importance_sampling_ratio,
                                                     min=clip_min, max=clip_max)
    else:  # "sequence_mask", "token_mask"
        min_val = clip_min if clip_min is not None else -math.inf
        max_val = clip_max if clip_max is not None else math.inf
        invalid_mis_mask = (vllm_importance_sampling_ratio < min_val) | (
            vllm_importance_sampling_ratio > max_val)
        vllm_importance_sampling_ratio = vllm_importance_sampling_ratio.masked_fill(
            invalid_mis_mask, value=0.0)
    return vllm_importance_sampling_ratio


# The lines of GRPOTrainer._generate_and_score_completions that turn rewards into advantages
# (multi_objective_aggregation="sum_then_normalize", the default), checked against the source.
TRL_ADVANTAGE_LINES = [
    "mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)",
    "std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)",
    "std_rewards = nanstd(rewards).expand_as(rewards)",
    "advantages = rewards - mean_grouped_rewards",
    "advantages = advantages / (std_rewards + 1e-4)",
]


def trl_advantages(rewards, num_generations, scale_rewards):
    from trl.trainer.utils import nanstd

    mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    if scale_rewards in ["group", "none"]:
        std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
        std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
    else:  # "batch"
        std_rewards = nanstd(rewards).expand_as(rewards)
    advantages = rewards - mean_grouped_rewards
    if scale_rewards != "none":
        advantages = advantages / (std_rewards + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


def trl_worker(in_path: str, out_path: str) -> None:
    import inspect
    import logging

    import transformers
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    logging.disable(logging.WARNING)
    data = torch.load(in_path)
    inputs = data["inputs"]

    source = inspect.getsource(GRPOTrainer._generate_and_score_completions)
    missing = [line for line in TRL_ADVANTAGE_LINES if line not in source]
    if missing:
        raise SystemExit(f"TRL's advantage code changed; re-transcribe trl_advantages: {missing}")
    missing = [line for line in TRL_IS_LINES if line not in source]
    if missing:
        raise SystemExit(f"TRL's importance-sampling code changed; re-transcribe trl_is_ratio: "
                         f"{missing}")

    with tempfile.TemporaryDirectory() as tmp:
        # A tiny random Llama with the packaged tokenizer: only the trainer's bookkeeping needs a
        # model (the forward is replaced below); with beta != 0 TRL loads it again as reference.
        model_dir = Path(tmp) / "tiny"
        tokenizer = AutoTokenizer.from_pretrained(data["tokenizer"])
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                             pad_token_id=tokenizer.pad_token_id,
                             bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        torch.manual_seed(0)
        LlamaForCausalLM(config).save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        dataset = Dataset.from_dict({"prompt": ["a", "b"] * 4})

        losses = []
        clip_fraction = None
        for c in data["cases"]:
            micro = c["micro"]
            args = GRPOConfig(
                output_dir=str(Path(tmp) / "out"), report_to="none", use_cpu=True, bf16=False,
                loss_type=c["trl"], beta=c["beta"], epsilon=c["eps"][0],
                epsilon_high=c["eps"][1],
                num_generations=G, per_device_train_batch_size=N // micro,
                gradient_accumulation_steps=micro, max_completion_length=MAX_COMPLETION_LENGTH,
                gradient_checkpointing=False, **c["trl_args"])
            trainer = GRPOTrainer(model=str(model_dir), reward_funcs=lambda completions, **kw:
                                  [0.0] * len(completions), args=args, train_dataset=dataset)
            trainer.model.train()  # "train" mode: the accumulation-scaled branches
            trainer.current_gradient_accumulation_steps = micro  # as Trainer's loop sets it
            assert args.steps_per_generation == micro
            old = inputs["old"]
            is_ratio = None
            if c["tis"]:
                # TRL's vLLM path: old log-probs always computed (no grad; = logprobs on-policy),
                # the ratios from them and the sampler's, and _compute_loss told to apply them.
                old = inputs["logprobs"].clone() if c["on_policy"] else old
                is_ratio = trl_is_ratio(old, inputs["sampler"], inputs["mask"], c["tis"], TIS_CAP)
                if c["trl_kept_as_one"]:
                    is_ratio = (is_ratio > 0).to(is_ratio.dtype)
                trainer.use_vllm = trainer.vllm_importance_sampling_correction = True
            elif c["on_policy"]:
                old = None  # TRL's on-policy path: old = per_token_logps.detach()

            leaf = inputs["logprobs"].clone().requires_grad_(True)
            rows_now = {}

            def forward(model, input_ids, attention_mask, logits_to_keep, **kw):
                rows = rows_now["rows"]
                return leaf[rows], torch.zeros(len(rows), T, dtype=torch.float64), None

            trainer._get_per_token_logps_and_entropies = forward
            mask = inputs["mask"].clone()
            if c["empty_row"]:
                mask[3] = 0
            total = 0.0
            for rows in torch.arange(N).chunk(micro):  # TRL's split_tensor_dict, unshuffled
                rows_now["rows"] = rows
                batch = {
                    "prompt_ids": torch.ones(len(rows), 2, dtype=torch.long),
                    "prompt_mask": torch.ones(len(rows), 2, dtype=torch.long),
                    "completion_ids": torch.ones(len(rows), T, dtype=torch.long),
                    "completion_mask": mask[rows],
                    "advantages": inputs["advantages"][rows],
                    "old_per_token_logps": None if old is None else old[rows],
                    "ref_per_token_logps": inputs["ref"][rows],
                    "num_items_in_batch": mask.sum(),  # whole generation batch, one process
                }
                if is_ratio is not None:
                    batch["importance_sampling_ratio"] = is_ratio[rows]
                total = total + trainer.compute_loss(trainer.model, batch)
            total.backward()
            losses.append((total.item(), leaf.grad.clone()))
            if clip_fraction is None:
                clip_fraction = trainer._metrics["train"]["clip_ratio/region_mean"][-1]
            del trainer

        rewards = inputs["rewards"]
        advantages = []
        for scale in data["reward_cases"]:
            as_is = trl_advantages(rewards, G, scale)
            # nanstd's Bessel factor count / (count - 1) divides two integer tensors, so it comes
            # out in torch's default dtype (float32) even for float64 rewards.
            torch.set_default_dtype(torch.float64)
            try:
                fp64 = trl_advantages(rewards, G, scale)
            finally:
                torch.set_default_dtype(torch.float32)
            advantages.append((as_is, fp64))
    torch.save(dict(losses=losses, advantages=advantages, clip_fraction=clip_fraction,
                    versions=dict(trl=trl.__version__, transformers=transformers.__version__,
                                  torch=str(torch.__version__))), out_path)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--trl-worker":
        trl_worker(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main())
