"""DeepSpeedEngine: GRPO with DeepSpeed ZeRO-2/3, optimizer and parameter offload (cpu, nvme).

One process per device (torchrun, or DeepSpeed's launcher with OMP_NUM_THREADS=1 set on CPUs; a
plain `python` process is a world of one); NCCL on GPUs, gloo on CPUs. Each rank trains on its
own rollouts (its share of the prompts) and feeds its own local sampler.

How it differs from a stock DeepSpeed loop, and why:
* The model is built under `zero.Init` for ZeRO-3 (via transformers' HfDeepSpeedConfig, kept
  alive only while loading), so no rank ever holds the full fp32 model, and parameters offloaded
  to nvme keep their dtype (DeepSpeed 0.19.8 stores fp32 parameters as bf16 otherwise: an
  operator-precedence slip in `_set_dtype`; the engine also checks the dtype after init).
* The frozen reference is a second ZeRO-3 engine without optimizer (sharded, inference only);
  under ZeRO-2 it is a plain replicated copy. None at all when beta == 0.
* ZeRO's bucket sizes that the user's deepspeed_config leaves out are sized from the model's
  hidden size (Hugging Face's "auto" rule, `ds_config.size_buckets`).
* With LoRA (grpo.engine.lora) the adapter is added after loading (ZeRO-3: DeepSpeed
  partitions its new parameters at initialize), only the adapter is in the optimizer, and the
  reference is the policy engine itself with the adapter off: no second engine.
* offload_optimizer="nvme" with more than one rank is refused: in DeepSpeed 0.19.8 it gives
  wrong gradients for some MLP weights (step-1 loss 0.5868 instead of 0.4929 here; exact with
  one rank; cf. deepspeedai/DeepSpeed#2272). Use cpu, or one rank.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from grpo import distributed
from grpo.engine.ds_config import build_ds_config, reference_config, size_buckets
from grpo.engine import lora as lora_lib
from grpo.engine.settings import LoraSettings, StepSettings, ZeroSettings
from grpo.engine.step import StepEngine
from grpo.engine.weights import (STATE_DIR, copy_tokenizer, load_causal_lm, weight_names,
                                 write_hf_directory)
from grpo.logprobs import LogprobModel
from grpo.models import resolve_model


class DeepSpeedEngine(StepEngine):
    """The GRPO step under DeepSpeed ZeRO; see the module docstring.

    `DeepSpeedEngine(model, StepSettings(...), ZeroSettings(zero_stage=3, offload_optimizer=
    "cpu"))`, in every process of a launched job (or a plain process: a world of one)."""

    def __init__(self, model: str | None = None, settings: StepSettings = StepSettings(),
                 zero: ZeroSettings = ZeroSettings(), *, lora: LoraSettings = LoraSettings()):
        if zero.offload_param == "nvme":
            # The shared-prompt forward runs every layer twice in one forward (prompts, then
            # completions); DeepSpeed 0.19.8's nvme parameter swapper then runs out of swap
            # buffers ("Not enough buffers 0 for swapping 1"), so this offload keeps one pass.
            settings = replace(settings, share_prompt_forward=False)
        super().__init__(settings)
        self.zero, self.lora = zero, lora
        self.rank, self.world_size, self.device = distributed.init_distributed(require_group=True)
        if zero.offload_optimizer == "nvme" and self.world_size > 1:
            raise ValueError(
                f"offload_optimizer='nvme' with {self.world_size} ranks: DeepSpeed 0.19.8 gives "
                "wrong gradients there (exact with one rank; see grpo/engine/deepspeed_engine.py)"
                "; use offload_optimizer='cpu' or a single rank")
        self.config = build_ds_config(zero, settings, world_size=self.world_size,
                                      pin_memory=self.device.type == "cuda")
        if zero.uses_nvme:
            _check_async_io()
        self.source = resolve_model(model)
        size_buckets(self.config, _hidden_size(self.source))
        self._build()

    def _build(self) -> None:
        import deepspeed

        s = self.settings
        deepspeed.init_distributed(dist_backend="nccl" if self.device.type == "cuda" else "gloo")
        # DeepSpeed 0.19's ZeRO calls torch.distributed's all_gather_into_tensor and
        # reduce_scatter_tensor, which torch deprecates: a FutureWarning a user cannot act on,
        # printed again at nearly every collective (about 600 lines a rank per ZeRO-3 step of
        # SmolLM2), because something between collectives resets Python's warning registry.
        warnings.filterwarnings("ignore", category=FutureWarning, message=(
            r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated"))
        lm, ref = self._load_models()
        if s.gradient_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if self.lora.enabled:  # frozen embeddings: checkpointed blocks need an input with grad
                lm.enable_input_require_grads()
        self.model = lora_lib.add_adapter(lm, self.lora) if self.lora.enabled else lm
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        adamw = dict(lr=s.learning_rate, betas=s.adam_betas, weight_decay=s.weight_decay)
        if self.zero.offload_optimizer != "none":  # offloaded states need DeepSpeed's CPU Adam
            from deepspeed.ops.adam import DeepSpeedCPUAdam
            optimizer = DeepSpeedCPUAdam(trainable, adamw_mode=True, **adamw)
        else:
            optimizer = torch.optim.AdamW(trainable, **adamw)
        self.ds, self.optimizer, _, _ = deepspeed.initialize(
            model=LogprobModel(lm), optimizer=optimizer, config=self.config)
        self.policy, self.reference = self.ds, None
        if self.lora.enabled and s.beta != 0:
            self.reference = lora_lib.AdapterDisabled(self.ds, self.model)
        elif ref is not None and self.zero.zero_stage == 3:
            self.reference = deepspeed.initialize(model=LogprobModel(ref),
                                                  config=reference_config(self.config))[0]
            self.reference.eval()
        elif ref is not None:
            ref = ref.to(torch.bfloat16) if s.bf16 else ref
            self.reference = LogprobModel(ref).to(self.device)
        self._check_partition_dtype()

    def _load_models(self):
        """(policy, reference or None); under zero.Init for ZeRO-3."""
        from transformers.integrations import HfDeepSpeedConfig
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        keep_alive = HfDeepSpeedConfig(self.config) if self.zero.zero_stage == 3 else None
        try:
            lm = load_causal_lm(self.source, "cpu" if keep_alive else self.device, True)
            ref = None
            if self.settings.beta != 0 and not self.lora.enabled:  # LoRA: the adapter off
                if keep_alive is not None:  # sharded as well, with its own inference config
                    keep_alive = HfDeepSpeedConfig(reference_config(self.config))
                ref = load_causal_lm(self.source, "cpu" if keep_alive else self.device, False)
        finally:
            unset_hf_deepspeed_config()  # later from_pretrained calls in this process: plain
        return lm, ref

    def _check_partition_dtype(self) -> None:
        want = torch.bfloat16 if self.settings.bf16 else torch.float32
        for name, p in self.model.named_parameters():
            stored = getattr(p, "ds_tensor", p)
            if stored.dtype != want:
                raise RuntimeError(f"DeepSpeed stores {name} as {stored.dtype}, not {want}: the "
                                   "nvme parameter offload dtype bug (see the module docstring)")

    # ---- the step's pieces ---------------------------------------------------------------
    def _check_ranks(self, num_rows: int) -> None:
        rows = distributed.all_gather_ints(num_rows, self.device)
        if len(set(rows)) > 1:
            raise ValueError(f"rollouts: every rank must get the same number of rows (the batch "
                             f"must divide evenly among the {self.world_size} ranks), got {rows}")

    def _backward(self, loss: Tensor, last: bool) -> None:
        # The boundary is the last backward of an update; DeepSpeed must not divide by its own
        # accumulation count (each micro-batch loss already carries the step's normaliser).
        self.ds.set_gradient_accumulation_boundary(last)
        self.ds.backward(loss, scale_wrt_gas=False)

    def _optimizer_step(self, skip: bool) -> float:
        if skip:  # a non-finite loss somewhere: drop the gradients on every rank, no update
            self.ds.optimizer.zero_grad(set_to_none=True)
            return float("nan")
        self.ds.set_gradient_accumulation_boundary(True)
        self.ds.step()  # clips; skips the update itself when the grad norm is not finite
        norm = self.ds.get_global_grad_norm()
        norm = float("nan") if norm is None else float(norm)
        if not self.ds.was_step_applied():
            norm = float("nan") if norm == norm and abs(norm) != float("inf") else norm
        return norm

    # ---- weights and checkpoints ---------------------------------------------------------
    def named_weights(self) -> Iterator[tuple[str, Tensor]]:
        """Full tensors with Hugging Face names, gathered one parameter at a time on every rank
        (a collective: every rank must exhaust the iterator, in the same order). Each is a copy
        on this rank's device, so peak extra memory is one parameter."""
        if self.lora.enabled:  # the base model's names, adapted weights merged
            yield from lora_lib.merged_weights(self.model, _gathered, copy_all=True)
            return
        for name, p in weight_names(self.model):
            with _gathered([p]):
                full = p.detach().clone()
            yield name, full

    def adapter_weights(self) -> dict[str, Tensor]:
        """The LoRA adapter gathered (CPU copies, PEFT's names), on every rank. Collective."""
        return lora_lib.adapter_state(self.model, _gathered)

    def adapter_config(self) -> dict:
        return lora_lib.adapter_config(self.model, self.source)

    def save(self, directory: str | os.PathLike) -> None:
        """A Hugging Face directory (with LoRA: the adapter in PEFT's format and the tokenizer)
        written by rank 0, plus DeepSpeed's sharded optimizer state and the step count in
        `engine_state/` (every rank writes its shard). Collective."""
        if self.lora.enabled:
            state = self.adapter_weights()
            if self.rank == 0:
                lora_lib.write_adapter(directory, state, self.adapter_config())
                copy_tokenizer(self.source, Path(directory))
        else:
            write_hf_directory(directory, self.model, self.named_weights(), self.source,
                               write=self.rank == 0)
        distributed.barrier()
        self.ds.save_checkpoint(str(Path(directory) / STATE_DIR), tag="state",
                                client_state={"grpo_step": self.step})
        distributed.barrier()

    def load(self, directory: str | os.PathLike) -> None:
        """Weights, optimizer state and step from `save` (same world size and ZeRO stage)."""
        path, client = self.ds.load_checkpoint(str(Path(directory) / STATE_DIR), tag="state",
                                               load_optimizer_states=True,
                                               load_lr_scheduler_states=False)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed state under {directory}/{STATE_DIR}")
        self.step = int(client["grpo_step"])


def _gathered(params: list) -> contextlib.AbstractContextManager:
    """ZeRO-3 partitioned parameters whole on every rank inside the block (a collective)."""
    import deepspeed

    partitioned = [p for p in params if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)


def _check_async_io() -> None:
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder("AsyncIOBuilder")
    if builder is None or not builder.is_compatible(verbose=False):
        raise RuntimeError("nvme offload needs DeepSpeed's async_io op, which needs libaio "
                           "(apt-get install -y libaio-dev; scripts/setup.sh does it)")


def _hidden_size(path: str) -> int | None:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    config = getattr(config, "text_config", config)  # multimodal configs nest the LM's
    return getattr(config, "hidden_size", None)
