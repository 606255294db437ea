"""Two-process DeepSpeed checks, launched by tests/test_engine_deepspeed.py with torchrun:

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 tests/engine_worker.py --out r.json \
        --checks weights,grads,step --zero-stage 3

Every rank builds a DeepSpeedEngine and trains on its share of the fixed batch
(tests/engine_batch.py); rank 0 also builds a single-process TorchEngine on the *whole* batch as
the reference and writes the measured differences to --out as JSON. The pytest side asserts on
them, so every tolerance lives (and is justified) in the test file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from engine_batch import gradients, make_batch, rank_rows  # noqa: E402

from grpo import distributed  # noqa: E402
from grpo.engine import (DeepSpeedEngine, LoraSettings, StepSettings, TorchEngine,  # noqa: E402
                         ZeroSettings)

LR = 1e-5
LORA_LR = 1e-3  # LoRA's usual scale: one step moves the policy clearly off the reference
# Each loss type against the one-process full-batch gradient, with a micro-batch size that also
# differs from it (4 rows per rank: 1 = four micro-batches, 3 = an uneven 3 + 1 split).
GRAD_MICRO = {"grpo": 1, "token_mean": 3, "dr_grpo": 3}


def main() -> None:
    import faulthandler
    import signal
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1 <pid>: where it hangs
    args = _parse()
    torch.manual_seed(0)
    rank, world, _ = distributed.init_distributed(require_group=True)
    rollouts, advantages = make_batch()
    rows = rank_rows(len(rollouts), rank, world)
    local, local_adv = rollouts.select(rows), advantages[rows]
    lr = LORA_LR if args.lora_r else LR
    settings = StepSettings(learning_rate=lr, beta=args.beta, max_completion_length=16)
    t0 = time.time()
    zero = ZeroSettings(zero_stage=args.zero_stage, offload_optimizer=args.offload_optimizer,
                        offload_param=args.offload_param, nvme_path=args.nvme_path)
    lora = LoraSettings(lora_r=args.lora_r)
    ds = DeepSpeedEngine(None, replace(settings, micro_batch_size=2), zero, lora=lora)
    ref = TorchEngine(None, settings, device="cpu", lora=lora) if rank == 0 else None
    _log(rank, f"engines built in {time.time() - t0:.1f}s")
    out = {"world_size": world, "init_s": time.time() - t0, "ds_has_reference": ds.reference is not None}
    checks = args.checks.split(",")
    if "uneven" in checks:
        out["uneven"] = _uneven(ds, rollouts, advantages)
        _log(rank, "done: uneven")
    if "weights" in checks:
        out["weights"] = _compare_weights(ds, ref)
        _log(rank, "done: weights")
    if "grads" in checks:
        out["grads"] = {lt: _compare_grads(ds, ref, lt, (local, local_adv), (rollouts, advantages))
                        for lt in GRAD_MICRO}
        _log(rank, "done: grads")
    if "nonfinite" in checks:  # before "step", while both engines still hold the same weights
        out["nonfinite"] = _nonfinite_step(ds, ref, local, local_adv)
        _log(rank, "done: nonfinite")
    if "step" in checks:
        out["step"] = _compare_step(ds, ref, (local, local_adv), (rollouts, advantages))
        _log(rank, "done: step")
    if "resume" in checks:
        out["resume"] = _resume(ds, local, local_adv)
        _log(rank, "done: resume")
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    distributed.barrier()


def _log(rank, text) -> None:
    print(f"[rank {rank} {time.strftime('%H:%M:%S')}] {text}", flush=True)


def _max_diff(ds_weights, reference: dict | None) -> dict:
    """Consumes ds_weights on every rank (collective); rank 0 measures against reference:
    the max absolute difference, and the relative L2 error of the whole set and of the worst
    tensor (||got - want|| / ||want||)."""
    worst, scale, names, err2, ref2, worst_rel = 0.0, 0.0, [], 0.0, 0.0, 0.0
    for name, tensor in ds_weights:
        names.append(name)
        if reference is not None:
            want = reference[name].float()
            diff = tensor.float() - want
            worst = max(worst, diff.abs().max().item())
            scale = max(scale, want.abs().max().item())
            err2 += diff.pow(2).sum().item()
            ref2 += want.pow(2).sum().item()
            worst_rel = max(worst_rel, diff.norm().item() / max(want.norm().item(), 1e-30))
    return {"max_abs_diff": worst, "max_abs_ref": scale, "names": names,
            "rel_l2": (err2 / ref2) ** 0.5 if ref2 else 0.0, "worst_tensor_rel_l2": worst_rel}


def _compare_weights(ds, ref) -> dict:
    """Before any step: gathered weights vs the plain model (should be bit-equal)."""
    reference = None if ref is None else dict(ref.named_weights())
    result = _max_diff(ds.named_weights(), reference)
    if reference is not None:
        result["state_dict_names"] = list(reference)
    return result


def _compare_grads(ds, ref, loss_type, local, full) -> dict:
    ds_settings = ds.settings
    ds.settings = replace(ds_settings, loss_type=loss_type, micro_batch_size=GRAD_MICRO[loss_type])
    reference = None
    if ref is not None:
        ref_settings = ref.settings
        ref.settings = replace(ref_settings, loss_type=loss_type, micro_batch_size=None)
        reference = gradients(ref, *full)
        ref.settings = ref_settings
    result = _max_diff(gradients(ds, *local).items(), reference)
    ds.settings = ds_settings
    result.pop("names")
    return result


def _uneven(ds, rollouts, advantages) -> str:
    """Rank 0 gets 4 rows, the others 2: every rank must refuse before any forward pass."""
    rows = list(range(4 if ds.rank == 0 else 2))
    try:
        ds.train_step(rollouts.select(rows), advantages[rows])
    except ValueError as err:
        return str(err)
    return "no error"


def _compare_step(ds, ref, local, full) -> dict:
    lr = ds.settings.learning_rate
    metrics = ds.train_step(*local)
    ref_metrics = ref.train_step(*full) if ref is not None else None
    reference = None if ref is None else dict(ref.named_weights())
    moved = {"count": 0, "total": 0}
    worst = 0.0
    for name, tensor in ds.named_weights():
        if reference is not None:
            diff = (tensor - reference[name]).abs()
            worst = max(worst, diff.max().item())
            moved["count"] += int((diff > lr / 10).sum())
            moved["total"] += diff.numel()
    result = {"max_abs_diff": worst, "entries_off_by_lr_over_10": moved, "lr": lr,
              "metrics": metrics, "ref_metrics": ref_metrics}
    if ds.lora.enabled:  # the trained tensors themselves (merged, B A moves them by << lr)
        adapter = ds.adapter_weights()
        want = None if ref is None else ref.adapter_weights()
        moved = {"count": 0, "total": 0}
        for name, tensor in adapter.items():
            if want is not None:
                diff = (tensor - want[name]).abs()
                moved["count"] += int((diff > lr / 10).sum())
                moved["total"] += diff.numel()
        result["adapter"] = {**_max_diff(adapter.items(), want), "entries_off_by_lr_over_10": moved,
                             "moved_from_start": max(t.abs().max().item() for n, t in
                                                     adapter.items() if "lora_B" in n)}
        result["reference"] = _lora_reference(ds, ref, local[0])
    return result


def _lora_reference(ds, ref, rows) -> dict:
    """After a step: DeepSpeed's reference (the adapter off) against TorchEngine's (which
    tests/test_lora.py holds to the base model exactly) on this rank's rows, and how far the
    policy (the adapter on) now is from it."""
    mask = rows.completion_mask.bool()
    got, policy = ds.ref_logprobs(rows), ds.policy_logprobs(rows)
    out = {"policy_vs_reference": (policy - got)[mask].abs().max().item()}
    if ref is not None:
        out["vs_torch"] = (got - ref.ref_logprobs(rows))[mask].abs().max().item()
    return out


def _nonfinite_step(ds, ref, local, local_adv) -> dict:
    """Rank 1's forward turns NaN; both ranks must skip the update, weights untouched."""
    hook = None
    if ds.rank == ds.world_size - 1:
        hook = ds.model.model.norm.register_forward_hook(lambda m, i, o: o * float("nan"))
    step_before = ds.step
    metrics = ds.train_step(local, local_adv)
    if hook is not None:
        hook.remove()
    reference = None if ref is None else ref.model.state_dict()
    result = _max_diff(ds.named_weights(), reference)
    result.pop("names")
    return {"metrics": metrics, "weights_vs_unstepped": result, "step_advanced": ds.step - step_before}


