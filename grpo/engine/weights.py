"""Weights in and out of an engine: loading the causal LM, the state-dict names both engines
yield from `named_weights()`, and writing a Hugging Face directory from them (what `save` does,
so a checkpoint loads in transformers and vLLM as it is)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor

STATE_DIR = "engine_state"  # the resume state's subfolder inside a saved directory


def load_causal_lm(path: str, device: torch.device | str, trainable: bool) -> torch.nn.Module:
    """An fp32 transformers causal LM on `device`; frozen (eval, no grad) unless `trainable`."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    model.config.use_cache = False
    if trainable:
        return model.train()
    return model.eval().requires_grad_(False)


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
    copy_tokenizer(source, directory)


def copy_tokenizer(source: str, directory: Path) -> None:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:  # a model without a tokenizer still saves
        print(f"warning: no tokenizer saved from {source}: {err}")
        return
    tokenizer.save_pretrained(directory)
