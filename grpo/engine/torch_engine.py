"""TorchEngine: GRPO on one process, plain PyTorch (the baseline DeepSpeed is tested against).

AdamW with fp32 master weights; with bf16=True the forward runs under bf16 autocast on the
engine's device (CUDA normally; CPU autocast works too). The frozen reference is a second copy
of the model in eval mode with requires_grad off, and is not loaded at all when beta == 0.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from grpo.engine.base import StepEngine
from grpo.engine.common import (STATE_DIR, check_engine_args, untied_names, weight_names,
                                write_hf_directory)
from grpo.logprobs import sequence_logprobs
from grpo.models import resolve_model
from grpo.rollouts import Rollouts


def load_causal_lm(path: str, device: torch.device | str, trainable: bool) -> torch.nn.Module:
    """An fp32 transformers causal LM on `device`; frozen (eval, no grad) unless `trainable`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    model.config.use_cache = False
    if trainable:
        return model.train()
    return model.eval().requires_grad_(False)


class TorchEngine(StepEngine):
    """One process, one device. See grpo.engine.base for what a step does."""

    def __init__(self, model: str | None = None, *, learning_rate: float = 1e-6,
                 weight_decay: float = 0.0, adam_betas: tuple[float, float] = (0.9, 0.99),
                 max_grad_norm: float = 1.0, lr_scheduler_type: str = "constant",
                 warmup_steps: int = 0, max_steps: int | None = None,
                 micro_batch_size: int | None = None, num_iterations: int = 1,
                 eps_low: float = 0.2, eps_high: float | None = None, beta: float = 0.04,
                 loss_type: str = "grpo", max_completion_length: int | None = None,
                 temperature: float = 1.0, gradient_checkpointing: bool = False,
                 bf16: bool = False, device: str | None = None,
                 logprob_chunk_size: int = 1024, share_prompt_forward: bool = True,
                 tis_cap: float | None = None):
        check_engine_args(learning_rate=learning_rate, weight_decay=weight_decay,
                          adam_betas=adam_betas, max_grad_norm=max_grad_norm,
                          lr_scheduler_type=lr_scheduler_type, warmup_steps=warmup_steps,
                          max_steps=max_steps, micro_batch_size=micro_batch_size,
                          num_iterations=num_iterations, loss_type=loss_type,
                          temperature=temperature, logprob_chunk_size=logprob_chunk_size,
                          share_prompt_forward=share_prompt_forward, tis_cap=tis_cap)
        self._init_hparams(learning_rate=learning_rate, lr_scheduler_type=lr_scheduler_type,
                           warmup_steps=warmup_steps, max_steps=max_steps,
                           micro_batch_size=micro_batch_size, num_iterations=num_iterations,
                           eps_low=eps_low, eps_high=eps_high, beta=beta, loss_type=loss_type,
                           max_completion_length=max_completion_length,
                           temperature=temperature, max_grad_norm=max_grad_norm,
                           logprob_chunk_size=logprob_chunk_size,
                           share_prompt_forward=share_prompt_forward, tis_cap=tis_cap)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.rank, self.world_size, self.bf16 = 0, 1, bf16
        self.source = resolve_model(model)
        self.model = load_causal_lm(self.source, self.device, trainable=True)
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        # No reference model at all when beta == 0: the loss never needs it.
        self.ref_model = (load_causal_lm(self.source, self.device, trainable=False)
                          if beta != 0 else None)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=learning_rate, betas=tuple(adam_betas),
            weight_decay=weight_decay, fused=self.device.type == "cuda" or None)

    # ---- the step's pieces ---------------------------------------------------------------
    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _logprobs(self, model, batch: Rollouts, with_entropy: bool):
        with self._autocast():
            logprobs, entropy = sequence_logprobs(
                model, batch.input_ids, batch.attention_mask, batch.completion_mask,
                temperature=self.temperature, chunk_size=self.logprob_chunk_size,
                with_entropy=with_entropy, share_prompts=self.share_prompt_forward)
        return logprobs.float(), entropy

    def _policy_logprobs(self, batch, with_entropy):
        return self._logprobs(self.model, batch, with_entropy)

    def _ref_logprobs(self, batch):
        return self._logprobs(self.ref_model, batch, False)[0]

    def _backward(self, loss: Tensor, last: bool) -> None:
        loss.backward()

    def _optimizer_step(self, skip: bool) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        norm = float(norm)
        if not skip and norm == norm and abs(norm) != float("inf"):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _full_grads(self) -> Iterator[tuple[str, Tensor]]:
        for name, p in self.model.named_parameters():
            yield name, p.grad

    def _drop_grads(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    # ---- weights and checkpoints ---------------------------------------------------------
    def named_weights(self) -> Iterator[tuple[str, Tensor]]:
        """Every state-dict entry (tied weights under each name), as detached views: no copy."""
        for name, tensor in weight_names(self.model):
            yield name, tensor.detach()

    def save(self, directory: str | os.PathLike) -> None:
        """A Hugging Face directory plus `engine_state/` (optimizer, step) to resume from."""
        write_hf_directory(directory, self.model, self.named_weights(), self.source)
        state = Path(directory) / STATE_DIR
        state.mkdir(parents=True, exist_ok=True)
        torch.save({"optimizer": self.optimizer.state_dict(), "step": self.step},
                   state / "torch_engine.pt")

    def load(self, directory: str | os.PathLike) -> None:
        """Weights, optimizer state and step count from `save`; the next step is bit-identical
        to the one the saved engine would have taken."""
        from safetensors.torch import load_file

        weights = load_file(str(Path(directory) / "model.safetensors"))
        missing = untied_names(self.model) - set(weights)
        if missing:
            raise ValueError(f"{directory}/model.safetensors lacks {sorted(missing)[:5]}")
        with torch.no_grad():
            for name, tensor in weight_names(self.model):
                if name in weights:
                    tensor.copy_(weights[name])
        state = torch.load(Path(directory) / STATE_DIR / "torch_engine.pt",
                           map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
