"""Export a LoRA checkpoint as a plain Hugging Face model directory: the base model with the
adapter merged in (peft's `merge_and_unload`), which transformers, vLLM and examples/chat.py
load like any model.

    python -m grpo.export runs/x/checkpoint-30 runs/x/merged [--base DIR]

The base is the adapter's `base_model_name_or_path` (the directory the run trained from) unless
`--base` names another copy of it. A full fine-tuning checkpoint needs no export: it already is
a Hugging Face directory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from grpo.engine.lora import ADAPTER_CONFIG


def adapter_base(adapter_dir: str | os.PathLike) -> str | None:
    """The base model an adapter directory was trained on; None when it holds no adapter."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("base_model_name_or_path")


def export_merged(adapter_dir: str | os.PathLike, out_dir: str | os.PathLike,
                  base: str | None = None) -> Path:
    """Write base + adapter, merged, to `out_dir` (safetensors, config, tokenizer)."""
    import torch
    from peft import PeftModel

    from grpo.engine.weights import load_causal_lm, weight_names, write_hf_directory
    from grpo.models import resolve_model

    if not (Path(adapter_dir) / ADAPTER_CONFIG).exists():
        raise FileNotFoundError(f"{adapter_dir} holds no LoRA adapter ({ADAPTER_CONFIG}); a full "
                                "fine-tuning checkpoint is already a Hugging Face directory")
    base = resolve_model(base or adapter_base(adapter_dir))
    model = PeftModel.from_pretrained(load_causal_lm(base, "cpu", trainable=False),
                                      str(adapter_dir))
    with torch.no_grad():
        merged = model.merge_and_unload()
    write_hf_directory(out_dir, merged, weight_names(merged), base)
    return Path(out_dir)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m grpo.export", description=__doc__.split("\n")[0])
    p.add_argument("adapter", help="a LoRA checkpoint directory (adapter_config.json inside)")
    p.add_argument("out", help="the merged model's directory (created)")
    p.add_argument("--base", default=None, help="the base model (default: the adapter's own)")
    args = p.parse_args(argv)
    try:
        out = export_merged(args.adapter, args.out, args.base)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
