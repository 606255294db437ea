"""Pieces both engines share: argument checks, the learning-rate schedule, micro-batch slicing,
a ZeRO-3-safe log-prob module, and writing a Hugging Face directory from `named_weights()`.

The schedule is a pure function of the step count (`learning_rate_at`) that the engine writes
into the optimizer before each update, instead of a stateful `LRScheduler`: the same numbers in
both engines (DeepSpeed's scheduler hooks skip on overflow, ours must not), and a checkpoint only
needs the step count to resume it exactly.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import Tensor

from grpo.logprobs import chunked_logprobs, completion_hidden
from grpo.loss import LOSS_TYPES

SCHEDULES = ("constant", "cosine")
STATE_DIR = "engine_state"  # the resume state's subfolder inside a saved directory


def check_engine_args(*, learning_rate, weight_decay, adam_betas, max_grad_norm,
                      lr_scheduler_type, warmup_steps, max_steps, micro_batch_size,
                      num_iterations, loss_type, temperature, logprob_chunk_size,
                      share_prompt_forward, tis_cap=None) -> None:
    """Every engine keyword checked before anything is loaded, each error naming its argument."""
    checks = [
        (learning_rate >= 0, "learning_rate must be >= 0", learning_rate),
        (weight_decay >= 0, "weight_decay must be >= 0", weight_decay),
        (len(adam_betas) == 2 and all(0 <= b < 1 for b in adam_betas),
         "adam_betas must be two numbers in [0, 1)", adam_betas),
        (max_grad_norm is None or max_grad_norm >= 0,
         "max_grad_norm must be >= 0 (0 or None: no clipping)", max_grad_norm),
        (lr_scheduler_type in SCHEDULES, f"lr_scheduler_type must be one of {SCHEDULES}",
         lr_scheduler_type),
        (warmup_steps >= 0, "warmup_steps must be >= 0", warmup_steps),
        (max_steps is None or max_steps >= 1, "max_steps must be >= 1 or None", max_steps),
        (lr_scheduler_type != "cosine" or max_steps is not None,
         "lr_scheduler_type='cosine' needs max_steps", max_steps),
        (micro_batch_size is None or micro_batch_size >= 1,
         "micro_batch_size must be >= 1 or None (the whole batch)", micro_batch_size),
        (num_iterations >= 1, "num_iterations must be >= 1", num_iterations),
        (loss_type in LOSS_TYPES, f"loss_type must be one of {LOSS_TYPES}", loss_type),
        (temperature > 0, "temperature must be > 0", temperature),
        (logprob_chunk_size >= 1, "logprob_chunk_size must be >= 1", logprob_chunk_size),
        (isinstance(share_prompt_forward, bool), "share_prompt_forward must be a bool",
         share_prompt_forward),
        (tis_cap is None or tis_cap >= 1, "tis_cap must be >= 1 or None (no importance weights)",
         tis_cap),
    ]
    for ok, message, got in checks:
        if not ok:
            raise ValueError(f"{message}, got {got!r}")


def learning_rate_at(step: int, base_lr: float, schedule: str = "constant",
                     warmup_steps: int = 0, max_steps: int | None = None) -> float:
    """The learning rate of update number `step` (0-based): linear warmup, then constant or a
    cosine decay that reaches 0 at `max_steps`."""
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return base_lr
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def micro_batch_slices(num_rows: int, micro_batch_size: int | None) -> list[slice]:
    """Consecutive row slices of at most `micro_batch_size` rows (the last may be shorter)."""
    size = num_rows if micro_batch_size is None else micro_batch_size
    return [slice(s, min(s + size, num_rows)) for s in range(0, num_rows, max(1, size))]


def check_batch(rollouts, advantages: Tensor) -> None:  # advantages: [N]
    if not hasattr(rollouts, "completion_mask"):
        raise TypeError(f"rollouts must be a grpo.rollouts.Rollouts, got {type(rollouts).__name__}")
    n = len(rollouts)
    if n == 0:
        raise ValueError("rollouts is empty: a step needs at least one completion")
    if not isinstance(advantages, Tensor) or advantages.shape != (n,):
        shape = tuple(advantages.shape) if isinstance(advantages, Tensor) else type(advantages)
        raise ValueError(f"advantages must be a [N] tensor with N={n}, got {shape}")
    if not torch.isfinite(advantages).all():
        raise ValueError("advantages must be finite, got NaN or inf")


class LogprobModel(torch.nn.Module):
    """A causal LM that returns the chosen tokens' log-probs (grpo.logprobs.sequence_logprobs).

    Under ZeRO-3 a weight is only materialised inside the forward of a module that owns it, so
    the output projection must run inside a module: `head` holds the output-embedding Parameter
    itself (shared, as tied weights are) and runs `chunked_logprobs` in its forward; DeepSpeed
    gathers the weight around that forward and again for its backward. Numerically it is
    `sequence_logprobs` (tests/test_engine.py checks it).
    """

    def __init__(self, lm: torch.nn.Module):
        super().__init__()
        self.lm = lm
        self.head = _ChunkedHead(lm.get_output_embeddings())

    def forward(
        self,
        input_ids: Tensor,  # [N, P + T]
        attention_mask: Tensor,  # [N, P + T]
        completion_mask: Tensor,  # [N, T]
        temperature: float = 1.0,
        chunk_size: int = 1024,
        with_entropy: bool = False,
        share_prompts: bool = True,
    ) -> tuple[Tensor, Tensor]:  # logprobs [N, T], entropy [N, T] (zeros when not asked)
        t = completion_mask.shape[1]
        hidden = completion_hidden(self.lm.base_model, input_ids, attention_mask, t,
                                   share_prompts)  # [N, T, H]
        mask = completion_mask.bool()
        logprobs, entropy = self.head(hidden[mask], input_ids[:, -t:][mask], temperature,
                                      chunk_size, with_entropy)
        out = logprobs.new_zeros(mask.shape).masked_scatter(mask, logprobs)
        ent = logprobs.new_zeros(mask.shape)
        if with_entropy:
            ent = ent.masked_scatter(mask, entropy)
        return out, ent


class _ChunkedHead(torch.nn.Module):
    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.weight = head.weight  # the same Parameter (tied to the input embedding in SmolLM2)
        self.bias = getattr(head, "bias", None)

    def forward(self, hidden, targets, temperature, chunk_size, with_entropy):
        # hidden [M, H], targets [M] -> logprobs [M], entropy [M] or None
        return chunked_logprobs(hidden, self.weight, targets, temperature, bias=self.bias,
                                chunk_size=chunk_size, with_entropy=with_entropy)


def weight_names(model: torch.nn.Module) -> list[tuple[str, Tensor]]:
    """(name, parameter or persistent buffer) for every key of `model.state_dict()`, tied
    weights under each of their names, in state-dict order."""
    out = list(model.named_parameters(remove_duplicate=False))
    for module_name, module in model.named_modules(remove_duplicate=False):
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None and name not in module._non_persistent_buffers_set:
                out.append((f"{module_name}.{name}" if module_name else name, buf))
    return out


def untied_names(model: torch.nn.Module) -> set[str]:
    """Names to write to model.safetensors: a tied weight once, under its first name (the input
    embedding), as `save_pretrained` does."""
    seen, keep = set(), set()
    for name, tensor in weight_names(model):
        if id(tensor) not in seen:
            seen.add(id(tensor))
            keep.add(name)
    return keep


def write_hf_directory(directory: str | os.PathLike, model: torch.nn.Module,
                       weights: Iterable[tuple[str, Tensor]], source: str,
                       write: bool = True) -> None:
    """config.json, generation_config.json, tokenizer files and model.safetensors, so that
    `from_pretrained(directory)` and vLLM load it as is. `weights` is consumed on every rank
    (ZeRO-3 gathers are collective); only the rank with `write` keeps and writes them."""
    from safetensors.torch import save_file

    keep = untied_names(model)
    state = {}
    for name, tensor in weights:
        if write and name in keep:
            state[name] = tensor.detach().to("cpu").contiguous()
    if not write:
        return
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(directory)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(directory)
    _copy_tokenizer(source, directory)


def _copy_tokenizer(source: str, directory: Path) -> None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:  # a model without a tokenizer still saves
        print(f"warning: no tokenizer saved from {source}: {err}")
        return
    tokenizer.save_pretrained(directory)


def named_tensors_equal(a: Iterator[tuple[str, Tensor]], b: dict[str, Tensor]) -> float:
    """Max |a - b| over names (for tests and checks); raises if the names differ."""
    worst, seen = 0.0, set()
    for name, t in a:
        if name not in b:
            raise KeyError(f"{name} not in the reference")
        seen.add(name)
        worst = max(worst, (t.float().cpu() - b[name].float().cpu()).abs().max().item())
    if seen != set(b):
        raise KeyError(f"names differ: missing {sorted(set(b) - seen)[:5]}")
    return worst
