"""LoRA through peft, for both engines: the adapter on the engine's model, the reference as the
same model with the adapter switched off, and the adapter's weights in and out.

* Only the adapter trains: peft freezes every base weight, and the engines give the optimizer
  the adapter's parameters alone (AdamW state: 2 x the adapter, not 2 x the model).
* The reference is `AdapterDisabled(policy)`: the policy's own forward inside peft's
  `disable_adapter()`, which runs each adapted layer's base layer alone. LoRA never changes the
  base weights, so that is exactly the base model, and beta > 0 costs no second copy.
* Files are PEFT's: `adapter_config.json` and `adapter_model.safetensors` with the names
  `PeftModel.save_pretrained` writes (peft's own `get_peft_model_state_dict` maps them), so a
  checkpoint loads with `PeftModel.from_pretrained` and as a vLLM LoRA adapter.
* `merged_weights` yields the whole model with each adapted weight replaced by W + B @ A * scale,
  under the base model's names: what a sampler without LoRA support takes (`load_weights`).

The ZeRO-3 partitioned parameters are read inside `gathered(params)`, a context manager the
engine supplies (DeepSpeed's `GatheredParameters`; nothing in one process).
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import torch
from torch import Tensor

from grpo.engine.settings import LoraSettings
from grpo.engine.weights import weight_names

ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
Gather = Callable[[list], ContextManager]


def no_gather(params: list) -> ContextManager:
    return contextlib.nullcontext()


def add_adapter(lm: torch.nn.Module, lora: LoraSettings):
    """`lm` with a fresh LoRA adapter (peft's `get_peft_model`: layers wrapped in place, base
    weights frozen). A is drawn from `lora.seed` alone, so every rank and engine starts equal."""
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(lora.seed)
        return get_peft_model(lm, lora.peft_config())


class AdapterDisabled:
    """The frozen reference: `policy` (the engine's log-prob module over the adapted model) run
    with the adapter off, i.e. the base model, from the same weights."""

    def __init__(self, policy, peft_model):
        self.policy, self.peft_model = policy, peft_model

    def __call__(self, *args, **kwargs):
        with self.peft_model.disable_adapter():
            return self.policy(*args, **kwargs)


def adapter_parameters(peft_model) -> dict[str, torch.nn.Parameter]:
    """The adapter's live parameters under the names PEFT's adapter file uses (peft's own
    mapping, `get_peft_model_state_dict`, applied to the parameters rather than a copy)."""
    from peft import get_peft_model_state_dict

    params = dict(peft_model.named_parameters())
    return get_peft_model_state_dict(peft_model, state_dict=params, save_embedding_layers=False)


def adapter_state(peft_model, gathered: Gather = no_gather) -> dict[str, Tensor]:
    """A CPU copy of the adapter, PEFT's names (gathered together: the adapter is small)."""
    params = adapter_parameters(peft_model)
    with gathered(list(params.values())):
        return {name: p.detach().to("cpu", copy=True).contiguous() for name, p in params.items()}


def adapter_config(peft_model, source: str) -> dict:
    """The adapter_config.json content (for inference: `inference_mode` true, base = source)."""
    config = copy.deepcopy(peft_model.peft_config[peft_model.active_adapter])
    config.inference_mode = True
    config.base_model_name_or_path = source
    return config.to_dict()


def write_adapter(directory: str | os.PathLike, state: dict[str, Tensor], config: dict) -> None:
    """`adapter_config.json` + `adapter_model.safetensors`, as `save_pretrained` writes them."""
    import json

    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, str(directory / ADAPTER_FILE), metadata={"format": "pt"})
    serialisable = {k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}
    (directory / ADAPTER_CONFIG).write_text(json.dumps(serialisable, indent=2, sort_keys=True))


def read_adapter(directory: str | os.PathLike, peft_model) -> dict[str, Tensor]:
    """The adapter file of `directory`, checked to hold exactly this model's adapter tensors."""
    from safetensors.torch import load_file

    path = Path(directory) / ADAPTER_FILE
    if not path.exists():
        raise FileNotFoundError(f"{directory} holds no LoRA adapter ({ADAPTER_FILE})")
    state = load_file(str(path))
    want = adapter_parameters(peft_model)
    if set(state) != set(want):
        diff = sorted(set(state) ^ set(want))
        raise ValueError(f"{path} does not match this engine's adapter (lora_r, "
                         f"lora_target_modules?): {len(diff)} names differ, e.g. {diff[:3]}")
    for name, tensor in state.items():
        shape = getattr(want[name], "ds_shape", want[name].shape)
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(f"{path}: {name} has shape {tuple(tensor.shape)}, this engine's "
                             f"adapter {tuple(shape)} (another lora_r?)")
    return state


def merged_weights(peft_model, gathered: Gather = no_gather,
                   copy_all: bool = False) -> Iterator[tuple[str, Tensor]]:
    """Every state-dict entry of the base model, names as in its checkpoint, with each adapted
    weight merged (W + peft's `get_delta_weight`). Unadapted tensors are detached views unless
    `copy_all` (needed when they are only whole inside `gathered`)."""
    from peft.tuners.lora import LoraLayer

    lm = peft_model.get_base_model()
    adapter = peft_model.active_adapter
    layers = {name: m for name, m in lm.named_modules() if isinstance(m, LoraLayer)}
    for name, tensor in weight_names(lm):
        if ".lora_" in name:
            continue
        module, _, leaf = name.rpartition(".base_layer.")
        layer = layers.get(module) if leaf else None
        if layer is not None and leaf == "weight" and adapter in layer.lora_A:
            params = [tensor, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight]
            with gathered(params), torch.no_grad():
                yield f"{module}.weight", tensor.detach() + layer.get_delta_weight(adapter)
        else:
            with gathered([tensor]):
                out = tensor.detach()
                yield name.replace(".base_layer.", "."), out.clone() if copy_all else out