def _resume(ds, local, local_adv) -> dict:
    """save -> step -> load -> the same step again: bit-identical weights."""
    folder = tempfile.mkdtemp(prefix="grpo-resume-") if ds.rank == 0 else None
    holder = [folder]
    if distributed.is_distributed():
        torch.distributed.broadcast_object_list(holder, src=0)
    folder = holder[0]
    ds.save(folder)
    first = ds.train_step(local, local_adv)
    after = {n: t for n, t in ds.named_weights()} if ds.rank == 0 else None
    if ds.rank != 0:
        for _ in ds.named_weights():
            pass
    ds.load(folder)
    step_loaded = ds.step
    second = ds.train_step(local, local_adv)
    diff = _max_diff(ds.named_weights(), after)
    result = {"max_abs_diff": diff["max_abs_diff"], "first": first, "second": second,
              "step_loaded": step_loaded, "folder": folder}
    if ds.rank == 0:  # the saved directory loads in transformers as is
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(folder)
        result["hf_loaded_params"] = sum(p.numel() for p in model.parameters())
    return result


def _parse():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--checks", default="weights,grads,step")
    p.add_argument("--zero-stage", type=int, default=3)
    p.add_argument("--offload-optimizer", default="none")
    p.add_argument("--offload-param", default="none")
    p.add_argument("--nvme-path", default=None)
    p.add_argument("--beta", type=float, default=0.04)
    p.add_argument("--lora-r", type=int, default=0)
    return p.parse_args()


if __name__ == "__main__":
    main()
