"""TorchEngine: GRPO on one process, plain PyTorch (the baseline DeepSpeed is tested against).

AdamW with fp32 master weights; with `bf16` the forward runs under bf16 autocast on the
engine's device (CUDA normally; CPU autocast works too). The frozen reference is a second copy
of the model in eval mode with requires_grad off, and is not loaded at all when beta == 0.
With LoRA (`LoraSettings(lora_r=...)`, grpo.engine.lora) only the adapter trains and sits in
the optimizer, and the reference is the same model with the adapter off: no second copy.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from grpo.engine import lora as lora_lib
from grpo.engine.settings import LoraSettings, StepSettings
from grpo.engine.step import StepEngine
from grpo.engine.weights import (STATE_DIR, copy_tokenizer, load_causal_lm, untied_names,
                                 weight_names, write_hf_directory)
from grpo.logprobs import LogprobModel
from grpo.models import resolve_model


class TorchEngine(StepEngine):
    """One process, one device. See grpo.engine.step for what a step does.

    `TorchEngine(model, StepSettings(learning_rate=1e-6, beta=0.04))`: `model` is a local
    directory, a hub id or None (the packaged SmolLM2-135M-Instruct); `device` defaults to CUDA
    when available; `lora` trains a LoRA adapter instead of every weight (`self.model` is then
    the peft model)."""

    def __init__(self, model: str | None = None, settings: StepSettings = StepSettings(), *,
                 device: str | torch.device | None = None, lora: LoraSettings = LoraSettings()):
        super().__init__(settings)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.source = resolve_model(model)
        self.lora = lora
        lm = load_causal_lm(self.source, self.device, trainable=True)
        if settings.gradient_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if lora.enabled:  # frozen embeddings: checkpointed blocks need an input with grad
                lm.enable_input_require_grads()
        self.model = lora_lib.add_adapter(lm, lora) if lora.enabled else lm
        self.policy = LogprobModel(lm)
        # No reference model at all when beta == 0: the loss never needs it.
        if settings.beta == 0:
            self.reference = None
        elif lora.enabled:
            self.reference = lora_lib.AdapterDisabled(self.policy, self.model)
        else:
            self.reference = LogprobModel(load_causal_lm(self.source, self.device, trainable=False))
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=settings.learning_rate,
            betas=settings.adam_betas, weight_decay=settings.weight_decay,
            fused=self.device.type == "cuda" or None)

    # ---- the step's pieces ---------------------------------------------------------------
    def _autocast(self):
        if not self.settings.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _backward(self, loss: Tensor, last: bool) -> None:
        loss.backward()

    def _optimizer_step(self, skip: bool) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.settings.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.settings.max_grad_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        norm = float(norm)
        if not skip and math.isfinite(norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    # ---- weights and checkpoints ---------------------------------------------------------
    def named_weights(self) -> Iterator[tuple[str, Tensor]]:
        """Every state-dict entry (tied weights under each name), as detached views: no copy.
        With LoRA: the base model's names, each adapted weight merged (a new tensor)."""
        if self.lora.enabled:
            yield from lora_lib.merged_weights(self.model)
            return
        for name, tensor in weight_names(self.model):
            yield name, tensor.detach()

    def adapter_weights(self) -> dict[str, Tensor]:
        """The LoRA adapter (CPU copies, PEFT's file names); for sampler.load_adapter."""
        return lora_lib.adapter_state(self.model)

    def adapter_config(self) -> dict:
        """adapter_config.json's content, base model = this engine's source."""
        return lora_lib.adapter_config(self.model, self.source)

    def save(self, directory: str | os.PathLike) -> None:
        """A Hugging Face directory (with LoRA: the adapter in PEFT's format, plus the
        tokenizer) and `engine_state/` (optimizer, step) to resume from."""
        if self.lora.enabled:
            lora_lib.write_adapter(directory, self.adapter_weights(), self.adapter_config())
            copy_tokenizer(self.source, Path(directory))
        else:
            write_hf_directory(directory, self.model, self.named_weights(), self.source)
        state = Path(directory) / STATE_DIR
        state.mkdir(parents=True, exist_ok=True)
        torch.save({"optimizer": self.optimizer.state_dict(), "step": self.step},
                   state / "torch_engine.pt")

    def load(self, directory: str | os.PathLike) -> None:
        """Weights, optimizer state and step count from `save`; the next step is bit-identical
        to the one the saved engine would have taken."""
        if self.lora.enabled:
            self._load_adapter(directory)
        else:
            self._load_weights(directory)
        state = torch.load(Path(directory) / STATE_DIR / "torch_engine.pt",
                           map_location=self.device, weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])

    def _load_weights(self, directory) -> None:
        from safetensors.torch import load_file

        weights = load_file(str(Path(directory) / "model.safetensors"))
        missing = untied_names(self.model) - set(weights)
        if missing:
            raise ValueError(f"{directory}/model.safetensors lacks {sorted(missing)[:5]}")
        with torch.no_grad():
            for name, tensor in weight_names(self.model):
                if name in weights:
                    tensor.copy_(weights[name])

    def _load_adapter(self, directory) -> None:
        state = lora_lib.read_adapter(directory, self.model)
        with torch.no_grad():
            for name, param in lora_lib.adapter_parameters(self.model).items():
                param.copy_(state[name])
